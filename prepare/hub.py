"""Hugging Face Hub sources: the paper's training set and its benchmark test sets.

The network is only touched inside :func:`load_hub_rows`, after :func:`ensure_hub_reachable` has checked,
within seconds, that the Hub answers at all: ``datasets`` otherwise retries for minutes before failing
offline. Row conversion is kept in pure functions (:func:`openr1_example`, :func:`benchmark_example`) so it
is tested on small local samples in the Hub's column layout.
"""

from __future__ import annotations

import os
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from prepare.records import Example, SourceUnavailable
from recipe.psft.rows import DataError

OPENR1_REPO = "Elliott/Openr1-Math-46k-8192"
# The original PSFT script labelled these rows "lighteval/MATH"; kept, so verl's default reward routing
# (verl.utils.reward_score.default_compute_score) still recognises them.
OPENR1_DATA_SOURCE = "lighteval/MATH"
OFFLINE_HINT = (
    "Offline alternatives: `python prepare_data.py --source builtin` (a small math set built from reasoning-gym, "
    "no network) or `python prepare_data.py --source local --input FILE` (your own JSONL/JSON/parquet/CSV)."
)
PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Benchmark:
    """A Hub test set: where it lives and which columns hold the problem and the answer."""

    name: str
    repo: str
    split: str
    problem_keys: tuple[str, ...]
    answer_keys: tuple[str, ...] = ("answer",)
    config: str | None = None


# One row per problem; evaluation samples n completions per problem itself. Ids chosen for being the
# widely used copies with a plain problem/answer layout (checked against their dataset cards).
BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("aime24", "HuggingFaceH4/aime_2024", "train", ("problem",)),  # 30 problems
        Benchmark("aime25", "math-ai/aime25", "test", ("problem",)),  # 30 problems
        Benchmark("amc", "AI-MO/aimo-validation-amc", "train", ("problem",)),  # 83 problems (AMC 2022-23)
        Benchmark("math500", "HuggingFaceH4/MATH-500", "test", ("problem",)),  # 500 problems
        Benchmark("minerva", "math-ai/minervamath", "test", ("question", "problem")),  # 272 problems
    )
}


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _offline_env() -> str | None:
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return name
    return None


def ensure_hub_reachable(what: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise SourceUnavailable within ~``timeout_s`` when the Hub cannot be reached.

    The probe runs in a daemon thread because DNS resolution ignores socket timeouts; urllib honours the
    usual proxy variables. Any HTTP answer (even 401/404) counts as reachable: the load itself reports those.
    """
    url = hub_endpoint() + "/api/datasets/" + OPENR1_REPO
    result: dict[str, BaseException | None] = {}

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout_s).close()
            result["error"] = None
        except urllib.error.HTTPError:
            result["error"] = None
        except BaseException as exc:  # any failure means "not reachable"
            result["error"] = exc

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s + 1.0)
    error = result.get("error", TimeoutError(f"no answer within {timeout_s:.0f} s"))
    if error is not None:
        raise SourceUnavailable(
            f"{what} needs the Hugging Face Hub ({hub_endpoint()}), which cannot be reached: {error}. "
            f"(A copy already in the datasets cache is used with HF_HUB_OFFLINE=1.) {OFFLINE_HINT}"
        )


def load_hub_rows(repo: str, split: str, config: str | None = None) -> list[dict[str, Any]]:
    """Download one split with ``datasets`` (cached under HF_HOME) and return its rows as dicts.

    With HF_HUB_OFFLINE (or HF_DATASETS_OFFLINE) set there is no probe: ``datasets`` serves a cached copy or
    fails at once, and that failure is reported the same way.
    """
    offline = _offline_env()
    if not offline:
        ensure_hub_reachable(repo)
    try:
        import datasets

        dataset = datasets.load_dataset(repo, config, split=split)
    except Exception as exc:  # offline without a cache, network drops mid-download, gated repos, renamed splits
        why = f"{offline} is set and the datasets cache has no usable copy ({exc})" if offline else str(exc)
        raise SourceUnavailable(f"could not load {repo} (split {split!r}) from the Hub: {why}. {OFFLINE_HINT}") from exc
    return [dict(row) for row in dataset]


def _user_content(prompt: Any) -> Any:
    """The problem text from the Hub's ``prompt``: the original took ``prompt[1]['content']`` (after the
    system turn); taking the last user turn gives the same and survives rows without a system turn."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        users = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        if users:
            return users[-1].get("content")
    return None


def openr1_example(row: dict[str, Any], number: int, origin: str = OPENR1_REPO) -> Example:
    """One OpenR1-Math-46k-8192 row -> Example, as the original PSFT ``prepare_data.py`` converted it.

    Layout (dataset card / LUFFY's release): ``data_source``, ``prompt`` (system + user messages),
    ``target`` (list of assistant messages; the demonstration is ``target[0]['content']``), ``ability``,
    ``reward_model`` (``ground_truth``, ``style``), ``extra_info``. The original replaced the system turn with
    the step-by-step/\\boxed{} prompt, which the caller does via ``system_prompt``.
    """
    keys = {"prompt": "prompt", "demonstration": "target[0].content", "answer": "reward_model.ground_truth"}
    if "prompt" not in row and "problem" in row:
        prompt, keys["prompt"] = row["problem"], "problem"
    else:
        prompt = _user_content(row.get("prompt"))
    target = row.get("target")
    demonstration = None
    if isinstance(target, list) and target and isinstance(target[0], dict):
        demonstration = target[0].get("content")
    elif isinstance(target, str):
        demonstration = target
    reward = row.get("reward_model")
    answer = reward.get("ground_truth") if isinstance(reward, dict) else row.get("answer")
    return Example(origin, number, prompt, demonstration, answer, OPENR1_DATA_SOURCE, keys=keys)


def check_layout(rows: list[dict[str, Any]], origin: str, alternatives: list[tuple[str, ...]]) -> None:
    """Fail once, naming the columns present, when the Hub's layout lacks a needed column (each entry of
    ``alternatives`` is a group of which one key must be present) rather than N identical row errors."""
    columns = list(rows[0]) if rows else []
    missing = [" or ".join(group) for group in alternatives if not any(k in columns for k in group)]
    if missing:
        raise DataError(f"{origin}: column(s) {missing} not found; columns present: {columns}")


def benchmark_example(bench: Benchmark, row: dict[str, Any], number: int) -> Example:
    """One benchmark row -> a test Example (no demonstration; the answer becomes the grader's gold)."""
    problem_key = next((k for k in bench.problem_keys if k in row), bench.problem_keys[0])
    answer_key = next((k for k in bench.answer_keys if k in row), bench.answer_keys[0])
    return Example(
        f"{bench.repo}",
        number,
        row.get(problem_key),
        None,
        row.get(answer_key),
        bench.name,
        keys={"prompt": problem_key, "answer": answer_key},
    )
