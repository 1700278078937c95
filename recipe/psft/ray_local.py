"""Join a Ray cluster or start a local one sized for verl's worker bundles, reachable from this host only.

Used by the trainer (:func:`ensure_ray`) and by the evaluation server (:func:`init_serving_ray`). It touches
Ray only (its private ``ray_constants.ENABLE_RAY_CLUSTER``, see :func:`bind_local_ray_to_loopback`), so it
lives outside ``verl_adapters/``, whose import checks the verl version: serving a model for evaluation
does not need verl.
"""

from __future__ import annotations

import os
import signal
import threading
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


def start_local_ray(shield_signals: tuple[int, ...] = (), **init_kwargs: Any) -> None:
    """A fresh, private local Ray instance (``address="local"``: never a stale `ray start` cluster on
    this host), without a dashboard (no HTTP API to expose) and with every port on 127.0.0.1.

    ``PSFT_RAY_LOOPBACK=0`` keeps Ray's default addresses: loopback mode's dashboard agent takes the
    fixed 127.0.0.1:52365, so a second local Ray on the same host fails to start while one holds it.

    ``shield_signals``: signals the instance's processes (GCS, raylet, agents and the workers the raylet
    starts later) block for their whole life, so that only the driver acts on them; see
    :func:`_start_shielded`.
    """
    import ray

    if os.environ.get("PSFT_RAY_LOOPBACK", "1") != "0":
        bind_local_ray_to_loopback()
    if shield_signals:
        _start_shielded(shield_signals, address="local", include_dashboard=False, **init_kwargs)
    else:
        ray.init(address="local", include_dashboard=False, **init_kwargs)


def _start_shielded(signals: tuple[int, ...], **init_kwargs: Any) -> None:
    """``ray.init`` with ``signals`` blocked in the processes it starts, and in theirs.

    Schedulers signal more than the driver: ``kill -- -PGID`` the driver's process group, SLURM every
    process of the job, a supervisor the whole tree. Ray starts its local processes as children of the
    driver, in its group (``services.start_ray_process``: Popen, no new session), and they shut down on
    SIGTERM (the raylet takes the workers with it), so the driver's ``ray.get`` fails and the step in
    progress is lost. A blocked signal stays pending instead, and the mask is inherited through fork and
    exec: Ray does the same for SIGINT (its ``preexec_fn``), so that Ctrl-C reaches only the driver.
    The block is only in this thread while ``ray.init`` runs; the driver then unblocks and handles the
    signals (``preemption.PreemptionGuard``). A signal that arrives meanwhile is delivered on unblock,
    to the handler the caller had: Ray's SIGTERM handler (kill the local Ray, exit 1) is replaced by it.

    The processes still die with the driver (Ray binds them to it with PR_SET_PDEATHSIG) and by SIGKILL;
    :func:`_skip_graceful_kill` drops the 1 s SIGTERM wait per process Ray's shutdown would spend on them.
    """
    import ray

    handlers = {signum: signal.getsignal(signum) for signum in signals}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        ray.init(**init_kwargs)
        _skip_graceful_kill()
    finally:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for signum, handler in handlers.items():
                if handler is not None:
                    signal.signal(signum, handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)


def _skip_graceful_kill() -> None:
    """Ray's shutdown sends each local process SIGTERM and waits 1 s before SIGKILL; a process that
    blocks SIGTERM only ever ends by the SIGKILL, so go there at once (Ray internals: ``Node``)."""
    node = ray_node()
    if node is None:
        return
    kill_all = node.kill_all_processes

    def kill_all_processes(check_alive: bool = True, allow_graceful: bool = False, wait: bool = False) -> None:
        # The raylet stops its agents and workers only on a graceful SIGTERM, which it blocks: end them too.
        started_by_raylet = _raylet_descendants(node)
        kill_all(check_alive=check_alive, allow_graceful=False, wait=wait)
        for proc in started_by_raylet:
            try:
                proc.kill()
            except Exception:  # psutil.NoSuchProcess: already gone
                pass

    node.kill_all_processes = kill_all_processes


def _raylet_descendants(node: Any) -> list:
    import psutil
    import ray._private.ray_constants as ray_constants

    try:
        raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process
        return psutil.Process(raylet.pid).children(recursive=True)
    except (KeyError, IndexError, psutil.Error):
        return []


def ray_node() -> Any:
    """The local Ray node this process started (``None`` when it joined a cluster or started none)."""
    import ray._private.worker as ray_worker

    return getattr(ray_worker, "_global_node", None)


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
    from .preemption import SHIELDED_SIGNALS

    start_local_ray(shield_signals=SHIELDED_SIGNALS, **kwargs)
