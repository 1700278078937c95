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
    """A Hub test set: where it lives, which columns hold the problem and the answer, and how it is graded.

    ``kind`` is "math" (a free-form answer, graded by math-verify) or "choice" (multiple choice: the prompt
    lists lettered options and the gold is the letter). ``domain`` is "in" (math, the training domain) or
    "out" (out-of-domain generalisation). ``problems`` is the size of the published set (documentation).
    """

    name: str
    repo: str
    split: str
    problem_keys: tuple[str, ...]
    answer_keys: tuple[str, ...] = ("answer",)
    config: str | None = None
    kind: str = "math"
    domain: str = "in"
    problems: int = 0
    extra_keys: tuple[str, ...] = ()  # further columns the conversion needs (e.g. the wrong options)
    # Where the Hub copy is not the repository's main branch at its root (HEAD-QA: the Hub's parquet
    # conversion, one folder per language), and columns dropped before the rows are read (HEAD-QA's
    # images, which are downloaded with the parquet file but never decoded).
    revision: str | None = None
    data_dir: str | None = None
    drop_columns: tuple[str, ...] = ()
    # "paper": the paper's step-by-step \boxed{} system prompt (or --system-prompt); None: no system turn
    # unless --system-prompt is given (IFEval: the instruction is the whole prompt, as in Google's release).
    system_prompt: str | None = "paper"

    @property
    def source(self) -> str:
        where = f"{self.repo}" + (f"@{self.revision}" if self.revision else "")
        where += f" [{self.config}]" if self.config else ""
        where += f" [{self.data_dir}/]" if self.data_dir else ""
        return where + f" ({self.split})"

    def load_kwargs(self) -> dict[str, str]:
        """Further ``datasets.load_dataset`` arguments (empty for most sets)."""
        return {k: v for k, v in (("revision", self.revision), ("data_dir", self.data_dir)) if v}

    def required_columns(self) -> list[tuple[str, ...]]:
        return [self.problem_keys, self.answer_keys] + [(k,) for k in self.extra_keys]


GPQA_WRONG = ("Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
# One row per problem; evaluation samples n completions per problem itself. Ids chosen for being the copies
# the PSFT paper's tables refer to, with their column layouts checked against the dataset cards.
BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        # in-domain (math)
        Benchmark("aime24", "HuggingFaceH4/aime_2024", "train", ("problem",), problems=30),
        Benchmark("aime25", "math-ai/aime25", "test", ("problem",), problems=30),
        # AMC 2023, the 40 problems the original evaluated (AI-MO/aimo-validation-amc has 83, AMC 2022-23).
        Benchmark("amc23", "math-ai/amc23", "test", ("question", "problem"), problems=40),
        Benchmark("math500", "HuggingFaceH4/MATH-500", "test", ("problem",), problems=500),
        Benchmark("minerva", "math-ai/minervamath", "test", ("question", "problem"), problems=272),
        # OlympiadBench's English, text-only, open-ended maths competition subset: 675 problems.
        Benchmark(
            "olympiadbench",
            "Hothan/OlympiadBench",
            "train",
            ("question",),
            ("final_answer",),
            config="OE_TO_maths_en_COMP",
            problems=675,
        ),
        # out-of-domain (multiple choice)
        Benchmark(
            "gpqa_diamond",
            "Idavidrein/gpqa",
            "train",
            ("Question",),
            ("Correct Answer",),
            config="gpqa_diamond",
            kind="choice",
            domain="out",
            problems=198,
            extra_keys=GPQA_WRONG,
        ),
        # The rest of arXiv v2's out-of-domain suite, in the paper's order (prepare/ood.py converts them).
        Benchmark(
            "arc_challenge",
            "allenai/ai2_arc",
            "test",
            ("question",),
            ("answerKey",),
            config="ARC-Challenge",
            kind="choice",
            domain="out",
            problems=1172,
            extra_keys=("choices",),
        ),
        Benchmark(
            "truthfulqa",
            "truthfulqa/truthful_qa",
            "validation",
            ("question",),
            ("mc1_targets",),
            config="multiple_choice",
            kind="choice",
            domain="out",
            problems=817,
        ),
        Benchmark(
            "ifeval",
            "google/IFEval",
            "train",
            ("prompt",),
            ("instruction_id_list",),
            kind="ifeval",
            domain="out",
            problems=541,
            extra_keys=("kwargs",),
            system_prompt=None,
        ),
        Benchmark(
            "mmlu_pro",
            "TIGER-Lab/MMLU-Pro",
            "test",
            ("question",),
            ("answer",),
            kind="choice",
            domain="out",
            problems=12032,
            extra_keys=("options",),
        ),
        Benchmark(
            "supergpqa",
            "m-a-p/SuperGPQA",
            "train",
            ("question",),
            ("answer_letter",),
            kind="choice",
            domain="out",
            problems=26529,
            extra_keys=("options",),
        ),
        # HEAD-QA (2019), English, test split: the set lm-evaluation-harness's headqa_en and the published
        # HEAD-QA numbers use. The repository holds a loading script, which datasets >= 4 no longer runs,
        # so the Hub's own parquet conversion of it is read (refs/convert/parquet, folder en/).
        Benchmark(
            "headqa",
            "dvilares/head_qa",
            "test",
            ("qtext",),
            ("ra",),
            kind="choice",
            domain="out",
            problems=2742,
            extra_keys=("answers",),
            revision="refs/convert/parquet",
            data_dir="en",
            drop_columns=("image",),
        ),
    )
}
IN_DOMAIN = tuple(b.name for b in BENCHMARKS.values() if b.domain == "in")
OUT_OF_DOMAIN = tuple(b.name for b in BENCHMARKS.values() if b.domain == "out")
# Option letters. TruthfulQA's mc1 lists up to 13 options, so the letters run past MMLU-Pro's ten.
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MAX_MMLU_PRO_OPTIONS = 10
CHOICE_INSTRUCTION = "Answer with the letter of the correct option ({first}-{last})."


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


def load_hub_rows(
    repo: str,
    split: str,
    config: str | None = None,
    drop_columns: tuple[str, ...] = (),
    **load_kwargs: str,
) -> list[dict[str, Any]]:
    """Download one split with ``datasets`` (cached under HF_HOME) and return its rows as dicts.

    ``load_kwargs`` go to ``datasets.load_dataset`` (``revision``, ``data_dir``); ``drop_columns`` are removed
    before the rows are read, so HEAD-QA's images are never decoded. With HF_HUB_OFFLINE (or
    HF_DATASETS_OFFLINE) set there is no probe: ``datasets`` serves a cached copy or fails at once, and that
    failure is reported the same way.
    """
    offline = _offline_env()
    if not offline:
        ensure_hub_reachable(repo)
    try:
        import datasets

        dataset = datasets.load_dataset(repo, config, split=split, **load_kwargs)
        dataset = dataset.remove_columns([c for c in drop_columns if c in dataset.column_names])
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


def choice_prompt(question: str, options: list[str]) -> str:
    """The question, its options as "A) ...", one per line, and what to answer with."""
    lines = [f"{LETTERS[i]}) {str(o).strip()}" for i, o in enumerate(options)]
    instruction = CHOICE_INSTRUCTION.format(first=LETTERS[0], last=LETTERS[len(options) - 1])
    return f"{question.strip()}\n\n" + "\n".join(lines) + f"\n\n{instruction}"


def shuffled_options(correct: str, wrong: list[str], key: str) -> tuple[list[str], str]:
    """(options, gold letter) with the correct option placed by a shuffle seeded by ``key`` (the question
    text), so every build, in any row order and with any --seed, gives the same file."""
    import hashlib
    import random

    options = [correct] + list(wrong)
    order = list(range(len(options)))
    random.Random(hashlib.sha256(key.encode("utf-8")).hexdigest()).shuffle(order)
    return [options[i] for i in order], LETTERS[order.index(0)]


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _gpqa(bench: Benchmark, row: dict[str, Any], number: int) -> Example:
    """GPQA stores the correct answer first in its own column: the options are shuffled reproducibly."""
    question = _text(row.get("Question"))
    correct = _text(row.get("Correct Answer"))
    wrong = [_text(row.get(k)) for k in GPQA_WRONG]
    keys = {"prompt": "Question", "answer": "Correct Answer"}
    for key, value in (("Question", question), ("Correct Answer", correct), *zip(GPQA_WRONG, wrong)):
        if value is None:
            # Validation reports the row as unusable under the Hub's own column name.
            return Example(bench.repo, number, None, None, None, bench.name, keys={"prompt": key, "answer": key})
    options, letter = shuffled_options(correct, wrong, question)
    return Example(bench.repo, number, choice_prompt(question, options), None, letter, bench.name, keys=keys)


def _mmlu_pro(bench: Benchmark, row: dict[str, Any], number: int) -> Example:
    """MMLU-Pro's options come in the published order (its authors already placed the answer at random);
    it is kept, so results compare with every published MMLU-Pro number."""
    keys = {"prompt": "question", "answer": "answer"}
    question = _text(row.get("question"))
    options = row.get("options")
    if hasattr(options, "tolist"):
        options = options.tolist()
    answer = _text(row.get("answer"))
    if not isinstance(options, list) or not 2 <= len(options) <= MAX_MMLU_PRO_OPTIONS:
        keys["prompt"] = "options"
        return Example(bench.repo, number, None, None, answer, bench.name, keys=keys)
    if answer is None or answer not in LETTERS[: len(options)]:
        return Example(bench.repo, number, question, None, None, bench.name, keys=keys)
    index = row.get("answer_index")
    if isinstance(index, int) and LETTERS[index] != answer:
        raise DataError(f"{bench.repo}: row {number}: 'answer' {answer!r} disagrees with 'answer_index' {index}")
    prompt = choice_prompt(question, options) if question else None
    return Example(bench.repo, number, prompt, None, answer, bench.name, keys=keys)


def benchmark_example(bench: Benchmark, row: dict[str, Any], number: int) -> Example:
    """One benchmark row -> a test Example (no demonstration; the answer becomes the grader's gold)."""
    if bench.name == "gpqa_diamond":
        return _gpqa(bench, row, number)
    if bench.name == "mmlu_pro":
        return _mmlu_pro(bench, row, number)
    from prepare import ood  # imported here: ood builds on this module's choice helpers

    if bench.name in ood.CONVERTERS:
        return ood.CONVERTERS[bench.name](bench, row, number)
    problem_key = next((k for k in bench.problem_keys if k in row), bench.problem_keys[0])
    answer_key = next((k for k in bench.answer_keys if k in row), bench.answer_keys[0])
    answer = row.get(answer_key)
    if hasattr(answer, "tolist"):
        answer = answer.tolist()
    if isinstance(answer, list) and len(answer) > 1 and all(isinstance(a, str) for a in answer):
        # OlympiadBench lists each part of a multi-part answer: the gold is the comma-separated tuple.
        answer = ", ".join(a.strip().strip("$").strip() for a in answer)
    return Example(
        f"{bench.repo}",
        number,
        row.get(problem_key),
        None,
        answer,
        bench.name,
        keys={"prompt": problem_key, "answer": answer_key},
    )
