"""What the generation backends share: a job (one problem, the sample slots still missing), the
sampling settings, and a finished completion."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from evaluation.data import Problem


@dataclass(frozen=True)
class Sampling:
    """Sampling settings, recorded with the results and identical for both backends."""

    temperature: float
    top_p: float
    max_tokens: int
    seed: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


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
