"""A synthetic world of short chat tasks, each answerable in several equally valid styles.

Six task families (two-digit addition, word reversal, digit sorting, letter counting, unit
conversion, upper-casing). Every problem has one correct answer, but each family has four
demonstration styles (phrasings, orders, answer formats), so a model that has learned the whole world
keeps real entropy over *how* it answers while the answer itself is determined. In every style the
answer is the last word, so one grader serves all styles and all families.

The fine-tuning set is one family in one narrow style (``FINETUNE_FAMILY``, ``FINETUNE_STYLE``); the
other families are held out as out-of-domain. Problems are split by a hash of the prompt, so the
held-out problems of the fine-tuning family never occur in its training set nor in pretraining.
"""

from __future__ import annotations

import random
import string
import zlib
from collections.abc import Callable
from dataclasses import dataclass

# (prompt, answer, values for the style templates)
Problem = tuple[str, str, dict[str, str]]


@dataclass(frozen=True)
class Family:
    name: str
    sample: Callable[[random.Random], Problem]
    styles: tuple[str, ...]  # str.format templates over the problem's values; the answer comes last


def _add(rng: random.Random) -> Problem:
    a, b = rng.randint(10, 59), rng.randint(10, 39)
    return f"What is {a} + {b}?", str(a + b), {"a": str(a), "b": str(b)}


def _reverse(rng: random.Random) -> Problem:
    word = "".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 5)))
    return f"Reverse {word}", word[::-1], {"w": word}


def _sort(rng: random.Random) -> Problem:
    digits = "".join(rng.choice(string.digits) for _ in range(rng.randint(3, 5)))
    return f"Sort {digits}", "".join(sorted(digits)), {"d": digits}


def _count(rng: random.Random) -> Problem:
    word = "".join(rng.choice("ab") for _ in range(rng.randint(3, 8)))
    return f"How many a in {word}?", str(word.count("a")), {"w": word}


def _convert(rng: random.Random) -> Problem:
    metres = rng.randint(1, 299)
    return f"Convert {metres} m to cm", str(metres * 100), {"m": str(metres)}


def _upper(rng: random.Random) -> Problem:
    word = "".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 5)))
    return f"Uppercase {word}", word.upper(), {"w": word}


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "add", _add, ("{a} + {b} = {ans}", "The sum is {ans}", "Adding {a} and {b} gives {ans}", "Answer: {ans}")
        ),
        Family("reverse", _reverse, ("Reversed: {ans}", "{ans}", "{w} backwards is {ans}", "Answer: {ans}")),
        Family("sort", _sort, ("Sorted: {ans}", "In order: {ans}", "{ans}", "Answer: {ans}")),
        Family("count", _count, ("There are {ans}", "Count: {ans}", "{ans}", "I count {ans}")),
        Family("convert", _convert, ("{m} m is {ans}", "That is {ans}", "Answer: {ans}", "In cm: {ans}")),
        Family("upper", _upper, ("Capitals: {ans}", "{ans}", "{w} in upper case is {ans}", "Answer: {ans}")),
    )
}
FINETUNE_FAMILY = "add"
FINETUNE_STYLE = 0  # "{a} + {b} = {ans}": one narrow style of the family's four
OOD_FAMILIES = tuple(name for name in FAMILIES if name != FINETUNE_FAMILY)


@dataclass(frozen=True)
class Example:
    family: str
    style: int
    prompt: str
    demonstration: str
    answer: str

    def row(self) -> dict:
        """The row layout the recipe's dataset reads: a chat prompt and the demonstration."""
        return {"prompt": [{"role": "user", "content": self.prompt}], "demonstration": self.demonstration}


def is_held_out(prompt: str, fraction: float = 0.25) -> bool:
    """Deterministic split of the problem space by prompt: held-out problems are never trained on."""
    return zlib.crc32(prompt.encode()) % 1000 < fraction * 1000


def sample_examples(
    family: str, n: int, seed: int, held_out: bool, style: int | None = None, unique: bool = True
) -> list[Example]:
    """``n`` examples of ``family`` on one side of the split; ``style`` None means a random style each."""
    fam = FAMILIES[family]
    rng = random.Random(zlib.crc32(f"{family}/{seed}/{held_out}/{style}".encode()))
    seen: set[str] = set()
    out: list[Example] = []
    for _ in range(200 * n):
        prompt, answer, values = fam.sample(rng)
        if is_held_out(prompt) != held_out or (unique and prompt in seen):
            continue
        seen.add(prompt)
        s = rng.randrange(len(fam.styles)) if style is None else style
        out.append(Example(family, s, prompt, fam.styles[s].format(ans=answer, **values), answer))
        if len(out) == n:
            return out
    side = "held-out" if held_out else "train"
    raise ValueError(f"family {family!r}: only {len(out)} distinct {side} problems, asked for {n}")


def pretraining_stream(seed: int, weights: dict[str, float]) -> Callable[[int], list[Example]]:
    """A sampler of pretraining batches: families by ``weights``, every style, training side only."""
    rng = random.Random(seed)
    names = list(weights)
    probs = [weights[n] for n in names]

    def batch(size: int) -> list[Example]:
        rows = []
        while len(rows) < size:
            family = FAMILIES[rng.choices(names, probs)[0]]
            prompt, answer, values = family.sample(rng)
            if is_held_out(prompt):
                continue
            s = rng.randrange(len(family.styles))
            rows.append(Example(family.name, s, prompt, family.styles[s].format(ans=answer, **values), answer))
        return rows

    return batch


def extract_answer(completion: str) -> str:
    """The last whitespace-separated word of a completion (every style ends with its answer)."""
    words = completion.strip().split()
    return words[-1] if words else ""


def is_correct(example: Example, completion: str) -> bool:
    return extract_answer(completion) == example.answer


def alphabet() -> str:
    """Every character any prompt, demonstration or chat-template line can contain."""
    return string.ascii_letters + string.digits + " +=:?,.\n"
