"""What SFT-KL's reference costs: the one-off reference pass against an SFT epoch on the same data.

The reference (initial model) log-probs of the training set are computed once, before step 1, and
stored (recipe/psft/reference.py). The alternative, a colocated reference engine, runs the same
forward-only pass over every batch of every epoch and holds a second copy of the weights. This
script builds the trainer with ``psft.loss_mode=sft_kl`` (which runs the reference pass), then times
one SFT epoch over the same rows with the same settings, and the cache's reload (what a resumed or
repeated run pays instead of the pass).

    python -m benchmarks.reference_cost                     # CPU defaults: ~4M-param model, 2 ranks
    python -m benchmarks.reference_cost --rows 64 --k 4
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks.harness import build_trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=32, help="training rows (the epoch)")
    parser.add_argument("--batch", type=int, default=16, help="rows per step")
    parser.add_argument("--k", type=int, default=4, help="updates per step (batch / mini-batch)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="FSDP ranks (GPUs, or CPU processes)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the run the costs are projected over")
    parser.add_argument("--model", default=None, help="a HF model folder instead of the random tiny model")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides of the trainer config")
    args = parser.parse_args()

    from omegaconf import open_dict
    from verl.utils import tensordict_utils as tu

    from psft_assets.tiny_model import build_tiny_model
    from psft_assets.toy_rows import make_rows
    from recipe.psft import reference as reference_cache

    work = Path(tempfile.mkdtemp(prefix="psft_reference_cost_"))
    model = args.model or str(
        build_tiny_model(work / "model", hidden_size=args.hidden, num_layers=args.layers, num_heads=4)
    )
    train = work / "train.parquet"
    pd.DataFrame(make_rows(args.rows, seed=0, long_every=4)).to_parquet(train)

    config, trainer = build_trainer(  # runs the reference pass over all rows
        model,
        train,
        work,
        batch=args.batch,
        mini_batch=args.batch // args.k,
        workers=args.workers,
        settings=["psft.loss_mode=sft_kl", "data.max_length=2048", "model.enable_gradient_checkpointing=false"],
        overrides=args.overrides,
    )
    pass_s = trainer.reference_pass_time_s

    start = time.perf_counter()
    model = trainer.model_config.local_path or config.model.path
    identity = reference_cache.reference_identity(config, model, trainer.train_dataset)
    cached = reference_cache.load(reference_cache.cache_file(config.trainer.default_local_dir, identity), identity)
    reload_s = time.perf_counter() - start
    assert cached is not None and len(cached) == args.rows

    with open_dict(config):
        config.psft.loss_mode = "sft"
    epoch_start = time.perf_counter()
    steps = 0
    for data in trainer.train_dataloader:
        batch = tu.get_tensordict(tensor_dict=data, non_tensor_dict=trainer.batch_meta)
        trainer.train_step(batch, 10_000 + steps)
        steps += 1
    epoch_s = time.perf_counter() - epoch_start

    e = args.epochs
    print(f"\n{args.rows} rows, {steps} steps of {args.batch} rows, k={args.k}, {args.workers} ranks")
    print(f"reference pass (once per run)        {pass_s:8.2f} s")
    print(f"reload of the stored pass (resume)   {reload_s:8.2f} s (identity hashing included)")
    print(f"SFT epoch                            {epoch_s:8.2f} s")
    print(f"reference pass / SFT epoch           {pass_s / epoch_s:8.3f}")
    print(
        f"over {e} epochs: stored pass {pass_s / (e * epoch_s):.3f} of SFT's time; a colocated reference "
        f"engine about {e * pass_s / (e * epoch_s):.3f} (the same forward every epoch), plus a second copy "
        "of the weights"
    )


if __name__ == "__main__":
    main()
