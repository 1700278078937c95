"""The ``vllm`` backend: vLLM in this process, no server (the simple path on one machine).

Jobs are queued with ``LLM.enqueue_chat`` (the same chat rendering as ``LLM.chat`` and vLLM's server)
and the engine is stepped here, so each problem is handed to ``on_done`` as soon as its n samples
finish, and written before the next one: an interrupted run keeps everything that finished.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from evaluation.jobs import Completion, Job, Sampling


def cpu_only() -> bool:
    try:
        import torch

        return not torch.cuda.is_available()
    except ImportError:
        return True


def engine_kwargs(model: str, extra: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM``: the user's, plus CPU defaults where no GPU is present."""
    # generation_config="vllm": the engine's defaults never come from the model's generation_config.json
    # (requests pin every parameter anyway; this keeps both backends configured alike).
    kwargs: dict[str, Any] = {"model": model, "generation_config": "vllm"}
    if cpu_only():
        # CUDA graphs and torch.compile do not apply on vLLM's CPU backend.
        kwargs["enforce_eager"] = True
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    kwargs.update(extra)
    return kwargs


class InProcessEngine:
    """The ``vllm`` backend (:class:`evaluation.jobs.Backend`): a vLLM ``LLM`` kept alive across calls
    (benchmarks reuse one engine for several passes)."""

    def __init__(self, model: str, extra_engine_args: dict[str, Any] | None = None):
        from vllm import LLM

        self.llm = LLM(**engine_kwargs(model, extra_engine_args or {}))

    def run(
        self,
        jobs: Sequence[Job],
        sampling: Sampling,
        on_done: Callable[[Job, list[Completion] | None, str | None], None],
    ) -> None:
        from vllm import SamplingParams

        if not jobs:
            return
        params = [
            SamplingParams(n=len(job.sample_indices), seed=job.seed(sampling.seed), **sampling.request_fields())
            for job in jobs
        ]
        request_ids = self.llm.enqueue_chat([job.problem.messages for job in jobs], params, use_tqdm=False)
        # enqueue_chat returns internal ids ("<external>-<suffix>"); finished outputs carry the external one.
        by_id = {rid.rsplit("-", 1)[0]: job for rid, job in zip(request_ids, jobs)}
        engine = self.llm.llm_engine
        try:
            while engine.has_unfinished_requests():
                for out in engine.step():
                    if not out.finished:
                        continue
                    job = by_id.pop(out.request_id, None) or by_id.pop(out.request_id.rsplit("-", 1)[0])
                    outputs = sorted(out.outputs, key=lambda o: o.index)
                    completions = [
                        Completion(text=o.text, completion_tokens=len(o.token_ids), finish_reason=o.finish_reason)
                        for o in outputs
                    ]
                    on_done(job, completions, None)
        except BaseException:
            # Ctrl-C or a failure: drop what is still queued so the engine can be reused or shut down.
            if by_id:
                engine.abort_request([rid for rid in request_ids if rid.rsplit("-", 1)[0] in by_id])
            raise

    def shutdown(self) -> None:
        llm, self.llm = self.llm, None
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            if engine is not None and hasattr(engine, "engine_core"):
                engine.engine_core.shutdown()
        del llm
