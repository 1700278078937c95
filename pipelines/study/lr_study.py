"""The second toy-world study: is the paper's SFT-vs-PSFT gap the trust region or the learning rate?

    bash scripts/study_lr.sh [--quick] [--out DIR] [--report-only]
    (python -m pipelines.study.lr_study ...)

The paper's SFT made one optimizer update per step (mini-batch = batch) at a high learning rate; its
PSFT made k = 8 updates per step at a 20x lower one. Their gap therefore mixes the trust region with
the learning rate and the number of updates. Here, on a small model and a small fine-tuning set seen
for many epochs (the regime where SFT's entropy collapses), each pretrained model is fine-tuned with:

* ``sft_1x_hi``: the paper's SFT, one update per step (mini-batch = batch B) at ``lr_hi``;
* ``psft_k8_lo``: the paper's PSFT, k = 8 updates of B / 8 per snapshot at ``lr_lo = lr_hi / 20``;
* ``sft_k8_lo`` / ``sft_k8_hi`` and ``psft_k8_hi``: the matched pairs (same mini-batches in the same
  order, same learning rate, same updates; only the loss differs), at both learning rates;
* ablations of PSFT at ``lr_lo`` (and ``lr_hi``): no clip (the importance-weighted objective,
  ``clip_ratio_high=inf``), a never refreshed snapshot (the pretrained model, ``psft.snapshot=initial``),
  and k = 16.

Seeds over both stages: several pretrained models (pretraining seeds) x several fine-tuning seeds
(training sample and order). Every run is the recipe's loss (``TokenLoss``) in the study's light loop
(:mod:`pipelines.study.finetune`, shown equal to the trainer by :mod:`pipelines.study.equivalence`).
Results go to ``OUT/runs/<condition>-p<pretrain seed>-s<seed>.json`` as each run ends (resumable); the
report (:mod:`pipelines.study.lr_report`) is written from all runs of the grid.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from recipe.psft.files import atomic_write

from .finetune import EvalSets, FinetuneConfig, Method, finetune, measure
from .model import CharTokenizer, ModelSize
from .pretrain import PretrainConfig, load_pretrained, pretrain_seeds, spawn_pool


@dataclass(frozen=True)
class Condition:
    """One fine-tuning recipe of the grid: a method, its mini-batch (1 or k per step) and its lr tier."""

    name: str
    method: Method
    updates_per_step: int  # mini-batch = batch / updates_per_step
    lr_tier: str  # "hi" or "lo"
    label: str


def _conditions() -> dict[str, Condition]:
    inf = float("inf")
    rows = [
        Condition("sft_1x_hi", Method("sft", "sft"), 1, "hi", "paper's SFT: 1 update/step, high lr"),
        Condition("psft_k8_lo", Method("psft_k8", "psft", 8), 8, "lo", "paper's PSFT: k=8, low lr"),
        Condition("sft_k8_lo", Method("sft", "sft"), 8, "lo", "matched SFT: 8 updates/step, low lr"),
        Condition("sft_k8_hi", Method("sft", "sft"), 8, "hi", "matched SFT: 8 updates/step, high lr"),
        Condition("psft_k8_hi", Method("psft_k8", "psft", 8), 8, "hi", "PSFT k=8, high lr"),
    ]
    for tier in ("lo", "hi"):
        rows += [
            Condition(f"psft_noclip_{tier}", Method("psft_noclip", "psft", 8, clip_ratio_high=inf), 8, tier,
                      f"PSFT k=8 without clip, {tier} lr"),
            Condition(f"psft_never_{tier}", Method("psft_never", "psft", 8, snapshot="initial"), 8, tier,
                      f"PSFT, snapshot never refreshed, {tier} lr"),
            Condition(f"psft_k16_{tier}", Method("psft_k16", "psft", 16), 8, tier, f"PSFT k=16, {tier} lr"),
        ]
    return {c.name: c for c in rows}


CONDITIONS = _conditions()


@dataclass(frozen=True)
class LrStudyConfig:
    # The default grid took 10 minutes on 2 idle cores from a clean clone; the high-lr ablations
    # (psft_noclip_hi, psft_never_hi, psft_k16_hi) are one --conditions away.
    conditions: tuple[str, ...] = (
        "sft_1x_hi", "psft_k8_lo", "sft_k8_lo", "sft_k8_hi", "psft_k8_hi",
        "psft_noclip_lo", "psft_never_lo", "psft_k16_lo",
    )
    pretrain_seeds: tuple[int, ...] = (0, 1, 2)
    seeds: tuple[int, ...] = (0, 1, 2)
    lr_hi: float = 1e-3
    lr_ratio: float = 20.0  # lr_lo = lr_hi / lr_ratio, the paper's 2e-5 / 1e-6
    batch: int = 32  # demonstrations per step (the paper's 256)
    train_size: int = 64
    sft_steps: int = 48  # steps of the paper's SFT (one update each): 24 epochs over the 64 problems
    evals: int = 4  # measurements after the start, evenly spaced
    size: ModelSize = field(default_factory=lambda: ModelSize(hidden=64, layers=2, heads=4, intermediate=256))
    pretrain: PretrainConfig = field(default_factory=lambda: PretrainConfig(steps=1200, batch_size=32))
    eval_id: int = 48
    eval_ood_per_family: int = 12

    @property
    def epochs(self) -> int:
        return max(1, self.sft_steps * self.batch // self.train_size)

    def lr(self, tier: str) -> float:
        return self.lr_hi if tier == "hi" else self.lr_hi / self.lr_ratio

    def finetune_config(self, condition: Condition) -> FinetuneConfig:
        mini = self.batch // condition.updates_per_step
        updates = self.epochs * self.train_size // mini
        return FinetuneConfig(
            train_size=self.train_size,
            mini_batch=mini,
            epochs=self.epochs,
            eval_every=max(1, updates // self.evals),
            warmup=max(1, updates // 20),  # the same share of training (5%) for every condition
            eval_id=self.eval_id,
            eval_ood_per_family=self.eval_ood_per_family,
        )

    def check(self) -> None:
        unknown = [c for c in self.conditions if c not in CONDITIONS]
        if unknown:
            raise ValueError(f"unknown condition(s) {unknown}; available: {list(CONDITIONS)}")
        for name in self.conditions:
            c = CONDITIONS[name]
            rows = self.batch // c.updates_per_step * c.method.refresh
            if self.batch % c.updates_per_step or self.train_size % rows:
                raise ValueError(
                    f"condition {name}: batch {self.batch} / {c.updates_per_step} updates x k {c.method.refresh} = "
                    f"{rows} rows per snapshot must divide train_size {self.train_size}"
                )


def quick_config() -> LrStudyConfig:
    """Smoke-sized (about two minutes): tiny model, 2 pretrained models x 2 seeds, 4 conditions."""
    return LrStudyConfig(
        conditions=("sft_1x_hi", "psft_k8_lo", "sft_k8_lo", "psft_never_lo"),
        pretrain_seeds=(0, 1),
        seeds=(0, 1),
        batch=16,
        train_size=16,
        sft_steps=6,
        evals=2,
        size=ModelSize(hidden=32, layers=1, heads=2, intermediate=64),
        pretrain=PretrainConfig(steps=60, batch_size=16, warmup=10, eval_per_family=4),
        eval_id=8,
        eval_ood_per_family=3,
    )


def run_name(condition: str, pretrain_seed: int, seed: int) -> str:
    return f"{condition}-p{pretrain_seed}-s{seed}"


@dataclass(frozen=True)
class RunJob:
    folder: Path
    condition: str
    pretrain_seed: int
    seed: int
    lr: float
    finetune: FinetuneConfig
    base_eval: dict
    path: Path

    def run(self) -> str:
        torch.set_num_threads(1)
        cond = CONDITIONS[self.condition]
        model = load_pretrained(self.folder)
        reference = load_pretrained(self.folder) if cond.method.needs_reference else None
        result = finetune(model, CharTokenizer(), cond.method, self.lr, self.seed, self.finetune,
                          EvalSets.build(self.finetune), self.base_eval, reference)
        result.update(condition=self.condition, pretrain_seed=self.pretrain_seed, model=self.folder.name)
        atomic_write(self.path, json.dumps(result, indent=1) + "\n")
        last = result["curve"][-1]
        return (f"{self.path.stem}: {result['wall_s']:.1f} s, acc id {last['acc_id']:.2f} ood {last['acc_ood']:.2f}, "
                f"entropy id {last['entropy_id']:.3f}")


def run_lr_study(cfg: LrStudyConfig, out: Path, workers: int = 2, log=print, report_only: bool = False) -> Path:
    from .lr_report import write_lr_report

    cfg.check()
    started = time.perf_counter()
    (out / "runs").mkdir(parents=True, exist_ok=True)
    log(f"pretraining {len(cfg.pretrain_seeds)} models (cached ones are reused)")
    folders = pretrain_seeds(cfg.size, cfg.pretrain, cfg.pretrain_seeds, workers, threads=1, log=lambda line: None)
    pretrain_s = time.perf_counter() - started
    log(f"pretrained models ready ({pretrain_s:.0f} s): " + ", ".join(f.name for f in folders.values()))

    tokenizer = CharTokenizer()
    base_evals, infos = {}, {}
    for p, folder in folders.items():
        infos[p] = json.loads((folder / "pretrain.json").read_text())
        fcfg = cfg.finetune_config(CONDITIONS[cfg.conditions[0]])
        key = {"model": folder.name, "eval_id": fcfg.eval_id, "eval_ood": fcfg.eval_ood_per_family}
        path = out / f"pretrained_eval-p{p}.json"
        cached = json.loads(path.read_text()) if path.is_file() else {}
        if cached.get("key") != key:
            cached = {"key": key, "eval": measure(load_pretrained(folder), tokenizer, EvalSets.build(fcfg))}
            atomic_write(path, json.dumps(cached, indent=1) + "\n")
        base_evals[p] = cached["eval"]

    jobs = []
    for seed in cfg.seeds:  # seed-major: an interrupted study still covers every condition
        for p in cfg.pretrain_seeds:
            for name in cfg.conditions:
                fcfg = cfg.finetune_config(CONDITIONS[name])
                path = out / "runs" / f"{run_name(name, p, seed)}.json"
                if path.is_file():
                    done = json.loads(path.read_text())
                    if done.get("model") == folders[p].name and done.get("config") == asdict(fcfg):
                        continue
                jobs.append(RunJob(folders[p], name, p, seed, cfg.lr(CONDITIONS[name].lr_tier), fcfg,
                                   base_evals[p], path))
    log(f"{len(jobs)} fine-tuning runs to do ({workers} in parallel)")
    if report_only:
        jobs = []
    if workers <= 1:
        for job in jobs:
            log(job.run())
    elif jobs:
        with spawn_pool(workers) as pool:
            for line in pool.map(RunJob.run, jobs):
                log(line)
    wanted = {f"{run_name(c, p, s)}.json" for c in cfg.conditions for p in cfg.pretrain_seeds for s in cfg.seeds}
    wall = time.perf_counter() - started
    timing = out / "wall.json"  # the last full invocation's, so --report-only keeps reporting it
    if not report_only:
        atomic_write(timing, json.dumps({"wall_s": wall, "pretrain_s": pretrain_s, "runs": len(jobs)}) + "\n")
    last = json.loads(timing.read_text()) if timing.is_file() else {}
    report = write_lr_report(out, cfg, infos, base_evals, wanted, wall_s=last.get("wall_s"),
                             pretrain_s=last.get("pretrain_s"), note=last.get("note", ""))
    log(f"report: {report} ({wall:.0f} s)")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke-sized study (about two minutes)")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the finished runs")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default outputs/study-lr[-quick])")
    parser.add_argument("--conditions", default=None, help=f"comma-separated subset of {list(CONDITIONS)}")
    parser.add_argument("--pretrain-seeds", default=None, help="comma-separated pretraining seeds")
    parser.add_argument("--seeds", default=None, help="comma-separated fine-tuning seeds")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="processes in parallel, one torch thread each (default 2, or 1 on one core)")
    args = parser.parse_args(argv)
    cfg = quick_config() if args.quick else LrStudyConfig()
    if args.conditions:
        cfg = replace(cfg, conditions=tuple(args.conditions.split(",")))
    if args.pretrain_seeds:
        cfg = replace(cfg, pretrain_seeds=tuple(int(s) for s in args.pretrain_seeds.split(",")))
    if args.seeds:
        cfg = replace(cfg, seeds=tuple(int(s) for s in args.seeds.split(",")))
    torch.set_num_threads(1)
    out = args.out or Path("outputs") / ("study-lr-quick" if args.quick else "study-lr")
    run_lr_study(cfg, out, workers=args.workers, report_only=args.report_only)


if __name__ == "__main__":
    main()
