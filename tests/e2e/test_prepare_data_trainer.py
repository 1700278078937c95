"""prepare_data.py's output loads into the trainer's dataset and trains one step (slow: starts Ray)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(
    not (ROOT / "recipe" / "psft" / "main_psft.py").is_file(), reason="trainer entry point not yet available"
)
def test_builtin_output_trains_one_step(tmp_path: Path) -> None:
    from psft_assets.tiny_model import build_tiny_model

    data = tmp_path / "data"
    prepared = subprocess.run(
        [
            sys.executable,
            "prepare_data.py",
            "--source",
            "builtin",
            "--output-dir",
            str(data),
            "--no-progress",
            "--train-size",
            "16",
            "--test-size",
            "4",
            "--ood-size",
            "3",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert prepared.returncode == 0, prepared.stderr
    model = build_tiny_model(tmp_path / "model")
    checkpoints = tmp_path / "ckpt"
    trained = subprocess.run(
        [
            sys.executable,
            "-m",
            "recipe.psft.main_psft",
            f"data.train_files={data / 'train.parquet'}",
            f"model.path={model}",
            "trainer.n_gpus_per_node=2",
            "trainer.total_training_steps=1",
            "data.train_batch_size=4",
            "psft.mini_batch_size=2",
            "trainer.logger=[console]",
            f"trainer.default_local_dir={checkpoints}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = trained.stdout + trained.stderr
    assert trained.returncode == 0, output[-5000:]
    assert "step:1" in output and "train/loss" in output, output[-5000:]
    assert (checkpoints / "latest_checkpointed_iteration.txt").is_file()
