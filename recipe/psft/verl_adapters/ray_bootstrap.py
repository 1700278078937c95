"""Join a Ray cluster or start a local one sized for verl's worker bundles."""

from __future__ import annotations

import os
from typing import Any


def ensure_ray(config: Any) -> None:
    """Join the cluster in ``RAY_ADDRESS`` (job submission) or start a local Ray instance."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        return
    # address="local": always a fresh local instance, never a stale `ray start` cluster on this host.
    kwargs: dict[str, Any] = {"address": "local"}
    if config.trainer.device == "cpu":
        # verl's RayResourcePool asks max_colocate_count (10) logical CPUs per worker bundle on top
        # of the worker's own: advertise enough logical CPUs for every worker.
        workers = int(config.trainer.nnodes) * int(config.trainer.n_gpus_per_node)
        kwargs["num_cpus"] = max(os.cpu_count() or 1, 16 * workers)
        # Ray pins each worker to OMP_NUM_THREADS=1 unless the variable is set: share the cores out.
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    ray.init(**kwargs)
