"""Run verl 0.9.1 on machines without a GPU (laptops, CI): a verl plugin.

verl 0.9.1 falls back to its "nvidia" platform when no accelerator is found, and then asks Ray for
GPUs, NCCL for collectives and CUDA for memory statistics. This module, loaded by ``import verl``
through the ``verl.plugins`` entry point (so in the driver *and* in every Ray worker), registers a
CPU platform that verl's auto-detection picks only when no GPU platform is available:

* device ``cpu``, collective backend ``gloo``, Ray resource ``CPU``;
* verl's FSDP language-model engine registered for device ``cpu`` (FSDP2 only: FSDP1 needs CUDA);
* verl's process-group string ``"cpu:gloo,cpu:gloo"`` (a device listed twice) turned into ``"gloo"``;
* verl's NPU weight-transfer module kept from importing vLLM only to fail (``lean_imports``).

At import the plugin installs these and nothing more: the FSDP engine is registered when verl's
engine package is first imported (by the worker, or the trainer), not by the plugin, so a process that
never builds an engine (``--cfg job``) does not import it.

:func:`apply_cpu_defaults` adjusts a trainer config on the driver (sdpa attention, fp32, FSDP2, no
torch.compile) so a CPU user passes no CPU-specific overrides. On a GPU machine nothing here is active.
"""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import sys
import types
from typing import Any

import torch
from verl.plugin.platform import PlatformBase, PlatformRegistry

from .lean_imports import after_import, skip_hccl_checkpoint_engine_without_npu


def gpu_present() -> bool:
    """True when any accelerator verl knows about is usable in this process."""
    if torch.cuda.is_available():
        return True
    npu = getattr(torch, "npu", None)
    return bool(npu is not None and npu.is_available())


def _peak_rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux and bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _build_cpu_device_module() -> types.ModuleType:
    """``torch.cpu`` plus the CUDA-style calls verl makes on its device module.

    Memory statistics report the process's peak resident set size, the closest CPU analogue of
    ``max_memory_allocated``; verl logs it as ``perf/max_memory_allocated_gb``.
    """
    module = types.ModuleType("psft_cpu_device")
    for name in dir(torch.cpu):
        if not name.startswith("_"):
            setattr(module, name, getattr(torch.cpu, name))
    module.is_available = lambda: True
    module.device_count = lambda: 1
    module.current_device = lambda: "cpu"
    module.set_device = lambda *_args, **_kwargs: None
    module.synchronize = lambda *_args, **_kwargs: None
    module.empty_cache = lambda: None
    module.get_rng_state = lambda *_args, **_kwargs: torch.get_rng_state()
    module.set_rng_state = lambda state, *_args, **_kwargs: torch.set_rng_state(state)
    module.manual_seed = torch.manual_seed
    module.manual_seed_all = torch.manual_seed
    module.max_memory_allocated = lambda *_args, **_kwargs: _peak_rss_bytes()
    module.max_memory_reserved = lambda *_args, **_kwargs: _peak_rss_bytes()
    module.memory_allocated = lambda *_args, **_kwargs: 0
    module.memory_reserved = lambda *_args, **_kwargs: 0
    module.reset_peak_memory_stats = lambda *_args, **_kwargs: None
    module.mem_get_info = lambda *_args, **_kwargs: (0, 0)
    module.get_device_name = lambda *_args, **_kwargs: "cpu"
    return module


@PlatformRegistry.register(platform="cpu")
class PlatformCPU(PlatformBase):
    """verl platform for CPU-only hosts: torch CPU tensors, gloo collectives, Ray CPU resources."""

    _device_module = _build_cpu_device_module()

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> types.ModuleType:
        return self._device_module

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        # verl probes registered platforms in order (nvidia, npu, rocm, then us): only claim the
        # host when no accelerator is there, so GPU machines are untouched.
        return not gpu_present()

    def current_device(self) -> str:
        # verl uses this as a torch device (`tensor.to(get_device_id())`); an int would mean an accelerator.
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: int | None = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    def ray_resource_name(self) -> str:
        return "CPU"

    def ray_resource_options(self, num_gpus: float) -> dict[str, Any]:
        # Each worker occupies one logical CPU of its placement-group bundle.
        return {"num_cpus": num_gpus}

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    @contextlib.contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def cudart(self) -> Any:
        return None


def cpu_platform_active() -> bool:
    """True when verl resolved (or will resolve) its platform to this CPU platform."""
    from verl.plugin.platform import get_platform

    return get_platform().device_name == "cpu"


def _patch_process_group_backend() -> None:
    """verl builds ``f"cpu:gloo,{device}:{backend}"``; on CPU that names ``cpu`` twice."""
    import verl.utils.distributed as dist_utils

    original = dist_utils.initialize_global_process_group_ray
    if getattr(original, "_psft_cpu", False):
        return

    @functools.wraps(original)
    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        if backend is None or backend.replace(" ", "") == "cpu:gloo,cpu:gloo":
            backend = "gloo"
        return original(timeout_second=timeout_second, backend=backend)

    initialize_global_process_group_ray._psft_cpu = True
    dist_utils.initialize_global_process_group_ray = initialize_global_process_group_ray
    # engine_workers imports the function by name; keep it consistent if it was imported already.
    workers = sys.modules.get("verl.workers.engine_workers")
    if workers is not None:
        workers.initialize_global_process_group_ray = initialize_global_process_group_ray


def _register_fsdp_engine_for_cpu() -> None:
    from verl.workers.engine import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    registry = EngineRegistry._engines.setdefault("language_model", {})
    for backend in ("fsdp", "fsdp2"):
        registry.setdefault(backend, {}).setdefault("cpu", FSDPEngineWithLMHead)


def activate() -> bool:
    """Install the CPU pieces when this host has no GPU. Returns whether they are active."""
    if gpu_present() or os.environ.get("PSFT_DISABLE_CPU_PLATFORM") == "1":
        return False
    if not cpu_platform_active():
        return False
    skip_hccl_checkpoint_engine_without_npu()
    _patch_process_group_backend()
    after_import("verl.workers.engine", _register_fsdp_engine_for_cpu)
    return True


def apply_cpu_defaults(config: Any) -> bool:
    """Make a verl trainer config runnable on CPU; a no-op (returns False) on GPU hosts.

    Only values that cannot work, or work badly, on CPU are changed: the device, the attention kernel
    (flash-attention is CUDA-only), sequence packing (see below), bf16 mixed precision (slow and lossy
    on most CPUs), FSDP1 (needs CUDA) and torch.compile (minutes of compilation for no gain here).
    """
    from omegaconf import open_dict

    if not activate():
        return False
    with open_dict(config):
        config.trainer.device = "cpu"
        if config.model.override_config.get("attn_implementation") in (None, "flash_attention_2"):
            config.model.override_config.attn_implementation = "sdpa"
        config.engine.strategy = "fsdp2"
        config.engine.use_torch_compile = False
        config.engine.mixed_precision = {"param_dtype": "fp32", "reduce_dtype": "fp32", "buffer_dtype": "fp32"}
        # Without flash-attention's varlen kernels, sdpa over a packed micro-batch attends across the
        # whole packed length (quadratic in the number of sequences packed). Padded micro-batches keep
        # attention per sequence: measured 2.3x faster per update on this recipe's CPU benchmark.
        config.model.use_remove_padding = False
    return True


# Loaded as a plugin by `import verl`: make Ray workers CPU-ready before any engine is built.
try:
    activate()
except Exception as exc:  # a plugin must never break `import verl`
    print(f"[psft] CPU platform plugin not activated: {exc!r}", file=sys.stderr)
