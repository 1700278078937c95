"""An offline math set from reasoning-gym (a PyPI package): for laptops, CI and the quickstart.

* training and in-domain test rows: ``gsm_symbolic`` (GSM8K-style word problems from templates) with the
  worked solution in ``metadata["answer_cot"]`` as the demonstration, rewritten to end with
  "The answer is \\boxed{N}.";
* out-of-domain test rows: ``simple_equations``, ``basic_arithmetic`` and ``leg_counting``, different skills
  with short integer answers.

reasoning-gym's own answers are not trusted: gsm_symbolic templates 2, 3, 4, 24, 49 and 75 produce wrong
arithmetic, some others round mid-solution, and its scorer misreads negative answers. So every
demonstration's equations are re-evaluated, its final number is compared with the answer, and every
out-of-domain answer is recomputed here; rows that fail are dropped and listed in the data card.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from prepare.records import Example
from recipe.psft.rows import DataError, RowProblem

BAD_GSM_TEMPLATES = frozenset({2, 3, 4, 24, 49, 75})
OOD_TASKS = ("simple_equations", "basic_arithmetic", "leg_counting")
GSM_KEY = "metadata.answer_cot"
TEST_SEED_OFFSET = 1_000_003  # test sets come from their own stream: changing --train-size leaves them as is
MAX_ATTEMPTS_FACTOR = 20

_NUMBER = r"\d[\d,]*(?:\.\d+)?"
_FLOAT_NOISE = re.compile(r"\d\.\d*(?:0{6,}|9{6,}|3{6,}|6{6,})\d")
_FINAL = re.compile(r"\n?\s*####\s*(?P<num>-?[\d,]*\.?\d+)\s*$")
# an arithmetic chain "a op b [op c ...] = r" (r may be a fraction or a percentage), ops already ASCII
_EQUATION = re.compile(rf"(?P<lhs>[\d(][\d.,()\s+\-*/]*[\d)])\s*=\s*(?P<rhs>-?{_NUMBER}(?:\s*/\s*\d+)?)(?P<pct>\s*%)?")


def _to_fraction(text: str) -> Fraction | None:
    text = text.replace(",", "").replace(" ", "")
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            return Fraction(num) / Fraction(den)
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def safe_eval(expr: str) -> Fraction | None:
    """Exact value of an arithmetic expression (+ - * / unary minus, numbers, parentheses); None otherwise.

    Parsed with :mod:`ast` and evaluated on Fractions: nothing is executed and 0.1 + 0.2 == 0.3 holds.
    """
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError:
        return None

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return Fraction(str(node.value))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = walk(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Add):
                return left + right
            if isinstance(node.op, ast.Sub):
                return left - right
            if isinstance(node.op, ast.Mult):
                return left * right
            return left / right
        raise ValueError(f"unsupported {type(node).__name__}")

    try:
        return walk(tree)
    except (ValueError, ZeroDivisionError):
        return None


def _asciify(line: str) -> str:
    """Solution text -> ASCII arithmetic: × ÷, 'a x b', '$', and implicit products like 2(35+31)."""
    line = line.replace("×", "*").replace("÷", "/").replace("$", "")
    line = re.sub(r"(?<=\d),(?=\d{3}\b)", "", line)
    line = re.sub(r"(?<=\d)\s+x\s+(?=[\d(])", " * ", line)
    return re.sub(r"(?<=\d)\s*\(", "*(", line)


def wrong_equations(solution: str) -> list[str]:
    """The equations in ``solution`` whose stated result is not what the left side evaluates to.

    Only unambiguous chains are checked: a chain preceded by an operator or a word like 'x'/'of' is part of
    a longer expression with units in it ("60 questions x 50/100 = 30") and is skipped, not guessed at.
    Results shown with two or more decimals may be rounded; integers and one-decimal results must be exact.
    """
    wrong = []
    for line in solution.splitlines():
        text = _asciify(line)
        for match in _EQUATION.finditer(text):
            lhs = match.group("lhs")
            if not re.search(r"\d\s*[-+*/]\s*[\d(]", lhs) or lhs.count("(") != lhs.count(")"):
                continue
            before = text[: match.start()].rstrip()
            if before.endswith(("+", "-", "*", "/", "(", ".", "%")) or re.search(r"\b(x|of|times|by)$", before):
                continue
            value, stated = safe_eval(lhs), _to_fraction(match.group("rhs"))
            if value is None or stated is None:
                continue
            if match.group("pct") and value != stated:
                value *= 100
            decimals = len(match.group("rhs").split(".")[1]) if "." in match.group("rhs") else 0
            tolerance = Fraction(1, 2 * 10**decimals) if decimals >= 2 else Fraction(0)
            if abs(value - stated) > tolerance:
                wrong.append(f"{lhs.strip()} = {match.group('rhs')}{match.group('pct') or ''}")
    return wrong


def final_number(solution: str) -> str | None:
    match = _FINAL.search(solution)
    return match.group("num").replace(",", "") if match else None


def demonstration_of(solution: str, answer: str) -> str:
    """The worked solution without its GSM8K '#### N' line, ending "The answer is \\boxed{N}."."""
    body = _FINAL.sub("", solution).rstrip()
    return f"{body}\nThe answer is \\boxed{{{answer}}}."


def check_gsm(entry: dict[str, Any], template: int) -> str | None:
    """Why a gsm_symbolic entry is not a trustworthy demonstration (None when it is)."""
    if template in BAD_GSM_TEMPLATES:
        return f"gsm_symbolic template {template} is excluded (known wrong arithmetic)"
    solution = entry.get("metadata", {}).get("answer_cot")
    answer = str(entry.get("answer", "")).strip()
    if not isinstance(solution, str) or not solution.strip():
        return "no worked solution (metadata.answer_cot)"
    gold, final = _to_fraction(answer), final_number(solution)
    if gold is None:
        return f"answer {answer!r} is not a number"
    if final is None or _to_fraction(final) != gold:
        return f"solution's final number {final!r} differs from the answer {answer!r}"
    value = entry.get("metadata", {}).get("answer_value")
    if value is not None and _to_fraction(str(value)) != gold:
        return f"metadata answer_value {value!r} differs from the answer {answer!r}"
    if _FLOAT_NOISE.search(solution):
        return "floating-point noise in the solution (e.g. 14.000000000000004)"
    wrong = wrong_equations(solution)
    if wrong:
        return f"wrong arithmetic in the solution: {'; '.join(wrong[:3])}"
    return None


def canonical_number(text: str) -> str:
    """'36.0' -> '36', '1,200' -> '1200': the gold answer as the grader will compare it."""
    value = _to_fraction(text)
    if value is None:
        return text.strip()
    if value.denominator == 1:
        return str(value.numerator)
    return format(float(value), "g") if float(value) == value else text.strip()


# Leg counts written down here rather than taken from reasoning-gym, so its table is checked, not trusted.
# Starfish arms are not legs: questions that include them are ambiguous and dropped.
LEGS = {
    "snake": 0,
    "sea slug": 0,
    "jellyfish": 0,
    "flatworm": 0,
    "leech": 0,
    "chicken": 2,
    "bird": 2,
    "human": 2,
    "duck": 2,
    "dog": 4,
    "cat": 4,
    "cow": 4,
    "horse": 4,
    "lion": 4,
    "elephant": 4,
    "giraffe": 4,
    "tiger": 4,
    "deer": 4,
    "sheep": 4,
    "insect": 6,
    "ant": 6,
    "butterfly": 6,
    "beetle": 6,
    "bee": 6,
    "wasp": 6,
    "grasshopper": 6,
    "cricket": 6,
    "cockroach": 6,
    "praying mantis": 6,
    "firefly": 6,
    "spider": 8,
    "scorpion": 8,
    "crab": 10,
    "lobster": 10,
    "shrimp": 10,
    "woodlouse": 14,
}


def ood_answer(task: str, entry: dict[str, Any]) -> tuple[str | None, str | None]:
    """(recomputed answer, None) or (None, why the entry is dropped) for an out-of-domain entry."""
    meta = entry.get("metadata", {})
    given = _to_fraction(str(entry.get("answer", "")))
    if task == "basic_arithmetic":
        value = safe_eval(str(meta.get("expression", "")))
    elif task == "simple_equations":
        value = _solve_linear(str(meta.get("equation", "")), str(meta.get("variable", "")))
    elif task == "leg_counting":
        animals = meta.get("animals", {})
        unknown = [a for a in animals if a not in LEGS]
        if unknown:
            return None, f"animal(s) {unknown} have no unambiguous leg count"
        value = Fraction(sum(LEGS[a] * int(n) for a, n in animals.items()))
    else:
        raise ValueError(task)
    if value is None:
        return None, "answer could not be recomputed"
    if value.denominator != 1:
        return None, f"answer {value} is not an integer"
    if given != value:
        return None, f"reasoning-gym answer {entry.get('answer')!r} differs from the recomputed {value}"
    return str(value.numerator), None


def _solve_linear(equation: str, variable: str) -> Fraction | None:
    """Solve a linear equation in one variable exactly: f(v) = a*v + b, so v = -b / a."""
    if equation.count("=") != 1 or not re.fullmatch(r"[a-z]", variable):
        return None
    lhs, rhs = equation.split("=")
    expr = f"({lhs}) - ({rhs})"
    if re.search(rf"[a-z](?<!{variable})", expr):
        return None
    at0, at1 = safe_eval(expr.replace(variable, "(0)")), safe_eval(expr.replace(variable, "(1)"))
    if at0 is None or at1 is None or at1 == at0:
        return None
    root = -at0 / (at1 - at0)
    return root if safe_eval(expr.replace(variable, f"({root})")) == 0 else None


def _rg():
    try:
        import reasoning_gym
    except ImportError as exc:
        raise DataError(
            "--source builtin needs reasoning-gym: pip install 'reasoning-gym>=0.1.19' (the project's `data` extra)"
        ) from exc
    return reasoning_gym


OOD_CONFIGS: dict[str, dict[str, Any]] = {
    # + - * only, at most 4 terms of 1-2 digits: short integer answers (division gives long decimals)
    "basic_arithmetic": {
        "min_terms": 2,
        "max_terms": 4,
        "min_digits": 1,
        "max_digits": 2,
        "operators": ("+", "-", "*"),
    },
    "simple_equations": {},
    "leg_counting": {"min_animals": 2, "max_animals": 4, "max_instances": 10},
}


@dataclass
class Drawn:
    """Examples drawn from a generator, and the rows dropped on the way."""

    examples: list[Example]
    dropped: list[RowProblem]


def _draw(
    name: str,
    seed: int,
    want: int,
    convert: Callable[[Any, int], Example | str],
    exclude: Callable[[Example], bool] = lambda e: False,
    key: str = "answer",
    **config: Any,
) -> Drawn:
    """Take ``want`` good rows from reasoning-gym's ``name`` stream (seeded, so deterministic), dropping
    rows ``convert`` rejects (returns a reason) or ``exclude`` marks (e.g. already in training)."""
    if want <= 0:
        return Drawn([], [])
    budget = want * MAX_ATTEMPTS_FACTOR + 100
    dataset = _rg().create_dataset(name, size=budget, seed=seed, **config)
    examples: list[Example] = []
    dropped: list[RowProblem] = []
    origin = f"reasoning_gym/{name}(seed={seed})"
    seen: set[str] = set()
    for index in range(budget):
        result = convert(dataset, index)
        if isinstance(result, str):
            dropped.append(RowProblem(origin, index + 1, key, result))
        elif exclude(result):
            dropped.append(RowProblem(origin, index + 1, "prompt", "prompt also in the training set"))
        elif _normalised(result.prompt) in seen:
            dropped.append(RowProblem(origin, index + 1, "prompt", "duplicate prompt"))
        else:
            seen.add(_normalised(result.prompt))
            examples.append(result)
            if len(examples) == want:
                return Drawn(examples, dropped)
    raise DataError(f"{origin}: only {len(examples)} of {want} usable rows in {budget} tries; ask for fewer")


def _gsm_convert(dataset: Any, index: int) -> Example | str:
    entry = dataset[index]
    reason = check_gsm(entry, dataset.task_indices[index])
    if reason:
        return reason
    answer = canonical_number(str(entry["answer"]))
    return Example(
        f"reasoning_gym/gsm_symbolic(seed={dataset.seed})",
        index + 1,
        entry["question"],
        demonstration_of(entry["metadata"]["answer_cot"], answer),
        answer,
        "reasoning_gym/gsm_symbolic",
    )


def _ood_convert(task: str) -> Callable[[Any, int], Example | str]:
    def convert(dataset: Any, index: int) -> Example | str:
        entry = dataset[index]
        answer, reason = ood_answer(task, entry)
        if reason:
            return reason
        return Example(
            f"reasoning_gym/{task}(seed={dataset.seed})",
            index + 1,
            entry["question"].strip(),
            None,
            answer,
            f"reasoning_gym/{task}",
        )

    return convert


def _normalised(text: str) -> str:
    return " ".join(text.split())


def build(
    seed: int, train_size: int, test_size: int, ood_size: int, ood_tasks: tuple[str, ...] = OOD_TASKS
) -> tuple[dict[str, list[Example]], list[RowProblem]]:
    """Draw the three splits: {"train", "test", "test_ood"} -> examples, plus every dropped row.

    Test rows are drawn from a separate seed stream and skip problems already in training; the caller's
    de-duplication then reports nothing for them.
    """
    train = _draw("gsm_symbolic", seed, train_size, _gsm_convert, key=GSM_KEY)
    seen = {_normalised(e.prompt) for e in train.examples}
    test = _draw(
        "gsm_symbolic",
        seed + TEST_SEED_OFFSET,
        test_size,
        _gsm_convert,
        exclude=lambda e: _normalised(e.prompt) in seen,
        key=GSM_KEY,
    )
    ood_examples, dropped = [], train.dropped + test.dropped
    for k, task in enumerate(ood_tasks):
        share = ood_size // len(ood_tasks) + (1 if k < ood_size % len(ood_tasks) else 0)
        drawn = _draw(task, seed + TEST_SEED_OFFSET + 1 + k, share, _ood_convert(task), **OOD_CONFIGS[task])
        ood_examples.extend(drawn.examples)
        dropped.extend(drawn.dropped)
    return {"train": train.examples, "test": test.examples, "test_ood": ood_examples}, dropped


def iter_versions() -> Iterator[tuple[str, str]]:
    yield "reasoning_gym", getattr(_rg(), "__version__", "unknown")
