"""Fine-tuning the pretrained model on the narrow set, with the recipe's loss code in a light loop.

The loop has the PSFT trainer's step structure (``recipe/psft/psft_trainer.py``): one step takes
k mini-batches of demonstrations, scores them once with the current weights (the frozen snapshot,
no grad), then makes k optimizer updates, each calling ``TokenLoss`` from ``recipe/psft/losses.py``
with the inputs verl's engine gives a loss (jagged ``log_probs``, ``loss_mask``, ``old_log_probs``,
``batch_num_tokens``, ``dp_size``). It runs in-process because the real trainer's Ray + FSDP start-up
(about 25 s a run on 2 cores) would not fit a grid of dozens of runs in 30 minutes;
:mod:`pipelines.study.equivalence` shows both give the same losses on one configuration.

Every method makes the same optimizer updates on the same mini-batches (size ``mini_batch``); what
differs is the objective and, for PSFT, how many updates share one snapshot (``refresh`` = k).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from recipe.psft import losses
from recipe.psft.losses import TokenLoss

from .model import Batch, CharTokenizer, engine_data, forward_log_probs, greedy_answers, padded_log_probs
from .world import FINETUNE_FAMILY, FINETUNE_STYLE, OOD_FAMILIES, Example, is_correct, sample_examples

# Loss modes that need the frozen reference model's log-probs (KL to the initial model).
REFERENCE_MODES = ("sft_kl", "asft")
REFERENCE_KEY = "ref_log_probs"


@dataclass(frozen=True)
class Method:
    name: str
    loss_mode: str  # a TokenLoss mode of recipe/psft/losses.py
    refresh: int = 1  # k: optimizer updates per snapshot (1: the ratio is always 1)
    # "step": a fresh snapshot per k updates (the trainer's default); "initial": the ratio is taken
    # against the pretrained model for the whole run (the recipe's psft.snapshot=initial, never refreshed).
    snapshot: str = "step"
    clip_ratio_high: float | None = None  # None: FinetuneConfig's; inf: no clip (psft.clip_ratio_high=inf)

    @property
    def needs_reference(self) -> bool:
        return self.loss_mode in REFERENCE_MODES or (self.loss_mode == "psft" and self.snapshot == "initial")


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("sft", "sft"),
        Method("psft_k4", "psft", 4),
        Method("psft_k8", "psft", 8),
        Method("dft", "dft"),
        Method("sft_kl", "sft_kl"),
    )
    if m.loss_mode in losses.LOSS_MODES  # sft_kl joins the study as soon as the loss code has it
}


@dataclass(frozen=True)
class FinetuneConfig:
    train_size: int = 128  # narrow-style demonstrations of the fine-tuning family
    mini_batch: int = 8  # demonstrations per optimizer update (every method)
    epochs: int = 12  # passes over the training set
    eval_every: int = 32  # optimizer updates between measurements (also at 0 and at the end)
    warmup: int = 8  # linear lr warm-up, in optimizer updates
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.28
    eval_id: int = 64  # held-out in-domain problems (entropy and accuracy)
    eval_ood_per_family: int = 24  # held-out problems of each out-of-domain family

    @property
    def updates(self) -> int:
        return self.epochs * self.train_size // self.mini_batch


@dataclass
class EvalSets:
    """Fixed held-out sets: in-domain in the narrow style (entropy), out-of-domain in all styles."""

    id_narrow: list[Example]
    ood: list[Example]

    @classmethod
    def build(cls, cfg: FinetuneConfig) -> EvalSets:
        ood = [e for f in OOD_FAMILIES for e in sample_examples(f, cfg.eval_ood_per_family, seed=2, held_out=True)]
        return cls(sample_examples(FINETUNE_FAMILY, cfg.eval_id, seed=2, held_out=True, style=FINETUNE_STYLE), ood)


@torch.no_grad()
def teacher_forced(model, tokenizer: CharTokenizer, examples: list[Example]) -> dict[str, float]:
    """Mean token entropy and NLL on the demonstrations' tokens (the loss code's own token mean)."""
    batch = Batch.of([tokenizer.encode(e) for e in examples], tokenizer.pad_id)
    _, metrics = TokenLoss("sft")(forward_log_probs(model, batch, with_entropy=True), engine_data(batch))
    return {"entropy": metrics["entropy"], "nll": metrics["nll"]}


def measure(model, tokenizer: CharTokenizer, sets: EvalSets) -> dict[str, Any]:
    model.eval()
    out: dict[str, Any] = {}
    for name, examples in (("id", sets.id_narrow), ("ood", sets.ood)):
        tf = teacher_forced(model, tokenizer, examples)
        out[f"entropy_{name}"], out[f"nll_{name}"] = tf["entropy"], tf["nll"]
    answers = greedy_answers(model, tokenizer, sets.id_narrow + sets.ood)
    hits = [is_correct(e, a) for e, a in zip(sets.id_narrow + sets.ood, answers, strict=True)]
    n_id = len(sets.id_narrow)
    out["acc_id"] = sum(hits[:n_id]) / n_id
    per_family = {}
    for family in OOD_FAMILIES:
        fam = [h for e, h in zip(sets.ood, hits[n_id:], strict=True) if e.family == family]
        per_family[family] = sum(fam) / len(fam)
    out["acc_ood"] = sum(per_family.values()) / len(per_family)
    out["acc_ood_family"] = per_family
    # How many out-of-domain answers adopt the fine-tuning style's "... = ..." form.
    out["ood_narrow_style"] = sum(" = " in a for a in answers[n_id:]) / len(sets.ood)
    model.train()
    return out


def train_step(
    model, optimizer, loss_fn: TokenLoss, step_batch: Batch, method: Method, cfg: FinetuneConfig, reference=None,
    scheduler=None,
):
    """One PSFT step, as the trainer makes it: snapshot log-probs of the step's rows (no grad), then
    one optimizer update per mini-batch of ``cfg.mini_batch`` rows, in order. Yields each update's
    loss metrics (after the update)."""
    snapshot = reference_lp = None
    if method.loss_mode == "psft" and method.snapshot == "initial":
        with torch.no_grad():
            snapshot, _ = padded_log_probs(reference, step_batch)
    elif method.loss_mode == "psft" and len(step_batch.input_ids) > cfg.mini_batch:
        with torch.no_grad():
            snapshot, _ = padded_log_probs(model, step_batch)
    if method.loss_mode in REFERENCE_MODES:
        with torch.no_grad():
            reference_lp, _ = padded_log_probs(reference, step_batch)
    for mini in torch.arange(len(step_batch.input_ids)).split(cfg.mini_batch):
        batch = step_batch.select(mini)
        extra = {REFERENCE_KEY: batch.jagged(reference_lp[mini])} if reference_lp is not None else {}
        old = batch.jagged(snapshot[mini]) if snapshot is not None else None
        loss, metrics = loss_fn(forward_log_probs(model, batch), engine_data(batch, old, **extra))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        yield metrics


def finetune(
    model,
    tokenizer: CharTokenizer,
    method: Method,
    lr: float,
    seed: int,
    cfg: FinetuneConfig,
    sets: EvalSets,
    start_eval: dict[str, Any] | None = None,
    reference=None,
) -> dict[str, Any]:
    """Fine-tune ``model`` in place; return the curve of measurements and per-interval train metrics."""
    torch.manual_seed(seed)
    train = sample_examples(FINETUNE_FAMILY, cfg.train_size, seed=100 + seed, held_out=False, style=FINETUNE_STYLE)
    encoded = [tokenizer.encode(e) for e in train]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: min(1.0, (u + 1) / max(1, cfg.warmup)))
    clip_high = cfg.clip_ratio_high if method.clip_ratio_high is None else method.clip_ratio_high
    loss_fn = TokenLoss(method.loss_mode, cfg.clip_ratio_low, clip_high)
    generator = torch.Generator().manual_seed(seed)
    step_rows = method.refresh * cfg.mini_batch
    if cfg.train_size % step_rows:
        raise ValueError(f"train_size {cfg.train_size} must be a multiple of refresh x mini_batch = {step_rows}")

    start = time.perf_counter()
    curve = [{"update": 0, **(start_eval or measure(model, tokenizer, sets))}]
    interval: dict[str, list[float]] = {}
    update = 0
    model.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(cfg.train_size, generator=generator)
        for rows in order.split(step_rows):
            step_batch = Batch.of([encoded[i] for i in rows.tolist()], tokenizer.pad_id)
            for metrics in train_step(model, optimizer, loss_fn, step_batch, method, cfg, reference, scheduler):
                update += 1
                for key in ("nll", "clip_frac", "ratio_max", "grad_norm", "kl"):
                    if key in metrics:
                        interval.setdefault(key, []).append(float(metrics[key]))
                if update % cfg.eval_every == 0 or update == cfg.updates:
                    point = {"update": update, **measure(model, tokenizer, sets)}
                    point.update({f"train_{k}": sum(v) / len(v) for k, v in interval.items() if k != "ratio_max"})
                    if "ratio_max" in interval:
                        point["train_ratio_max"] = max(interval["ratio_max"])
                    curve.append(point)
                    interval = {}
    return {
        "method": asdict(method),
        "lr": lr,
        "seed": seed,
        "config": asdict(cfg),
        "wall_s": time.perf_counter() - start,
        "curve": curve,
    }
