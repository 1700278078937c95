"""What the trainer benchmarks share: a real PSFT trainer on a model and a training file, one fixed
batch to time steps on, and the workers' peak memory.

The benchmarks call ``PSFTTrainer.train_step`` on one batch over and over, switching settings between
steps, so variants run interleaved in one Ray cluster and one FSDP worker group.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

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
