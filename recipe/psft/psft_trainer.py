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

Everything else (FSDP engine workers, checkpoints and resume, tracking) is verl's.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from tensordict.tensorclass import NonTensorData
from torch.utils.data import DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader
from tqdm import tqdm
from verl.trainer.sft_trainer_ray import SFTTrainer
from verl.utils import tensordict_utils as tu
from verl.utils.dataset.dataset_utils import SFTTensorCollator
from verl.utils.seqlen_balancing import calculate_workload, get_seqlen_balanced_partitions

from .losses import LOSS_MODES, METRIC_REDUCTION, TokenLoss
from .verl_adapters.engine import WithLogitsProbe, data_parallel_size, logits_hook_meta
from .verl_adapters.ray_bootstrap import ensure_ray
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


class PSFTTrainer(SFTTrainer):
    """verl's ``SFTTrainer`` with PSFT's snapshot + k mini-batch updates per step."""

    # --- construction -------------------------------------------------------------------------

    def _build_engine(self) -> None:
        # Ray starts only now: config and data (built before the engine) are already validated.
        ensure_ray(self.config)
        super()._build_engine()
        cfg = self.config.psft
        self.loss_fns = {
            mode: WithLogitsProbe(TokenLoss(mode, float(cfg.clip_ratio_low), float(cfg.clip_ratio_high)))
            for mode in LOSS_MODES
        }
        self._active_loss_mode = None
        # Asked once: on the worker group this query is a remote call to every worker.
        self.dp_size = data_parallel_size(self.training_client)

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
            dataset=self.train_dataset,
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
        token_metrics = bool(self.config.psft.token_metrics)
        return {
            **self._base_meta(),
            "use_dynamic_bsz": self.config.data.use_dynamic_bsz,
            "max_token_len_per_gpu": self.config.data.max_token_len_per_gpu,
            "micro_batch_size_per_gpu": self.config.data.micro_batch_size_per_gpu,
            "global_batch_size": self.config.psft.mini_batch_size,
            "calculate_entropy": token_metrics,
            # Token accuracy needs the full logits, which fused kernels never materialise.
            **logits_hook_meta(token_metrics and not self.config.model.get("use_fused_kernels", False)),
        }

    def _balance_for_dp(self, indices: torch.Tensor, seqlens: list[int]) -> torch.Tensor:
        """Reorder a mini-batch so each data-parallel rank gets a similar token workload."""
        if not self.config.trainer.balance_batch:
            return indices
        workload = calculate_workload(torch.tensor([seqlens[i] for i in indices.tolist()], dtype=torch.float32))
        partitions = get_seqlen_balanced_partitions(workload, k_partitions=self.dp_size, equal_size=True)
        return indices[torch.tensor([j for part in partitions for j in sorted(part)])]

    def _snapshot_log_probs(self, batch, rows: torch.Tensor) -> dict[int, torch.Tensor]:
        """Forward-only pass of the current weights (the step's snapshot) over ``rows``."""
        sub = tu.index_select_tensor_dict(batch, rows)
        # Only the base keys: the worker fills in the engine's inference micro-batch settings.
        tu.assign_non_tensor(sub, compute_loss=False, calculate_entropy=False)
        output = self.training_client.infer_batch(sub).get()
        log_probs = tu.get(output, "log_probs")
        return {int(row): lp.detach().float() for row, lp in zip(rows.tolist(), log_probs.unbind(), strict=True)}

    def train_step(self, batch, step: int) -> dict[str, float]:
        """Snapshot + k mini-batch updates (x epochs) on one global batch; returns step metrics."""
        cfg = self.config.psft
        mode = "sft" if step <= int(cfg.sft_warmup_steps) else cfg.loss_mode
        self._use_loss(mode)
        batch_size = batch.batch_size[0]
        seqlens = self._get_batch_seqlens(batch).tolist()
        schedule = update_schedule(
            batch_size,
            int(cfg.mini_batch_size),
            int(cfg.epochs),
            bool(cfg.shuffle_mini_batches),
            seed=int(self.config.trainer.seed) * 1_000_003 + step,
        )

        snapshot_time, old_log_probs = 0.0, {}
        if mode == "psft":
            rows = rows_needing_snapshot(schedule, skip_first=bool(cfg.skip_first_snapshot))
            if len(rows):
                start = time.perf_counter()
                old_log_probs = self._snapshot_log_probs(batch, rows)
                snapshot_time = time.perf_counter() - start

        per_update: dict[str, list[float]] = defaultdict(list)
        train_meta = self._train_meta()
        for update, indices in enumerate(schedule):
            indices = self._balance_for_dp(indices, seqlens)
            mini_batch = tu.index_select_tensor_dict(batch, indices)
            if mode == "psft" and (update > 0 or not cfg.skip_first_snapshot):
                mini_batch["old_log_probs"] = torch.nested.as_nested_tensor(
                    [old_log_probs[i] for i in indices.tolist()], layout=torch.jagged
                )
            tu.assign_non_tensor(
                mini_batch,
                **train_meta,
                update_lr_scheduler=update == len(schedule) - 1,
                global_token_num=NonTensorData([seqlens[i] for i in indices.tolist()]),
            )
            metrics = tu.get(self.training_client.train_batch(mini_batch).get(), "metrics")
            for key, value in update_metrics(metrics).items():
                per_update[key].append(value)

        result = step_metrics(per_update)
        result["train/psft_active"] = float(mode == "psft")
        result["train/global_tokens"] = float(sum(seqlens))
        result["perf/snapshot_time_s"] = snapshot_time
        result["perf/snapshot_rows"] = len(old_log_probs)
        return result

    # --- validation --------------------------------------------------------------------------

    def validate(self) -> dict[str, float]:
        """Teacher-forced NLL, entropy and token accuracy of the demonstrations of the val set."""
        totals: dict[str, float] = defaultdict(float)
        meta = {**self._base_meta(), "calculate_entropy": True, **logits_hook_meta(True)}
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
        global_step = self.resume_global_step
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
                start = time.perf_counter()
                batch = tu.get_tensordict(tensor_dict=data, non_tensor_dict=self._base_meta())
                metrics = self.train_step(batch, global_step)
                step_time = time.perf_counter() - start
                metrics["perf/step_time_s"] = step_time
                metrics["perf/tokens_per_s"] = metrics["train/global_tokens"] / step_time
                metrics["train/epoch"] = epoch + 1
                tracking.log(data=metrics, step=global_step)

                is_last_step = global_step >= self.total_training_steps
                if self.val_dataloader is not None and (
                    is_last_step or (self.test_freq > 0 and global_step % self.test_freq == 0)
                ):
                    last_val = self.validate()
                    tracking.log(data=last_val, step=global_step)
                if is_last_step or (self.save_freq > 0 and global_step % self.save_freq == 0):
                    self.ckpt_handler.save_checkpoint(step=global_step)
                if is_last_step:
                    progress.close()
                    print(f"Training finished at step {global_step}; last validation: {last_val}")
                    return last_val
        return last_val
