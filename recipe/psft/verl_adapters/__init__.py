"""Every place where the PSFT recipe relies on verl or Ray internals: the one folder to review on a verl upgrade.

The method (``losses.py``, the PSFT step in ``psft_trainer.py``, ``config_checks.py``, the dataset)
calls verl only through the modules below or through verl's public, documented classes.

==================  ===============================================================================
module              the verl / Ray internals it touches
==================  ===============================================================================
cpu_platform        ``verl.plugins`` entry point; ``PlatformRegistry`` / ``PlatformBase``; the private
                    ``EngineRegistry._engines`` table (FSDP engine for device ``cpu``); a monkeypatch
                    of ``verl.utils.distributed.initialize_global_process_group_ray``
lean_imports        import hooks (``sys.meta_path``) on verl module names: the CPU engine registration
                    runs after ``verl.workers.engine`` is imported; without ``torch.npu``,
                    ``verl.checkpoint_engine.hccl_checkpoint_engine`` raises verl's own ImportError
                    before it imports vLLM
checkpoint_handler  subclass of verl's ``CheckpointHandler``: overrides its private ``_determine_resume_path``
                    and ``save_checkpoint``, uses its attributes ``engine``, ``train_dataloader``,
                    ``default_local_dir``, ``max_ckpt_to_keep``, ``default_hdfs_dir``, ``dp_rank``
worker_control      Ray's ``__ray_call__`` / ``__ray_ready__`` on the worker group's ``workers``; the
                    TrainingWorker's ``engine.lr_scheduler`` (a LambdaLR stepped back after a skipped update)
engine              the worker group's private ``_query_dispatch_info`` (data-parallel size); the FSDP
                    engine's ``distillation_use_topk`` flag, which hands full logits to the loss
                    object as ``student_logits`` (used here for token accuracy)
tracking            verl's ``FileLogger`` path rule and its open file ``Tracking.logger['file'].fp``
policy_loss         ``register_policy_loss`` / ``agg_loss`` of verl's PPO ``core_algos``
==================  ===============================================================================

Public verl APIs used outside this folder, also worth a look on an upgrade: ``psft_trainer.py``
subclasses ``verl.trainer.sft_trainer_ray.SFTTrainer`` and overrides its ``_build_engine`` /
``_build_dataloader`` and ``fit`` (relying on its attributes ``training_client``, ``ckpt_handler``,
``resume_global_step``, ``optimizer_config``, ``model_config`` and ``_get_batch_seqlens``), and calls
``verl.utils.tensordict_utils``, ``SFTTensorCollator`` and ``verl.utils.seqlen_balancing``;
``run_preparation.py`` calls ``verl.utils.device.auto_set_device``; ``losses.py`` calls ``kl_penalty`` of
verl's PPO ``core_algos`` (its per-token KL estimators, by name); the recipe config extends verl's
``sft_trainer_engine`` config; ``dataset.py`` is loaded through ``data.custom_cls``.
``benchmarks/harness.py`` reads (and resets, through ``/proc`` on CPU) worker memory through the worker
group's ``workers`` and Ray's ``__ray_call__``; ``benchmarks/metrics_cost.py`` likewise times the probe
by wrapping this package's ``engine.token_probe`` inside the workers.
``recipe/psft/ray_local.py`` (Ray only, outside this package so that the evaluation server needs no
verl) sizes a local Ray instance for verl's ``RayResourcePool`` bundles and sets Ray's private
``ray_constants.ENABLE_RAY_CLUSTER`` (single-machine mode: ports on 127.0.0.1).

Importing this package checks that the installed verl is the version this recipe was tested with
(:data:`TESTED_VERL_VERSION`). Any other version raises :class:`UntestedVerlError`, unless the
environment sets ``PSFT_ALLOW_UNTESTED_VERL=1``, which turns the error into a warning.
"""

from __future__ import annotations

import os
import warnings
from importlib.metadata import PackageNotFoundError, version

from packaging.version import InvalidVersion, Version

TESTED_VERL_VERSION = "0.9.1"
ALLOW_UNTESTED_ENV = "PSFT_ALLOW_UNTESTED_VERL"


class UntestedVerlError(ImportError):
    """The installed verl is not the version the recipe's adapters were written and tested against."""


def installed_verl_version() -> str | None:
    """The installed verl distribution's version, or None when verl is not installed."""
    try:
        return version("verl")
    except PackageNotFoundError:
        return None


def check_verl_version(installed: str | None, allow_untested: bool | None = None) -> None:
    """Raise UntestedVerlError unless ``installed`` is the tested verl release (post-releases pass).

    ``allow_untested`` (default: ``PSFT_ALLOW_UNTESTED_VERL=1`` in the environment) warns instead.
    """
    if installed is None:
        raise UntestedVerlError(
            "verl is not installed: install the tested version with "
            f"`pip install 'verl[verl-core]=={TESTED_VERL_VERSION}'` (or run `bash scripts/setup.sh`)"
        )
    try:
        same = Version(installed).release == Version(TESTED_VERL_VERSION).release
    except InvalidVersion:
        same = False
    if same:
        return
    if allow_untested is None:
        allow_untested = os.environ.get(ALLOW_UNTESTED_ENV) == "1"
    message = (
        f"verl {installed} is installed, but the PSFT recipe was tested with verl {TESTED_VERL_VERSION} and "
        f"relies on verl internals that change between releases (see recipe/psft/verl_adapters/__init__.py). "
        f"Install the tested version with `pip install 'verl[verl-core]=={TESTED_VERL_VERSION}'`"
    )
    if allow_untested:
        warnings.warn(f"{message}; proceeding because {ALLOW_UNTESTED_ENV}=1.", stacklevel=2)
        return
    raise UntestedVerlError(f"{message}, or set {ALLOW_UNTESTED_ENV}=1 to proceed at your own risk.")


check_verl_version(installed_verl_version())
