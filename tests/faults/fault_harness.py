"""The fault suite's run configuration. Runs are launched with ``trainer_harness.Trainer`` / ``run_trainer``:
``python -m recipe.psft.main_psft`` in its own session (so a test can signal the driver alone, or kill a
worker), with a local Ray, 2 FSDP CPU ranks and the tiny model.
"""

from __future__ import annotations

from pathlib import Path

STEPS = 4

# One configuration for every fault: STEPS = 4 steps over train24 (3 steps per epoch, so a resume crosses an
# epoch boundary), k = 2 shuffled updates per step, a checkpoint every step, 2 kept.
FAULT_OVERRIDES = [
    "data.val_files=null",
    "data.max_length=512",
    "data.train_batch_size=8",
    "data.micro_batch_size_per_gpu=2",
    "data.max_token_len_per_gpu=2048",
    "psft.mini_batch_size=4",
    "psft.shuffle_mini_batches=true",
    "trainer.n_gpus_per_node=2",
    f"trainer.total_training_steps={STEPS}",
    "trainer.save_freq=1",
    "trainer.max_ckpt_to_keep=2",
    "trainer.logger=[console,file]",
    "optim.lr=1e-3",
    "optim.lr_warmup_steps=0",
    "model.enable_gradient_checkpointing=false",
]


def overrides(model: Path, train: Path, run_dir: Path, *extra: str) -> list[str]:
    return [f"model.path={model}", f"data.train_files={train}", f"trainer.default_local_dir={run_dir / 'ckpt'}"] + [
        *FAULT_OVERRIDES,
        *extra,
    ]
