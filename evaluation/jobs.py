"""What the generation backends share: a job (one problem, the sample slots still missing), the
sampling settings, a finished completion, the backend interface, and the planning of a run's jobs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

from evaluation.data import Problem
from evaluation.store import sample_key


@dataclass(frozen=True)
class Sampling:
    """The whole sampling set, sent with every request and recorded with the results.

    Every field has a neutral default and is always sent: a server fills what a request leaves out from
    the model's ``generation_config.json`` (Qwen2.5-Instruct: top_k 20, repetition_penalty 1.05), so
    leaving any out would make the two backends, and two servers, sample differently.
    """

    temperature: float
    top_p: float
    max_tokens: int
    seed: int | None = None
    top_k: int = -1  # -1: no top-k cut (accepted by every vLLM version; newer ones also take 0)
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = field(default_factory=tuple)  # stop strings besides the model's end of turn

    def as_dict(self) -> dict:
        out = asdict(self)
        out["stop"] = list(self.stop)
        return out

    def request_fields(self) -> dict:
        """The OpenAI/vLLM request fields (``n`` and ``seed`` are per job)."""
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "repetition_penalty": self.repetition_penalty,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "max_tokens": self.max_tokens,
            "stop": list(self.stop),
        }


@dataclass
class Job:
    problem: Problem
    sample_indices: list[int]  # which of the problem's n sample slots this job fills

    def seed(self, base: int | None) -> int | None:
        """A per-problem seed derived from the run's seed, so reruns and resumes draw alike."""
        if base is None:
            return None
        return (base * 1_000_003 + abs(hash_id(self.problem.problem_id)) * 1009 + min(self.sample_indices)) % (2**31)


def hash_id(pid: int | str) -> int:
    # Stable across processes (Python's str hash is salted per process).
    if isinstance(pid, int):
        return pid
    return int.from_bytes(str(pid).encode()[:8].ljust(8, b"\0"), "little")


@dataclass
class Completion:
    text: str
    completion_tokens: int | None
    finish_reason: str | None


# on_done(job, completions, error): exactly one of completions / error is set.
OnDone = Callable[[Job, "list[Completion] | None", "str | None"], None]


class Backend(Protocol):
    """A generation backend: :class:`evaluation.vllm_local.InProcessEngine` (``--backend vllm``) or
    :class:`evaluation.serve_client.ServeBackend` (``--backend serve``)."""

    def run(self, jobs: Sequence[Job], sampling: Sampling, on_done: OnDone) -> None:
        """Generate every job's missing samples and hand each job to ``on_done`` once, as soon as it
        finishes, so it is written before the next; Ctrl-C raises KeyboardInterrupt."""

    def shutdown(self) -> None:
        """Release the engine or connections."""


def plan_jobs(problems: Sequence[Problem], n: int, done: set[tuple[str, int]]) -> list[Job]:
    """One job per problem that still misses some of its ``n`` samples (``done``: keys of finished ones)."""
    jobs = []
    for prob in problems:
        missing = [i for i in range(n) if sample_key(prob.problem_id, i) not in done]
        if missing:
            jobs.append(Job(prob, missing))
    return jobs
