"""PSFTTrainer: verl's Ray SFT trainer with a PSFT training step.

Per global step (one batch of ``data.train_batch_size`` sequences):

1. the update schedule: ``psft.epochs`` passes, each cutting the batch into k = batch / mini_batch
   mini-batches (optionally shuffled);
2. snapshot log-probs: one forward-only pass of the current weights (the frozen snapshot pi_old) over
   the rows that need them, with the inference micro-batch settings;
3. k * epochs optimizer updates, one ``train_batch`` call each, with the PSFT loss against the snapshot.

The first update of a step runs on the snapshot's own weights, so its old log-probs equal its current
ones, detached: with ``psft.skip_first_snapshot`` they are not computed. With k = 1 and one pass no
snapshot pass runs at all and PSFT costs exactly what SFT costs.

Runs with a reference (SFT-KL, ASFT, ``psft.snapshot=initial``, ``psft.log_kl``) get the initial
model's log-probs of the whole training set once, before step 1 (``recipe/psft/reference.py``).

``train/entropy`` and ``train/token_acc`` are the step-start (snapshot) policy's, over the whole
batch's demonstration tokens, without gradients, as the original measures ``actor/entropy``: taken in
the forward-only pass (the snapshot pass, or a metrics-only pass in modes without one), and for the
rows of the first mini-batch from their first training forward (which runs on the step-start weights)
through a no-grad logits probe.

Everything else (FSDP engine workers, checkpoints and resume, tracking) is verl's.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from tensordict.tensorclass import NonTensorData
from torch.utils.data import DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader
from tqdm import tqdm
from verl.trainer.sft_trainer_ray import SFTTrainer
from verl.utils import tensordict_utils as tu
from verl.utils.checkpoint import OrchestrationMode
from verl.utils.dataset.dataset_utils import SFTTensorCollator
from verl.utils.seqlen_balancing import calculate_workload, get_seqlen_balanced_partitions

from . import reference as reference_cache
from .checkpoints import ResumePlan, resolve_resume
from .config_checks import check_sizes
from .divergence import DivergenceGuard
from .exit_codes import AlreadyFinished, Diverged, Preempted, WorkerLost
from .losses import KL_LOSS_MODES, LOSS_MODES, METRIC_REDUCTION, TokenLoss
from .preemption import PreemptionGuard
from .ray_local import ensure_ray
from .run_identity import run_identity
from .verl_adapters.engine import WithLogitsProbe, data_parallel_size, logits_hook_meta
from .verl_adapters.tracking import make_tracking


def reduction_for(key: str, default: str) -> str:
    """How a metric combines over micro-batches, ranks and updates: sum, mean, max or min."""
    if key.startswith("perf/"):
        return "max"
    return METRIC_REDUCTION.get(key, default)


def _reduce(values: list[float], how: str) -> float:
    if how == "max":
        return max(values)
    if how == "min":
        return min(values)
    return sum(values) if how == "sum" else float(np.mean(values))


def reduce_worker_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Reduce a worker's per-rank, per-micro-batch loss metrics to scalars (see METRIC_REDUCTION)."""

    def flatten(value: Any) -> list[float]:
        if isinstance(value, list | tuple):
            return [x for item in value for x in flatten(item)]
        return [float(value)]

    return {key: _reduce(flatten(value), reduction_for(key, "sum")) for key, value in metrics.items()}


def update_metrics(worker_metrics: dict[str, Any]) -> dict[str, float]:
    """One optimizer update's metrics: the loss metrics reduced over ranks, plus grad norm and lr."""
    reduced = reduce_worker_metrics(
        {k: v for k, v in worker_metrics.items() if k not in ("loss", "grad_norm", "lr", "mfu")}
    )
    reduced["grad_norm"] = float(worker_metrics["grad_norm"])
    if "lr" in worker_metrics:  # present on the step's last update, after the scheduler advanced
        reduced["lr"] = float(worker_metrics["lr"])
    return reduced


def step_metrics(per_update: dict[str, list[float]]) -> dict[str, float]:
    """A step's logged metrics from its updates' (means, except maxima/minima; the first update apart)."""
    out = {key: _reduce(values, reduction_for(key, "mean")) for key, values in per_update.items()}
    result = {f"train/{k}": v for k, v in out.items() if not k.startswith("perf/") and k not in ("loss_tokens", "lr")}
    result.update({k: v for k, v in out.items() if k.startswith("perf/")})
    result["train/loss"] = out["nll"]  # the NLL of the demonstrations, comparable across loss modes
    result["train/lr"] = per_update["lr"][-1] if per_update.get("lr") else float("nan")
    result["train/first_update_ratio_min"] = per_update["ratio_min"][0]
    result["train/first_update_ratio_max"] = per_update["ratio_max"][0]
    result["train/updates"] = len(per_update["nll"])
    return result


def update_schedule(batch_size: int, mini_batch_size: int, epochs: int, shuffle: bool, seed: int) -> list[torch.Tensor]:
    """Row indices of each optimizer update of one step: ``epochs`` passes of k mini-batches."""
    generator = torch.Generator().manual_seed(seed)
    schedule = []
    for _ in range(epochs):
        order = torch.randperm(batch_size, generator=generator) if shuffle else torch.arange(batch_size)
        schedule.extend(order.split(mini_batch_size))
    return schedule


def rows_needing_snapshot(schedule: list[torch.Tensor], skip_first: bool) -> torch.Tensor:
    """Rows whose old log-probs must come from the snapshot pass (sorted)."""
    needed = schedule[1:] if skip_first else schedule
    if not needed:
        return torch.empty(0, dtype=torch.long)
    return torch.unique(torch.cat(needed))


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def needs_reference(psft: Any) -> bool:
    """Whether a run needs the initial model's log-probs of the training set."""
    return psft.loss_mode in KL_LOSS_MODES or psft.get("snapshot", "step") == "initial" or bool(psft.get("log_kl"))


def shifted_loss_mask(loss_mask: torch.Tensor) -> torch.Tensor:
    """A row's loss mask aligned with its log-probs (log_probs[t] scores token t + 1), as the loss does."""
    return torch.cat([loss_mask[1:], loss_mask.new_zeros(1)])


class WithRowIndex(torch.utils.data.Dataset):
    """The training dataset with each item's row number (``row_index``), to look up per-row caches."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {**self.dataset[index], "row_index": torch.tensor([index], dtype=torch.long)}


class PSFTTrainer(SFTTrainer):
    """verl's ``SFTTrainer`` with PSFT's snapshot + k mini-batch updates per step."""

    # --- construction -------------------------------------------------------------------------

    def __init__(
        self,
        config: Any,
        resume_plan: ResumePlan | None = None,
        identity: dict[str, Any] | None = None,
        preemption: PreemptionGuard | None = None,
    ):
        trainer = config.trainer
        self.resume_plan = resume_plan or resolve_resume(
            trainer.default_local_dir, trainer.get("resume_mode", "auto"), trainer.get("resume_from_path")
        )
        self.run_identity = identity if identity is not None else run_identity(config)
        # A guard passed in (main_psft's, installed before the data is read) stays installed until the
        # caller removes it, so a second signal during Ray's shutdown still exits at once.
        self._owns_preemption_guard = preemption is None
        self.preemption = preemption or PreemptionGuard()
        self.divergence = DivergenceGuard(int(config.psft.get("max_nonfinite", 3)))
        super().__init__(config)

    def _check_before_ray(self) -> None:
        """Checks that need the tokenised data but not Ray: sizes, and whether anything is left to train."""
        check_sizes(self.config, len(self.train_dataset), len(self.val_dataset) if self.val_dataset else None)
        done = self.resume_plan.step
        if self.resume_plan.path is not None and done >= self.total_training_steps:
            raise AlreadyFinished(
                f"nothing to do: the checkpoint {self.resume_plan.path} is at step {done} and this run ends at "
                f"step {self.total_training_steps}. Its weights are in {self.resume_plan.path / 'huggingface'}. "
                "Raise trainer.total_training_steps or trainer.total_epochs to train further."
            )

    def _build_engine(self) -> None:
        self._check_before_ray()
        # Ray starts only now: config and data (built before the engine) are already validated.
        ensure_ray(self.config)
        # ray.init replaces the SIGTERM handler with one that kills Ray at once: take it back.
        self.preemption.install()
        super()._build_engine()
        cfg = self.config.psft
        self.loss_fns = {
            mode: WithLogitsProbe(
                TokenLoss(
                    mode,
                    float(cfg.clip_ratio_low),
                    float(cfg.clip_ratio_high),
                    kl_coef=float(cfg.kl_coef),
                    kl_estimator=str(cfg.kl_estimator),
                    loss_agg_mode=str(cfg.loss_agg_mode),
                )
            )
            for mode in LOSS_MODES
        }
        # Forward-only passes (snapshot, metrics, validation) use a loss only for its metrics.
        self.loss_fns["metrics"] = WithLogitsProbe(TokenLoss("sft"))
        self._active_loss_mode = None
        # Asked once: on the worker group this query is a remote call to every worker.
        self.dp_size = data_parallel_size(self.training_client)
        # Before any checkpoint is loaded, so the workers still hold the initial weights.
        self.reference = self._reference_log_probs() if needs_reference(cfg) else None

    def _build_ckpt_handler(self) -> None:
        from .verl_adapters.checkpoint_handler import TrustedCheckpointHandler

        trainer = self.config.trainer
        self.ckpt_handler = TrustedCheckpointHandler(
            engine=self.training_client,
            train_dataloader=self.train_dataloader,
            default_local_dir=trainer.default_local_dir,
            max_ckpt_to_keep=trainer.get("max_ckpt_to_keep"),
            default_hdfs_dir=trainer.get("default_hdfs_dir"),
            resume_mode=trainer.get("resume_mode", "auto"),
            resume_from_path=trainer.get("resume_from_path"),
            mode=OrchestrationMode.RAY,
            resume_plan=self.resume_plan,
            run_identity=self.run_identity,
        )

    def _build_dataloader(self) -> None:
        # verl's version hard-codes 8 loader processes per loader; ours honours data.num_workers
        # (the dataset is tokenised up front, so 0 is the right default) and sizes validation batches.
        config = self.config
        num_workers = int(config.data.get("num_workers", 0))
        self.global_batch_size = config.data.train_batch_size
        self.train_batch_size_per_dp = self.global_batch_size
        self.collate_fn = SFTTensorCollator(config.data.pad_mode)
        self.train_sampler = DistributedSampler(
            self.train_dataset, shuffle=True, num_replicas=1, rank=0, drop_last=True, seed=config.trainer.seed
        )
        self.train_dataloader = StatefulDataLoader(
            dataset=WithRowIndex(self.train_dataset),
            batch_size=self.global_batch_size,
            sampler=self.train_sampler,
            collate_fn=self.collate_fn,
            num_workers=num_workers,
            drop_last=True,
        )
        self._fresh_loader_state = self.train_dataloader.state_dict()
        self.val_dataloader = None
        if self.val_dataset:
            dp_size = config.trainer.nnodes * config.trainer.n_gpus_per_node
            val_batch = config.data.get("val_batch_size") or self.global_batch_size
            val_batch = max(dp_size, min(val_batch, len(self.val_dataset)) // dp_size * dp_size)
            self.val_dataloader = StatefulDataLoader(
                dataset=self.val_dataset,
                batch_size=val_batch,
                sampler=DistributedSampler(self.val_dataset, shuffle=False, num_replicas=1, rank=0),
                collate_fn=self.collate_fn,
                num_workers=num_workers,
                drop_last=True,
            )

        self.steps_per_epoch = len(self.train_dataloader)
        if config.trainer.total_training_steps is not None:
            self.total_training_steps = config.trainer.total_training_steps
        else:
            self.total_training_steps = self.steps_per_epoch * config.trainer.total_epochs
        self.optimizer_config.total_training_steps = self.total_training_steps
        self.save_freq = config.trainer.save_freq
        if self.save_freq == "after_each_epoch":
            self.save_freq = self.steps_per_epoch
        self.test_freq = config.trainer.test_freq
        if self.test_freq == "after_each_epoch":
            self.test_freq = self.steps_per_epoch

    # --- one PSFT step --------------------------------------------------------------------------

    def _use_loss(self, mode: str) -> None:
        if mode != self._active_loss_mode:
            self.training_client.set_loss_fn(loss_fn=self.loss_fns[mode])
            self._active_loss_mode = mode

    def _base_meta(self) -> dict[str, Any]:
        return {
            "use_remove_padding": self.config.model.use_remove_padding,
            "temperature": 1.0,
            "pad_mode": self.config.data.pad_mode,
            "pad_token_id": self.model_config.tokenizer.pad_token_id,
        }

    def _train_meta(self) -> dict[str, Any]:
        return {
            **self._base_meta(),
            "use_dynamic_bsz": self.config.data.use_dynamic_bsz,
            "max_token_len_per_gpu": self.config.data.max_token_len_per_gpu,
            "micro_batch_size_per_gpu": self.config.data.micro_batch_size_per_gpu,
            "global_batch_size": self.config.psft.mini_batch_size,
            # Token metrics come from the no-grad logits probe (see _probe_meta), never from verl's
            # calculate_entropy, which would keep a vocabulary-sized tensor in the training graph.
            "calculate_entropy": False,
        }

    def _probe_meta(self, on: bool) -> dict[str, Any]:
        """Switch the no-grad logits probe (entropy, token accuracy) of a forward on or off.

        The engine's logits hook (verl_adapters/engine.py) hands the full logits to the probe.
        Fused kernels never materialise logits: there a forward-only pass computes entropy instead.
        """
        fused = bool(self.config.model.get("use_fused_kernels", False))
        return {**logits_hook_meta(on and not fused), "calculate_entropy": False}

    def _balance_for_dp(self, indices: torch.Tensor, seqlens: list[int]) -> torch.Tensor:
        """Reorder a mini-batch so each data-parallel rank gets a similar token workload."""
        if not self.config.trainer.balance_batch:
            return indices
        workload = calculate_workload(torch.tensor([seqlens[i] for i in indices.tolist()], dtype=torch.float32))
        partitions = get_seqlen_balanced_partitions(workload, k_partitions=self.dp_size, equal_size=True)
        return indices[torch.tensor([j for part in partitions for j in sorted(part)])]

    # --- reference log-probs (once per run) ----------------------------------------------------

    def _reference_identity(self) -> dict[str, Any]:
        engine = self.config.engine
        return {
            "model": reference_cache.model_fingerprint(self.model_config.local_path or self.config.model.path),
            "data": reference_cache.data_fingerprint(self.train_dataset),
            # What else changes the numbers: the engine's dtypes and the attention/padding path.
            "numerics": {
                "strategy": str(engine.get("strategy")),
                "model_dtype": str(engine.get("model_dtype")),
                "dtype": str(engine.get("dtype")),
                "mixed_precision": _plain(engine.get("mixed_precision")),
                "use_remove_padding": bool(self.config.model.use_remove_padding),
                "override_config": _plain(self.config.model.get("override_config")),
            },
        }

    def _reference_log_probs(self) -> reference_cache.ReferenceLogProbs:
        """The initial model's log-probs of every training row: loaded if stored for this model and
        data, else computed with one forward-only pass (the workers hold the initial weights now)."""
        identity = self._reference_identity()
        path = reference_cache.cache_file(self.config.trainer.default_local_dir, identity)
        cached = reference_cache.load(path, identity)
        if cached is not None:
            print(f"reference log-probs: reusing {path} ({len(cached)} rows)")
            self.reference_pass_time_s = 0.0
            return cached
        start = time.perf_counter()
        dataset, rows = self.train_dataset, []
        chunk = max(self.dp_size, int(self.config.data.train_batch_size) // self.dp_size * self.dp_size)
        self._use_loss("metrics")
        for first in tqdm(range(0, len(dataset), chunk), desc="reference log-probs"):
            indices = list(range(first, min(len(dataset), first + chunk)))
            padded = indices + [indices[0]] * (-len(indices) % self.dp_size)  # every rank gets rows
            batch = tu.get_tensordict(
                tensor_dict=self.collate_fn([dataset[i] for i in padded]), non_tensor_dict=self._base_meta()
            )
            tu.assign_non_tensor(batch, compute_loss=False, calculate_entropy=False)
            output = self.training_client.infer_batch(batch).get()
            rows.extend(lp.detach().float() for lp in tu.get(output, "log_probs").unbind()[: len(indices)])
        result = reference_cache.ReferenceLogProbs.from_rows(rows)
        reference_cache.save(path, result, identity)
        self.reference_pass_time_s = time.perf_counter() - start
        print(f"reference log-probs: {len(rows)} rows in {self.reference_pass_time_s:.1f} s, stored in {path}")
        return result

    # --- one PSFT step --------------------------------------------------------------------------

    def _forward_pass(self, batch, rows: torch.Tensor, token_metrics: bool) -> dict[str, dict[int, torch.Tensor]]:
        """Forward-only pass of the current weights (the step's snapshot) over ``rows``: per-row
        log-probs and, with ``token_metrics``, per-token entropy and argmax hits (no grad)."""
        sub = tu.index_select_tensor_dict(batch, rows)
        # Only the base keys: the worker fills in the engine's inference micro-batch settings.
        fused = bool(self.config.model.get("use_fused_kernels", False))
        tu.assign_non_tensor(
            sub,
            compute_loss=token_metrics and not fused,
            calculate_entropy=token_metrics and fused,
            **logits_hook_meta(token_metrics and not fused),
        )
        if token_metrics and not fused:
            self._use_loss("metrics")
        output = self.training_client.infer_batch(sub).get()
        result = {}
        names = {"log_probs": "log_probs", "probe_entropy": "entropy", "entropy": "entropy", "argmax_hit": "token_acc"}
        for key, name in names.items():
            if key in output.keys():
                values = tu.get(output, key).unbind()
                result[name] = {int(r): v.detach().float() for r, v in zip(rows.tolist(), values, strict=True)}
        return result

    def train_step(self, batch, step: int) -> dict[str, float]:
        """Snapshot + k mini-batch updates (x epochs) on one global batch; returns step metrics."""
        cfg = self.config.psft
        mode = "sft" if step <= int(cfg.sft_warmup_steps) else cfg.loss_mode
        row_ids = batch["row_index"].values().tolist() if "row_index" in batch.keys() else None
        batch = batch.exclude("row_index")
        if self.reference is not None and row_ids is None:
            raise ValueError("this run needs reference log-probs, but the batch has no row_index (WithRowIndex)")
        batch_size = batch.batch_size[0]
        seqlens = self._get_batch_seqlens(batch).tolist()
        masks = [shifted_loss_mask(m) for m in batch["loss_mask"].unbind()]
        schedule = update_schedule(
            batch_size,
            int(cfg.mini_batch_size),
            int(cfg.epochs),
            bool(cfg.shuffle_mini_batches),
            seed=int(self.config.trainer.seed) * 1_000_003 + step,
        )
        snapshot = mode == "psft" and cfg.snapshot == "step"
        skip_first = bool(cfg.skip_first_snapshot)
        token_metrics = bool(cfg.token_metrics)
        fused = bool(self.config.model.get("use_fused_kernels", False))
        first_rows = set(schedule[0].tolist())

        # One forward-only pass at the step-start weights: the snapshot's log-probs, and the token
        # metrics of every row whose first training forward does not run on these weights.
        pass_rows = set(rows_needing_snapshot(schedule, skip_first).tolist()) if snapshot else set()
        if token_metrics and bool(cfg.batch_entropy):
            # Fused kernels never show the probe the logits: the pass measures the first rows too.
            pass_rows |= set(range(batch_size)) - (set() if fused else first_rows)
        probe_first = token_metrics and not fused and not first_rows <= pass_rows
        pass_time, forward = 0.0, {}
        if pass_rows:
            start = time.perf_counter()
            forward = self._forward_pass(batch, torch.tensor(sorted(pass_rows)), token_metrics)
            pass_time = time.perf_counter() - start
        old_log_probs = forward.get("log_probs", {}) if snapshot else {}

        self._use_loss(mode)
        per_update: dict[str, list[float]] = defaultdict(list)
        train_meta = self._train_meta()
        first_update: dict[str, float] = {}
        for update, indices in enumerate(schedule):
            indices = self._balance_for_dp(indices, seqlens)
            rows = indices.tolist()
            mini_batch = tu.index_select_tensor_dict(batch, indices)
            if snapshot and (update > 0 or not skip_first):
                mini_batch["old_log_probs"] = torch.nested.as_nested_tensor(
                    [old_log_probs[i] for i in rows], layout=torch.jagged
                )
            if self.reference is not None:
                ref = self.reference.rows([row_ids[i] for i in rows])
                mini_batch["ref_log_probs"] = ref
                if mode == "psft" and cfg.snapshot == "initial":
                    mini_batch["old_log_probs"] = ref
            probe = token_metrics and (bool(cfg.update_token_metrics) or (update == 0 and probe_first))
            tu.assign_non_tensor(
                mini_batch,
                **{**train_meta, **self._probe_meta(probe)},
                batch_num_sequences=sum(int(masks[i].any()) for i in rows),
                update_lr_scheduler=update == len(schedule) - 1,
                global_token_num=NonTensorData([seqlens[i] for i in rows]),
            )
            raw_metrics = tu.get(self.training_client.train_batch(mini_batch).get(), "metrics")
            self.divergence.check_update(step, update, raw_metrics)
            metrics = update_metrics(raw_metrics)
            if update == 0 and probe_first:
                first_update = {k: metrics[k] for k in ("entropy", "token_acc", "loss_tokens") if k in metrics}
            for name in ("entropy", "token_acc"):
                if name in metrics:
                    value = metrics.pop(name)
                    if cfg.update_token_metrics:
                        metrics[f"update_{name}"] = value
            for key, value in metrics.items():
                per_update[key].append(value)

        result = step_metrics(per_update)
        result.update(
            self._step_start_token_metrics(forward, masks, first_update, first_rows if probe_first else set())
        )
        result["train/psft_active"] = float(mode == "psft")
        result["train/global_tokens"] = float(sum(seqlens))
        result["perf/snapshot_time_s"] = pass_time
        result["perf/snapshot_rows"] = len(old_log_probs)
        result["perf/forward_pass_rows"] = len(pass_rows)
        return result

    @staticmethod
    def _step_start_token_metrics(
        forward: dict[str, dict[int, torch.Tensor]],
        masks: list[torch.Tensor],
        first_update: dict[str, float],
        first_rows: set[int],
    ) -> dict[str, float]:
        """train/entropy and train/token_acc over the whole batch at the step-start weights: the
        forward-only pass's rows plus (token-weighted) the first update's rows when it was probed."""
        result = {}
        for name in ("entropy", "token_acc"):
            per_row = forward.get(name, {})
            total = sum(float((per_row[r] * masks[r]).sum()) for r in per_row if r not in first_rows)
            tokens = sum(float(masks[r].sum()) for r in per_row if r not in first_rows)
            if name in first_update:
                total += first_update[name] * first_update["loss_tokens"]
                tokens += first_update["loss_tokens"]
            if tokens:
                result[f"train/{name}"] = total / tokens
        return result

    # --- validation --------------------------------------------------------------------------

    def validate(self) -> dict[str, float]:
        """Teacher-forced NLL, entropy and token accuracy of the demonstrations of the val set."""
        totals: dict[str, float] = defaultdict(float)
        meta = {**self._base_meta(), **self._probe_meta(True)}
        if self.config.model.get("use_fused_kernels", False):
            meta["calculate_entropy"] = True  # forward-only: no graph to keep
        self._use_loss("metrics")
        for val_data in self.val_dataloader:
            batch = tu.get_tensordict(tensor_dict=val_data, non_tensor_dict=meta)
            output = self.training_client.infer_batch(batch).get()
            wanted = ("nll", "entropy", "token_acc", "loss_tokens")
            metrics = reduce_worker_metrics({k: v for k, v in tu.get(output, "metrics").items() if k in wanted})
            tokens = metrics.pop("loss_tokens")
            totals["tokens"] += tokens
            for key, value in metrics.items():
                totals[key] += value * tokens
        n = max(totals.pop("tokens"), 1.0)
        result = {f"val/{k}": v / n for k, v in totals.items()}
        result["val/loss"] = result.pop("val/nll")
        return result

    # --- the loop ----------------------------------------------------------------------------

    def fit(self) -> dict[str, float] | None:
        """Train to the configured end; stop early only through a RunStopped exception (see exit_codes)."""
        import ray.exceptions

        self.preemption.install()
        try:
            return self._train_loop()
        except (
            ray.exceptions.RayActorError,
            ray.exceptions.NodeDiedError,
            ray.exceptions.WorkerCrashedError,
            ray.exceptions.OutOfMemoryError,  # Ray's memory monitor killed a worker
        ) as exc:
            raise WorkerLost(self._lost_worker_message(exc, died=True)) from exc
        except ray.exceptions.RayTaskError as exc:
            # A surviving rank fails its collective when a peer dies: report the dead one if there is one.
            message = self._lost_worker_message(exc)
            if message is None:
                raise
            raise WorkerLost(message) from exc
        finally:
            if self._owns_preemption_guard:
                self.preemption.uninstall()

    def _lost_worker_message(self, exc: BaseException, died: bool = False) -> str | None:
        """Name the dead worker(s) and the step; None when nothing died (``died``: the error says it did)."""
        from .verl_adapters.worker_control import dead_workers

        dead = dead_workers(self.training_client)
        if not dead and not died:
            return None
        what = "; ".join(dead) if dead else " ".join(str(exc).split())[:400]
        last = self.last_saved_step
        resume = f"the last checkpoint is step {last}" if last else "no checkpoint was written yet"
        return (
            f"a training worker or its node died during step {self.current_step}: {what}. {resume}; rerun the "
            "same command once the cluster is whole again and it resumes from there."
        )

    def _save_due(self, step: int, is_last_step: bool) -> bool:
        if is_last_step or self.preemption.requested or self._save_postponed:
            return True
        if self.save_freq > 0 and step % self.save_freq == 0:
            return True
        minutes = float(self.config.psft.get("save_interval_minutes", 0) or 0)
        return minutes > 0 and time.monotonic() - self._last_save_time >= minutes * 60

    def _save_or_postpone(self, step: int, is_last_step: bool) -> None:
        """Checkpoint ``step`` unless it had a skipped update (then the next clean step saves)."""
        if self.divergence.step_had_skips(step):
            if is_last_step:
                raise Diverged(
                    f"the final step {step} had non-finite updates that the engine skipped: not saving it as the "
                    f"result. The last checkpoint is step {self.last_saved_step or 'none'}."
                )
            print(f"[psft] step {step} had a skipped update: its checkpoint moves to the next clean step", flush=True)
            self._save_postponed = True
            return
        self.ckpt_handler.save_checkpoint(step=step)
        self.last_saved_step, self._save_postponed, self._last_save_time = step, False, time.monotonic()

    def _stop_if_preempted(self, step: int) -> None:
        if not self.preemption.requested:
            return
        import signal

        name = signal.Signals(self.preemption.signum).name
        if step == self.resume_global_step:
            where = f"before its first step; the last checkpoint is step {step or 'none'}"
        elif self.last_saved_step == step:
            where = f"saved a checkpoint of step {step} in {self.config.trainer.default_local_dir}"
        else:
            last = self.last_saved_step
            where = f"step {step} was not saved (it had a skipped update); the last checkpoint is step {last}"
        when = "" if step == self.resume_global_step else f" after step {step}"
        raise Preempted(f"stopped by {name}{when}: {where}. Rerun the same command to resume.", self.preemption.signum)

    def _train_loop(self) -> dict[str, float] | None:
        global_step = self.resume_global_step
        self.current_step = global_step
        self.last_saved_step = global_step or None
        self._save_postponed, self._last_save_time = False, time.monotonic()
        if self.preemption.requested:  # the signal came while the model and workers were being built
            self._stop_if_preempted(global_step)
        if global_step and global_step % self.steps_per_epoch == 0:
            # A checkpoint on the last step of an epoch holds the loader mid-way through its final
            # batch; restored, it would yield nothing for the next epoch and skip to the one after.
            # The next epoch starts from scratch anyway.
            self.train_dataloader.load_state_dict(self._fresh_loader_state)
        tracking = make_tracking(self.config, global_step)
        last_val = None
        start_epoch = global_step // self.steps_per_epoch
        total_epochs = max(self.config.trainer.total_epochs, -(-self.total_training_steps // self.steps_per_epoch))
        for epoch in range(start_epoch, total_epochs):
            self.train_sampler.set_epoch(epoch=epoch)
            progress = tqdm(
                self.train_dataloader,
                initial=global_step % self.steps_per_epoch if epoch == start_epoch else 0,
                total=self.steps_per_epoch,
                desc=f"Epoch {epoch + 1}/{total_epochs}",
            )
            for data in progress:
                global_step += 1
                self.current_step = global_step
                start = time.perf_counter()
                batch = tu.get_tensordict(tensor_dict=data, non_tensor_dict=self._base_meta())
                metrics = self.train_step(batch, global_step)
                if self.divergence.step_had_skips(global_step):
                    from .verl_adapters.worker_control import rewind_lr_schedule

                    metrics["train/lr"] = rewind_lr_schedule(self.training_client)
                step_time = time.perf_counter() - start
                metrics["perf/step_time_s"] = step_time
                metrics["perf/tokens_per_s"] = metrics["train/global_tokens"] / step_time
                metrics["train/epoch"] = epoch + 1
                metrics["train/nonfinite_updates"] = self.divergence.count
                tracking.log(data=metrics, step=global_step)

                is_last_step = global_step >= self.total_training_steps
                wants_val = is_last_step or (self.test_freq > 0 and global_step % self.test_freq == 0)
                if self.val_dataloader is not None and wants_val and not self.preemption.requested:
                    last_val = self.validate()
                    tracking.log(data=last_val, step=global_step)
                if self._save_due(global_step, is_last_step):
                    self._save_or_postpone(global_step, is_last_step)
                self._stop_if_preempted(global_step)
                if is_last_step:
                    progress.close()
                    print(f"Training finished at step {global_step}; last validation: {last_val}")
                    return last_val
        return last_val
