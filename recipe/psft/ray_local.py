"""Join a Ray cluster or start a local one sized for verl's worker bundles, reachable from this host only.

Used by the trainer (:func:`ensure_ray`) and by the evaluation server (:func:`init_serving_ray`). It touches
Ray only (its private ``ray_constants.ENABLE_RAY_CLUSTER``, see :func:`bind_local_ray_to_loopback`), so it
lives outside ``verl_adapters/``, whose import checks the verl version: serving a model for evaluation
does not need verl.
"""

from __future__ import annotations

import os
from typing import Any


def bind_local_ray_to_loopback() -> None:
    """Make a Ray instance started by this process listen on 127.0.0.1 only.

    Ray 2.60 has no bind-address setting: its servers listen on the node's address, which is the
    machine's outward address unless Ray's single-machine mode (meant for macOS/Windows, switched by
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) makes it 127.0.0.1. Ray reads that switch at import, so its
    private module constant is set too. Token authentication (Ray 2.60's default) stays on.
    """
    import ray._private.ray_constants as ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def start_local_ray(**init_kwargs: Any) -> None:
    """A fresh, private local Ray instance (``address="local"``: never a stale `ray start` cluster on
    this host), without a dashboard (no HTTP API to expose) and with every port on 127.0.0.1.

    ``PSFT_RAY_LOOPBACK=0`` keeps Ray's default addresses: loopback mode's dashboard agent takes the
    fixed 127.0.0.1:52365, so a second local Ray on the same host fails to start while one holds it.
    """
    import ray

    if os.environ.get("PSFT_RAY_LOOPBACK", "1") != "0":
        bind_local_ray_to_loopback()
    ray.init(address="local", include_dashboard=False, **init_kwargs)


def init_serving_ray(namespace: str, join_existing: bool = True) -> None:
    """``ray.init`` for the evaluation server: join the cluster in ``RAY_ADDRESS`` or one that
    ``ray start`` runs on this host (``join_existing``), else start a private local instance on
    127.0.0.1 without a dashboard (what `serve run` would otherwise start on every interface)."""
    import ray
    from ray._private.services import canonicalize_bootstrap_address

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS") if join_existing else "local"
    if not address and join_existing and canonicalize_bootstrap_address(None):
        address = "auto"  # what ray.init() without an address would join
    if address and address != "local":
        ray.init(address=address, namespace=namespace)
        return
    start_local_ray(namespace=namespace)


def ensure_ray(config: Any) -> None:
    """Join the cluster in ``RAY_ADDRESS`` (job submission) or start a local Ray instance."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        return
    kwargs: dict[str, Any] = {}
    if config.trainer.device == "cpu":
        # verl's RayResourcePool asks max_colocate_count (10) logical CPUs per worker bundle on top
        # of the worker's own: advertise enough logical CPUs for every worker.
        workers = int(config.trainer.nnodes) * int(config.trainer.n_gpus_per_node)
        kwargs["num_cpus"] = max(os.cpu_count() or 1, 16 * workers)
        # Ray pins each worker to OMP_NUM_THREADS=1 unless the variable is set: share the cores out.
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    start_local_ray(**kwargs)
