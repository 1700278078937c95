"""What the trainer benchmarks share: a real PSFT trainer on a model and a training file, one fixed
batch to time steps on, the workers' peak memory, and the interleaved-rounds runner.

The benchmarks call ``PSFTTrainer.train_step`` on one batch over and over, switching ``psft.*`` settings
between steps (:func:`run_interleaved`), so variants run interleaved in one Ray cluster and one FSDP
worker group. Run them from the repository root: ``python -m benchmarks.<name>``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# Qwen2.5-0.5B's layer widths (its vocabulary is 151,936 entries, Qwen2.5's tokenizer 151,646).
QWEN25_05B_WIDTHS = {"hidden_size": 896, "num_heads": 14, "num_kv_heads": 2, "intermediate_size": 4864}


def build_trainer(
    model: str | Path,
    train_files: str | Path,
    work: Path,
    *,
    batch: int,
    mini_batch: int,
    workers: int,
    settings: Sequence[str] = (),
    overrides: Sequence[str] = (),
) -> tuple[Any, Any]:
    """The recipe config with these settings, then the user's ``overrides``, checked; and its trainer.

    On a CPU-only machine the config gets the recipe's CPU defaults, elsewhere verl's device choice.
    Building the trainer starts Ray and the workers (and runs the reference pass where the mode needs it).
    """
    from hydra import compose, initialize_config_dir

    from recipe.psft.psft_trainer import PSFTTrainer
    from recipe.psft.run_preparation import prepare_run

    with initialize_config_dir(config_dir=str(REPO / "recipe/psft/config"), version_base=None):
        config = compose(
            config_name="psft_trainer",
            overrides=[
                f"model.path={model}",
                f"data.train_files={train_files}",
                f"data.train_batch_size={batch}",
                f"psft.mini_batch_size={mini_batch}",
                f"trainer.n_gpus_per_node={workers}",
                "trainer.logger=[console]",
                f"trainer.default_local_dir={work / 'ckpt'}",
                *settings,
                *overrides,
            ],
        )
    return config, PSFTTrainer(config=config, run=prepare_run(config))


def first_batch(trainer) -> Any:
    """The training set's first batch, as ``train_step`` takes it."""
    from verl.utils import tensordict_utils as tu

    return tu.get_tensordict(tensor_dict=next(iter(trainer.train_dataloader)), non_tensor_dict=trainer.batch_meta)


def worker_peaks_gib(trainer, reset: bool = False) -> list[float]:
    """Each worker's peak memory since its last reset, in GiB, then reset it if asked: torch's
    max_memory_allocated on an accelerator, the process's peak resident set (VmHWM) on CPU."""
    import ray

    def read(_actor, reset_after: bool) -> float:
        import torch

        if torch.cuda.is_available():
            peak = torch.cuda.max_memory_allocated() / 2**30
            if reset_after:
                torch.cuda.reset_peak_memory_stats()
            return peak
        peak = float("nan")
        for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 2**20
        if reset_after:
            Path(f"/proc/{os.getpid()}/clear_refs").write_text("5")  # VmHWM back to the current RSS
        return peak

    return ray.get([w.__ray_call__.remote(read, reset) for w in trainer.training_client.workers])


def batch_seqlens(batch) -> list[int]:
    """Each row's token count in a batch as ``first_batch`` gives it (jagged ``input_ids``, or padded with
    an attention mask)."""
    ids = batch["input_ids"]
    if ids.is_nested:
        return ids.offsets().diff().tolist()
    return batch["attention_mask"].sum(dim=-1).tolist()


@dataclass
class Step:
    """One measured step of a variant: wall seconds of ``train_step``, its metrics, each worker's peak (GiB)."""

    seconds: float
    metrics: dict[str, float]
    peaks_gib: list[float]


def run_interleaved(
    trainer,
    config,
    variants: Mapping[str, Mapping[str, Any]],
    *,
    rounds: int,
    warmup: int = 1,
    batch=None,
    before_step: Callable[[str], None] | None = None,
    after_step: Callable[[str, Step, bool], None] | None = None,
    warmup_each: bool = True,
) -> dict[str, list[Step]]:
    """Time ``trainer.train_step`` on one batch, each variant once per round, ``warmup`` rounds first.

    ``variants`` maps a name to the ``config.psft`` settings of its steps (set under ``open_dict`` before
    each of them). The order rotates every round (with two variants: alternates), so drift in the
    machine's speed hits all variants alike. Each worker's peak memory is reset before a step and read
    after it. ``before_step(name)`` runs just before the timed call, ``after_step(name, step, measured)``
    after each step, warm-up steps included (``measured`` False). ``warmup_each=False``: a warm-up round
    runs one variant only (the variants share one process, which one step warms). Returns the measured
    steps per variant, in round order.
    """
    from omegaconf import open_dict

    batch = first_batch(trainer) if batch is None else batch
    names = list(variants)
    measured: dict[str, list[Step]] = {name: [] for name in names}
    step_number = 10_000  # past any warm-up schedule
    for round_index in range(warmup + rounds):
        shift = round_index % len(names)
        order = names[shift:] + names[:shift]
        if round_index < warmup and not warmup_each:
            order = order[:1]
        for name in order:
            with open_dict(config):
                for key, value in variants[name].items():
                    config.psft[key] = value
            worker_peaks_gib(trainer, reset=True)
            if before_step is not None:
                before_step(name)
            start = time.perf_counter()
            metrics = trainer.train_step(batch, step_number)
            step = Step(time.perf_counter() - start, metrics, worker_peaks_gib(trainer))
            step_number += 1
            if round_index >= warmup:
                measured[name].append(step)
            if after_step is not None:
                after_step(name, step, round_index >= warmup)
        print(f"round {round_index + 1}/{warmup + rounds} done", flush=True)
    return measured


def paired_ratios(measured: Mapping[str, list[Step]], numerator: str, denominator: str) -> list[float]:
    """Per round, ``numerator``'s step time over ``denominator``'s (steps of one round are adjacent)."""
    return [a.seconds / b.seconds for a, b in zip(measured[numerator], measured[denominator], strict=True)]


def median_seconds(steps: Sequence[Step]) -> float:
    import statistics

    return statistics.median(step.seconds for step in steps)
