"""The rest of arXiv v2's out-of-domain suite: ARC-Challenge, TruthfulQA (mc1), IFEval, SuperGPQA and
HEAD-QA, each row in its Hub layout -> a test :class:`Example`.

The multiple-choice sets are written like GPQA-Diamond: the question, the options as ``A) ...`` lines and
"Answer with the letter of the correct option (A-D).", the options shuffled with a seed derived from the
question text (:func:`prepare.hub.shuffled_options`), and the gold is the letter, graded as a letter.
TruthfulQA's mc1 always lists the correct answer first, so there the shuffle is what makes the letter
carry information; the others are shuffled the same way so every set follows one rule.

IFEval has no single answer: its gold is the row's instruction list and their arguments, stored as JSON in
``reward_model.ground_truth`` by the IFEval grader's own encoder (:mod:`evaluation.ifeval`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prepare.hub import LETTERS, Benchmark, _text, choice_prompt, shuffled_options
from prepare.records import DataError, Example

IFEVAL_DATA_SOURCE = "ifeval"


def _plain(value: Any) -> Any:
    """numpy arrays (parquet read by pandas) -> lists; everything else as is."""
    return value.tolist() if hasattr(value, "tolist") else value


def _unusable(bench: Benchmark, number: int, key: str, reason: str) -> Example:
    return Example(bench.repo, number, None, None, None, bench.name, keys={"prompt": key}, invalid=(key, reason))


def _choice(bench: Benchmark, number: int, question: str, options: list[str], correct: int, keys: dict) -> Example:
    """The shuffled, lettered prompt and its gold letter."""
    wrong = [o for i, o in enumerate(options) if i != correct]
    shuffled, letter = shuffled_options(options[correct], wrong, question)
    return Example(bench.repo, number, choice_prompt(question, shuffled), None, letter, bench.name, keys=keys)


def _options(bench: Benchmark, number: int, key: str, value: Any, least: int = 2) -> list[str] | Example:
    """A list of non-empty option texts, or the row reported as unusable under ``key``."""
    value = _plain(value)
    if not isinstance(value, list) or not least <= len(value) <= len(LETTERS):
        return _unusable(bench, number, key, f"expected a list of {least}-{len(LETTERS)} options, got {value!r:.200}")
    texts = [_text(o) for o in value]
    if None in texts:
        return _unusable(bench, number, key, f"option {texts.index(None) + 1} is empty or not a string")
    return texts


def arc(bench: Benchmark, row: dict[str, Any], number: int) -> Example:
    """allenai/ai2_arc: ``question``, ``choices`` {``text``: [...], ``label``: [...]}, ``answerKey``.

    Labels are letters on most rows and digits ("1".."4") on some; the answer key is one of the labels."""
    keys = {"prompt": "question", "answer": "answerKey"}
    question = _text(row.get("question"))
    if question is None:
        return _unusable(bench, number, "question", "question is missing or empty")
    choices = row.get("choices")
    if not isinstance(choices, dict):
        return _unusable(bench, number, "choices", f"expected {{'text': [...], 'label': [...]}}, got {choices!r:.200}")
    texts = _options(bench, number, "choices.text", choices.get("text"))
    if isinstance(texts, Example):
        return texts
    labels = [str(x).strip() for x in (_plain(choices.get("label")) or [])]
    if len(labels) != len(texts):
        return _unusable(bench, number, "choices.label", f"{len(labels)} labels for {len(texts)} options")
    answer = str(row.get("answerKey") or "").strip()
    if answer not in labels:
        return _unusable(bench, number, "answerKey", f"{answer!r} is not one of the labels {labels}")
    return _choice(bench, number, question, texts, labels.index(answer), keys)


def truthfulqa(bench: Benchmark, row: dict[str, Any], number: int) -> Example:
    """truthfulqa/truthful_qa [multiple_choice]: ``question``, ``mc1_targets`` {``choices``, ``labels``}
    with exactly one label 1 (the single best answer; mc2's several true answers are not used)."""
    keys = {"prompt": "question", "answer": "mc1_targets"}
    question = _text(row.get("question"))
    if question is None:
        return _unusable(bench, number, "question", "question is missing or empty")
    targets = row.get("mc1_targets")
    if not isinstance(targets, dict):
        return _unusable(bench, number, "mc1_targets", f"expected {{'choices', 'labels'}}, got {targets!r:.200}")
    texts = _options(bench, number, "mc1_targets.choices", targets.get("choices"))
    if isinstance(texts, Example):
        return texts
    labels = list(_plain(targets.get("labels")) or [])
    if len(labels) != len(texts) or sorted(labels) != [0] * (len(texts) - 1) + [1]:
        return _unusable(bench, number, "mc1_targets.labels", f"expected one 1 among {len(texts)} labels, got {labels}")
    return _choice(bench, number, question, texts, labels.index(1), keys)


def supergpqa(bench: Benchmark, row: dict[str, Any], number: int) -> Example:
    """m-a-p/SuperGPQA: ``question``, ``options`` (4-10), ``answer`` (the option's text), ``answer_letter``."""
    keys = {"prompt": "question", "answer": "answer_letter"}
    question = _text(row.get("question"))
    if question is None:
        return _unusable(bench, number, "question", "question is missing or empty")
    texts = _options(bench, number, "options", row.get("options"))
    if isinstance(texts, Example):
        return texts
    letter = str(row.get("answer_letter") or "").strip()
    if len(letter) != 1 or letter not in LETTERS[: len(texts)]:
        return _unusable(bench, number, "answer_letter", f"{letter!r} names none of the {len(texts)} options")
    index = LETTERS.index(letter)
    answer = _text(row.get("answer"))
    if answer is not None and answer != texts[index]:
        return _unusable(bench, number, "answer", f"{answer!r:.80} is not option {letter} ({texts[index]!r:.80})")
    return _choice(bench, number, question, texts, index, keys)


def headqa(bench: Benchmark, row: dict[str, Any], number: int) -> Example:
    """HEAD-QA: ``qtext``, ``answers`` [{``aid``, ``atext``}] (aid from 1), ``ra`` (the right aid)."""
    keys = {"prompt": "qtext", "answer": "ra"}
    question = _text(row.get("qtext"))
    if question is None:
        return _unusable(bench, number, "qtext", "question is missing or empty")
    answers = _plain(row.get("answers"))
    if isinstance(answers, dict) and isinstance(answers.get("aid"), list):
        # the same column as a struct of lists (how datasets stores a Sequence of structs): pair them up
        answers = [{"aid": a, "atext": t} for a, t in zip(answers["aid"], _plain(answers.get("atext")) or [])]
    if not isinstance(answers, list) or not all(isinstance(a, dict) for a in answers):
        return _unusable(bench, number, "answers", f"expected a list of {{'aid', 'atext'}}, got {answers!r:.200}")
    answers = sorted(answers, key=lambda a: int(a.get("aid") or 0))
    texts = _options(bench, number, "answers.atext", [a.get("atext") for a in answers])
    if isinstance(texts, Example):
        return texts
    aids = [a.get("aid") for a in answers]
    right = row.get("ra")
    if right not in aids:
        return _unusable(bench, number, "ra", f"{right!r} is not one of the answer ids {aids}")
    return _choice(bench, number, question, texts, aids.index(right), keys)


def ifeval_gold(row: dict[str, Any]) -> str:
    """The IFEval row's ``reward_model.ground_truth``: its ``instruction_id_list`` and ``kwargs`` in the
    layout of :func:`evaluation.ifeval.ifeval_ground_truth` (the grader's own encoder, which drops the
    Hub parquet's null arguments, so Google's JSONL and the Hub's parquet give the same text)."""
    from evaluation.ifeval import ifeval_ground_truth

    kwargs = _plain(row["kwargs"])
    if isinstance(kwargs, list):  # argument names in one order whatever the file's column order
        kwargs = [dict(sorted(a.items())) if isinstance(a, dict) else a for a in kwargs]
    return ifeval_ground_truth(_plain(row["instruction_id_list"]), kwargs)


def ifeval(bench: Benchmark, row: dict[str, Any], number: int) -> Example:
    """google/IFEval: ``key``, ``prompt``, ``instruction_id_list``, ``kwargs`` (one object per instruction).
    The prompt is the user turn as released (no system prompt, no added instruction)."""
    keys = {"prompt": "prompt", "answer": "instruction_id_list"}
    prompt = row.get("prompt")
    ids = _plain(row.get("instruction_id_list"))
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i.strip() for i in ids):
        return _unusable(bench, number, "instruction_id_list", f"expected a non-empty list of ids, got {ids!r:.200}")
    kwargs = _plain(row.get("kwargs"))
    if (
        not isinstance(kwargs, list)
        or len(kwargs) != len(ids)
        or not all(a is None or isinstance(a, dict) for a in kwargs)
    ):
        return _unusable(bench, number, "kwargs", f"expected {len(ids)} argument objects (one per instruction)")
    if not isinstance(prompt, str):  # validate() reports a missing or empty prompt under 'prompt'
        return Example(bench.repo, number, prompt, None, None, IFEVAL_DATA_SOURCE, keys=keys)
    try:
        answer = ifeval_gold(row)
    except DataError as exc:  # e.g. an id without its 'group:' part
        return _unusable(bench, number, "instruction_id_list", str(exc))
    return Example(bench.repo, number, prompt, None, answer, IFEVAL_DATA_SOURCE, keys=keys)


CONVERTERS: dict[str, Callable[[Benchmark, dict[str, Any], int], Example]] = {
    "arc_challenge": arc,
    "truthfulqa": truthfulqa,
    "ifeval": ifeval,
    "supergpqa": supergpqa,
    "headqa": headqa,
}
