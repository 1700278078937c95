"""PSFTTrainer: verl's Ray SFT trainer with a PSFT training step.

Per global step (one batch of ``data.train_batch_size`` sequences), :meth:`PSFTTrainer.train_step`:

1. plans the step (``step_plan.py``): ``psft.epochs`` passes, each cutting the batch into
   k = batch / mini_batch mini-batches, and which rows need the snapshot;
2. scores the snapshot: one forward-only pass of the current weights (the frozen pi_old) over those
   rows, which also measures the step-start token metrics;
3. makes k * epochs optimizer updates, one ``train_batch`` call each, with the PSFT loss
   (``losses.py``) against the snapshot;
4. reduces the workers' metrics into the step's (``step_metrics.py``).

With k = 1 and one pass no snapshot pass runs and PSFT costs exactly what SFT costs. Runs with a
reference (SFT-KL, ASFT, ``psft.snapshot=initial``, ``psft.log_kl``) get the initial model's
log-probs of the training set once, before step 1 (``reference.py``). Preemption, divergence, when
to save and lost workers are ``long_run.py``'s. Everything else (FSDP engine workers, checkpoints,
tracking) is verl's.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from tensordict.tensorclass import NonTensorData
from torch.utils.data import DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader
from tqdm import tqdm
from verl.trainer.sft_trainer_ray import SFTTrainer
from verl.utils import tensordict_utils as tu
from verl.utils.checkpoint import OrchestrationMode
from verl.utils.dataset.dataset_utils import SFTTensorCollator

from . import reference
from .clipped_token_log import open_clipped_token_log
from .config_checks import check_sizes, world_size
from .dataset import WithRowIndex
from .long_run import LongRunGuard
from .losses import LOSS_MODES, TokenLoss
from .preemption import PreemptionGuard
from .ray_local import ensure_ray
from .run_preparation import PreparedRun
from .step_metrics import StepMetrics, validation_metrics
from .step_plan import StepPlan, needs_reference, plan_step, shifted_loss_mask
from .verl_adapters import engine
from .verl_adapters.tracking import make_tracking


class PSFTTrainer(SFTTrainer):
    """verl's ``SFTTrainer`` with PSFT's snapshot + k mini-batch updates per step."""

    def __init__(self, config: Any, run: PreparedRun, preemption: PreemptionGuard | None = None):
        self.run = run
        self.guard = LongRunGuard(config, run.resume_plan, preemption)
        self.clipped_log = None  # the clipped-token log, opened with the file log (fit)
        super().__init__(config)

    # --- build --------------------------------------------------------------------------------

    def _build_engine(self) -> None:
        # Checks that need the tokenised data but not Ray: sizes, and whether anything is left to train.
        check_sizes(self.config, len(self.train_dataset), len(self.val_dataset) if self.val_dataset else None)
        self.guard.check_not_finished(self.total_training_steps)
        ensure_ray(self.config)  # Ray starts only now: config and data are validated
        self.guard.preemption.install()  # ray.init replaced the SIGTERM handler with one that kills Ray
        super()._build_engine()
        psft = self.config.psft
        losses = {
            mode: TokenLoss(
                mode,
                float(psft.clip_ratio_low),
                float(psft.clip_ratio_high),
                kl_coef=float(psft.kl_coef),
                kl_estimator=str(psft.kl_estimator),
                loss_agg_mode=str(psft.loss_agg_mode),
            )
            for mode in LOSS_MODES
        }
        # Forward-only passes (snapshot, metrics, validation) use a loss only for its metrics.
        losses["metrics"] = TokenLoss("sft")
        self.loss_fns = {mode: engine.WithLogitsProbe(loss) for mode, loss in losses.items()}
        self._active_loss_mode = None
        self.fused_kernels = bool(self.config.model.get("use_fused_kernels", False))
        self.batch_meta = engine.batch_meta(self.config, self.model_config.tokenizer.pad_token_id)
        self.dp_size = engine.data_parallel_size(self.training_client)  # a remote call: ask once
        # Before any checkpoint is loaded, so the workers still hold the initial weights.
        self.reference = self._reference_log_probs() if needs_reference(psft) else None

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
            resume_plan=self.run.resume_plan,
            run_identity=self.run.identity,
        )

    def _build_dataloader(self) -> None:
        # verl's version hard-codes 8 loader processes per loader; ours honours data.num_workers (the
        # dataset is tokenised up front, so 0 is the right default), adds each row's index (for the
        # reference cache) and sizes validation batches to the data-parallel size.
        config = self.config
        loader_args = {"collate_fn": SFTTensorCollator(config.data.pad_mode), "drop_last": True}
        loader_args["num_workers"] = int(config.data.get("num_workers", 0))
        self.collate_fn = loader_args["collate_fn"]
        self.global_batch_size = self.train_batch_size_per_dp = config.data.train_batch_size
        self.train_sampler = DistributedSampler(
            self.train_dataset, shuffle=True, num_replicas=1, rank=0, drop_last=True, seed=config.trainer.seed
        )
        self.train_dataloader = StatefulDataLoader(
            WithRowIndex(self.train_dataset), self.global_batch_size, sampler=self.train_sampler, **loader_args
        )
        self._fresh_loader_state = self.train_dataloader.state_dict()
        self.val_dataloader = None
        if self.val_dataset:
            dp_size = world_size(config)
            val_batch = config.data.get("val_batch_size") or self.global_batch_size
            val_batch = max(dp_size, min(val_batch, len(self.val_dataset)) // dp_size * dp_size)
            sampler = DistributedSampler(self.val_dataset, shuffle=False, num_replicas=1, rank=0)
            self.val_dataloader = StatefulDataLoader(self.val_dataset, val_batch, sampler=sampler, **loader_args)

        self.steps_per_epoch = len(self.train_dataloader)
        self.total_training_steps = config.trainer.total_training_steps
        if self.total_training_steps is None:
            self.total_training_steps = self.steps_per_epoch * config.trainer.total_epochs
        self.optimizer_config.total_training_steps = self.total_training_steps
        every_epoch = {"after_each_epoch": self.steps_per_epoch}
        self.save_freq = every_epoch.get(config.trainer.save_freq, config.trainer.save_freq)
        self.test_freq = every_epoch.get(config.trainer.test_freq, config.trainer.test_freq)

    def _reference_log_probs(self) -> reference.ReferenceLogProbs:
        """The initial model's log-probs of every training row: stored for this model and data, or one
        forward-only pass now (the workers hold the initial weights)."""
        dataset, dp = self.train_dataset, self.dp_size
        model_path = self.model_config.local_path or self.config.model.path
        identity = reference.reference_identity(self.config, model_path, dataset)

        def log_probs_of(indices: list[int]) -> list[torch.Tensor]:
            padded = indices + [indices[0]] * (-len(indices) % dp)  # every rank gets rows
            batch = tu.get_tensordict(self.collate_fn([dataset[i] for i in padded]), self.batch_meta)
            tu.assign_non_tensor(batch, compute_loss=False, calculate_entropy=False)
            output = self.training_client.infer_batch(batch).get()
            return [lp.detach().float() for lp in tu.get(output, "log_probs").unbind()[: len(indices)]]

        self._use_loss("metrics")
        chunk = max(dp, int(self.config.data.train_batch_size) // dp * dp)
        result, self.reference_pass_time_s = reference.load_or_compute(
            self.config.trainer.default_local_dir, identity, len(dataset), chunk, log_probs_of
        )
        return result

    # --- one PSFT step --------------------------------------------------------------------------

    def train_step(self, batch, step: int) -> dict[str, float]:
        """Snapshot + k mini-batch updates (x epochs) on one global batch; returns the step's metrics."""
        row_ids = batch["row_index"].values().tolist() if "row_index" in batch.keys() else None
        batch = batch.exclude("row_index")
        if self.reference is not None and row_ids is None:
            raise ValueError("this run needs reference log-probs, but the batch has no row_index (WithRowIndex)")
        seqlens = self._get_batch_seqlens(batch).tolist()
        masks = [shifted_loss_mask(m) for m in batch["loss_mask"].unbind()]
        plan = plan_step(self.config.psft, len(seqlens), step, int(self.config.trainer.seed), self.fused_kernels)

        start = time.perf_counter()
        forward = self._forward_pass(batch, plan.pass_rows, plan.token_metrics) if plan.pass_rows else {}
        pass_time = time.perf_counter() - start
        snapshot = forward.get("log_probs", {}) if plan.snapshot else {}

        self._use_loss(plan.mode)
        train_meta = engine.train_meta(self.config, self.batch_meta["pad_token_id"])
        metrics = StepMetrics(plan)
        for update, indices in enumerate(plan.schedule):
            if self.config.trainer.balance_batch:
                indices = engine.balanced_order(indices, seqlens, self.dp_size)
            rows = indices.tolist()
            mini_batch = tu.index_select_tensor_dict(batch, indices)
            if plan.gets_snapshot_log_probs(update):
                mini_batch["old_log_probs"] = torch.nested.as_nested_tensor(
                    [snapshot[i] for i in rows], layout=torch.jagged
                )
            if self.reference is not None:
                mini_batch["ref_log_probs"] = self.reference.rows([row_ids[i] for i in rows])
                if plan.initial_snapshot:
                    mini_batch["old_log_probs"] = mini_batch["ref_log_probs"]
            tu.assign_non_tensor(
                mini_batch,
                **{**train_meta, **engine.probe_meta(plan.probes(update), self.fused_kernels)},
                batch_num_sequences=sum(int(masks[i].any()) for i in rows),
                update_lr_scheduler=update == len(plan.schedule) - 1,
                global_token_num=NonTensorData([seqlens[i] for i in rows]),
            )
            worker_metrics = tu.get(self.training_client.train_batch(mini_batch).get(), "metrics")
            self.guard.after_update(step, update, worker_metrics)
            metrics.add(update, worker_metrics)

        result = metrics.finish(forward, masks)
        if self.clipped_log is not None:
            self.clipped_log.write(step, metrics.clipped)
        result["train/global_tokens"] = float(sum(seqlens))
        result["perf/snapshot_time_s"] = pass_time if plan.pass_rows else 0.0
        result["perf/snapshot_rows"] = len(snapshot)
        result["perf/forward_pass_rows"] = len(plan.pass_rows)
        return result

    def _forward_pass(self, batch, rows: list[int], token_metrics: bool) -> dict[str, dict[int, torch.Tensor]]:
        """Forward-only pass of the current weights (the step's snapshot) over ``rows``: per-row
        log-probs and, with ``token_metrics``, per-token entropy and argmax hits (no grad)."""
        sub = tu.index_select_tensor_dict(batch, torch.tensor(rows))
        # Only the base keys: the worker fills in the engine's inference micro-batch settings.
        probe = token_metrics and not self.fused_kernels
        calculate_entropy = token_metrics and self.fused_kernels
        tu.assign_non_tensor(
            sub, compute_loss=probe, calculate_entropy=calculate_entropy, **engine.logits_hook_meta(probe)
        )
        if probe:
            self._use_loss("metrics")
        output = self.training_client.infer_batch(sub).get()
        names = {"log_probs": "log_probs", "probe_entropy": "entropy", "entropy": "entropy", "argmax_hit": "token_acc"}
        return {
            name: {r: v.detach().float() for r, v in zip(rows, tu.get(output, key).unbind(), strict=True)}
            for key, name in names.items()
            if key in output.keys()
        }

    def _use_loss(self, mode: str) -> None:
        if mode != self._active_loss_mode:
            self.training_client.set_loss_fn(loss_fn=self.loss_fns[mode])
            self._active_loss_mode = mode

    # --- validation ---------------------------------------------------------------------------

    def validate(self) -> dict[str, float]:
        """Teacher-forced NLL, entropy and token accuracy of the demonstrations of the val set."""
        meta = {**self.batch_meta, **engine.probe_meta(True, self.fused_kernels)}
        meta["calculate_entropy"] = self.fused_kernels  # forward-only: no graph to keep
        self._use_loss("metrics")
        outputs = []
        for val_data in self.val_dataloader:
            batch = tu.get_tensordict(tensor_dict=val_data, non_tensor_dict=meta)
            outputs.append(tu.get(self.training_client.infer_batch(batch).get(), "metrics"))
        return validation_metrics(outputs)

    # --- the loop -----------------------------------------------------------------------------

    def fit(self) -> dict[str, float] | None:
        """Train to the configured end; stop early only through a RunStopped exception (see exit_codes)."""
        with self.guard.worker_failures(self.training_client):
            return self._train_loop()

    def _train_loop(self) -> dict[str, float] | None:
        global_step = self.resume_global_step
        self.guard.begin(
            global_step, save=lambda step: self.ckpt_handler.save_checkpoint(step=step), save_freq=self.save_freq
        )
        if global_step and global_step % self.steps_per_epoch == 0:
            # A checkpoint on the last step of an epoch holds the loader mid-way through its final
            # batch; restored, it would yield nothing for the next epoch and skip to the one after.
            # The next epoch starts from scratch anyway.
            self.train_dataloader.load_state_dict(self._fresh_loader_state)
        tracking = make_tracking(self.config, global_step)
        self.clipped_log = open_clipped_token_log(self.config, global_step, self.model_config.tokenizer)
        last_val = None
        start_epoch = global_step // self.steps_per_epoch
        total_epochs = max(self.config.trainer.total_epochs, -(-self.total_training_steps // self.steps_per_epoch))
        for epoch in range(start_epoch, total_epochs):
            self.train_sampler.set_epoch(epoch=epoch)
            initial = global_step % self.steps_per_epoch if epoch == start_epoch else 0
            progress = tqdm(
                self.train_dataloader,
                initial=initial,
                total=self.steps_per_epoch,
                desc=f"Epoch {epoch + 1}/{total_epochs}",
            )
            for data in progress:
                global_step += 1
                self.guard.current_step = global_step
                start = time.perf_counter()
                metrics = self.train_step(
                    tu.get_tensordict(tensor_dict=data, non_tensor_dict=self.batch_meta), global_step
                )
                self.guard.after_step(global_step, metrics, self.training_client)
                step_time = time.perf_counter() - start
                metrics["perf/step_time_s"] = step_time
                metrics["perf/tokens_per_s"] = metrics["train/global_tokens"] / step_time
                metrics["train/epoch"] = epoch + 1
                tracking.log(data=metrics, step=global_step)

                is_last_step = global_step >= self.total_training_steps
                wants_val = is_last_step or (self.test_freq > 0 and global_step % self.test_freq == 0)
                if self.val_dataloader is not None and wants_val and not self.guard.stop_requested:
                    last_val = self.validate()
                    tracking.log(data=last_val, step=global_step)
                self.guard.end_of_step(global_step, is_last_step)
                if is_last_step:
                    progress.close()
                    print(f"Training finished at step {global_step}; last validation: {last_val}")
                    return last_val
        return last_val


__all__ = ["PSFTTrainer", "StepPlan"]
