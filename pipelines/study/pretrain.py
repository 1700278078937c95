"""Pretraining the study's model from random initialisation on the whole world (every family, every
style), with the recipe's SFT loss (``TokenLoss("sft")``), cached as a Hugging Face model folder.

The cache key is a hash of the model size and the pretraining settings, so a changed setting trains a
new model and an unchanged one is reused (``$PSFT_CACHE/study/pretrained-<key>``, default
``~/.cache/psft``). The folder is written under a temporary name and renamed when complete, so an
interrupted pretraining never leaves a half-written model that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import platform
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from recipe.psft.losses import TokenLoss

from .model import Batch, CharTokenizer, ModelSize, build_model, engine_data, forward_log_probs, greedy_answers
from .world import FAMILIES, FINETUNE_FAMILY, is_correct, pretraining_stream, sample_examples

WORLD_VERSION = 1  # bump when world.py changes what a family or style produces


@dataclass(frozen=True)
class PretrainConfig:
    steps: int = 1500  # optimizer updates
    batch_size: int = 48  # demonstrations per update
    lr: float = 3e-3  # peak; linear warm-up then cosine to 10%
    warmup: int = 100
    weight_decay: float = 0.01
    seed: int = 0
    # Sampling weight of each family. The fine-tuning family is rarer, so the pretrained model is
    # competent on it but leaves room for fine-tuning to help (an in-domain gain to trade against).
    family_weights: dict[str, float] = field(
        default_factory=lambda: {name: (0.5 if name == FINETUNE_FAMILY else 1.0) for name in FAMILIES}
    )
    eval_per_family: int = 48

    def key(self, size: ModelSize) -> str:
        blob = json.dumps({"size": asdict(size), "pretrain": asdict(self), "world": WORLD_VERSION}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


def cache_root() -> Path:
    return Path(os.environ.get("PSFT_CACHE", Path.home() / ".cache" / "psft")).expanduser() / "study"


def environment() -> dict[str, object]:
    """What decides the pretrained weights besides the settings: same settings and seed give the same
    weights bit for bit on one machine (``tests/unit/test_study_stats.py`` checks it), but the float
    rounding of CPU kernels (oneDNN / MKL pick different vector code per CPU model, and split reductions
    by thread count) differs between machines; over 1,500 updates those differences grow into a
    different model. Stored with every pretrained model and printed in the reports."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "torch": torch.__version__,
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def family_accuracy(model, tokenizer: CharTokenizer, per_family: int) -> dict[str, float]:
    """Greedy accuracy on each family's held-out problems (any style counts)."""
    model.eval()
    result = {}
    for name in FAMILIES:
        examples = sample_examples(name, per_family, seed=1, held_out=True)
        answers = greedy_answers(model, tokenizer, examples)
        result[name] = sum(is_correct(e, a) for e, a in zip(examples, answers, strict=True)) / len(examples)
    return result


def cache_folder(size: ModelSize, cfg: PretrainConfig) -> Path:
    """Where the model of these settings is (or will be) cached; complete when it holds pretrain.json."""
    return cache_root() / f"pretrained-{cfg.key(size)}"


def pretrain(size: ModelSize, cfg: PretrainConfig, log=print) -> Path:
    """Return the cached pretrained model folder, training it first if it is not there."""
    out = cache_folder(size, cfg)
    if (out / "pretrain.json").is_file():
        return out
    # Deterministic kernels: same settings, seed, machine and thread count -> the same weights.
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _pretrain(size, cfg, out, log)
    finally:
        torch.use_deterministic_algorithms(deterministic)


@dataclass(frozen=True)
class _PretrainJob:
    size: ModelSize
    config: PretrainConfig
    threads: int

    def run(self) -> str:
        torch.set_num_threads(self.threads)
        return str(pretrain(self.size, self.config, log=lambda line: None))


def spawn_pool(workers: int) -> ProcessPoolExecutor:
    """A process pool for the studies' runs and pretrainings."""
    # spawn: a forked child of a process that already ran torch's thread pool can hang.
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def pretrain_seeds(
    size: ModelSize, cfg: PretrainConfig, seeds: tuple[int, ...], workers: int, threads: int = 1, log=print
) -> dict[int, Path]:
    """One pretrained model per seed (cached ones reused), up to ``workers`` trained at once.

    Each model trains with ``threads`` torch threads, in its own spawned process when more than one is
    missing and ``workers`` > 1, else here with its progress logged (this process's thread count is
    restored after): the weights are those of a sequential run with that thread count (same machine).
    """
    configs = {seed: replace(cfg, seed=seed) for seed in seeds}
    missing = [seed for seed, c in configs.items() if not (cache_folder(size, c) / "pretrain.json").is_file()]
    if len(missing) > 1 and workers > 1:
        log(f"pretraining seeds {missing}, {min(workers, len(missing))} at a time")
        with spawn_pool(workers) as pool:
            list(pool.map(_PretrainJob.run, [_PretrainJob(size, configs[seed], threads) for seed in missing]))
    elif missing:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            for seed in missing:
                pretrain(size, configs[seed], log=log)
        finally:
            torch.set_num_threads(previous)
    return {seed: cache_folder(size, c) for seed, c in configs.items()}


def _pretrain(size: ModelSize, cfg: PretrainConfig, out: Path, log) -> Path:
    tokenizer = CharTokenizer()
    model = build_model(size, tokenizer, seed=cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    loss_fn = TokenLoss("sft")
    stream = pretraining_stream(cfg.seed, cfg.family_weights)
    start = time.perf_counter()
    curve = []
    model.train()
    for step in range(cfg.steps):
        batch = Batch.of([tokenizer.encode(e) for e in stream(cfg.batch_size)], tokenizer.pad_id)
        loss, metrics = loss_fn(forward_log_probs(model, batch), engine_data(batch))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if step % 250 == 0 or step == cfg.steps - 1:
            curve.append({"step": step, "nll": metrics["nll"]})
            log(f"pretrain step {step}/{cfg.steps} nll {metrics['nll']:.3f} ({time.perf_counter() - start:.0f} s)")
    train_time = time.perf_counter() - start
    accuracy = family_accuracy(model, tokenizer, cfg.eval_per_family)
    log("pretrained accuracy per family: " + ", ".join(f"{k} {v:.2f}" for k, v in accuracy.items()))

    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    model.save_pretrained(str(partial), safe_serialization=True)
    tokenizer.save_hf(partial)
    info = {"size": asdict(size), "config": asdict(cfg), "train_time_s": train_time, "accuracy": accuracy}
    info["environment"] = environment()
    info["curve"] = curve
    (partial / "pretrain.json").write_text(json.dumps(info, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


def load_pretrained(folder: Path):
    from transformers import Qwen2ForCausalLM

    return Qwen2ForCausalLM.from_pretrained(str(folder), torch_dtype=torch.float32)
