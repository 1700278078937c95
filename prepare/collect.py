"""Gathering every output file's examples from the chosen source, then validating, de-duplicating and
formatting them into the trainer's rows."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from prepare import builtin, hub, local
from prepare.holdout import hold_out
from prepare.overlap import Overlap
from prepare.records import SYSTEM_PROMPT, Example, Report, check_all, dedupe, messages_of, prompt_key, to_row
from recipe.psft.rows import DataError

PROGRESS_MIN_ROWS = 1000
T = TypeVar("T")


def progress(items: Iterable[T], total: int, desc: str, quiet: bool) -> Iterator[T]:
    """A tqdm bar on stderr for long conversions (>= PROGRESS_MIN_ROWS rows); plain iteration otherwise."""
    if quiet or total < PROGRESS_MIN_ROWS:
        yield from items
        return
    from tqdm import tqdm

    yield from tqdm(items, total=total, desc=desc, file=sys.stderr, mininterval=0.5, unit="row")


@dataclass
class Part:
    """One output file in the making: its split kind ("train"/"test"), examples and system prompt."""

    kind: str
    examples: list[Example]
    system_prompt: str | None


def collect(args: argparse.Namespace, report: Report) -> dict[str, Part]:
    """Gather every output file's examples, keyed by file stem (train, test, test_ood, test_<benchmark>)."""
    files: dict[str, Part] = {}
    paper_prompt = args.system_prompt or SYSTEM_PROMPT
    if args.source == "openr1":
        rows = hub.load_hub_rows(hub.OPENR1_REPO, "train")
        hub.check_layout(rows, hub.OPENR1_REPO, [("prompt", "problem"), ("target",)])
        rows = rows[: args.max_samples] if args.max_samples is not None else rows
        examples = [
            hub.openr1_example(r, i + 1)
            for i, r in enumerate(progress(rows, len(rows), "converting openr1", args.no_progress))
        ]
        train, test = hold_out(examples, args.test_size, args.seed)
        files["train"], files["test"] = Part("train", train, paper_prompt), Part("test", test, paper_prompt)
    elif args.source == "local":
        keys = local.Keys(args.prompt_key, args.response_key, args.answer_key, args.messages_key)
        examples = local.load_examples(
            args.input,
            keys,
            args.data_source,
            need_response=True,
            need_answer=args.test_size > 0,
            max_samples=args.max_samples,
        )
        train, test = hold_out(examples, args.test_size, args.seed)
        if args.test_input is not None:
            test += local.load_examples(args.test_input, keys, args.data_source, need_response=False, need_answer=True)
        files["train"] = Part("train", train, args.system_prompt)
        files["test"] = Part("test", test, args.system_prompt)
    elif args.source == "builtin":
        train_size = min(args.train_size, args.max_samples) if args.max_samples is not None else args.train_size
        splits, dropped = builtin.build(args.seed, train_size, args.test_size, args.ood_size)
        report.skipped.extend(dropped)
        for name, examples in splits.items():
            files[name] = Part("train" if name == "train" else "test", examples, paper_prompt)
    local_files = getattr(args, "benchmark_local", {})
    for name in args.benchmark_list:
        bench = hub.BENCHMARKS[name]
        if name in local_files:  # --benchmark-files: read and checked before any other work
            numbered = local_files[name].rows
        else:
            rows = hub.load_hub_rows(bench.repo, bench.split, bench.config, bench.drop_columns, **bench.load_kwargs())
            hub.check_layout(rows, bench.repo, bench.required_columns())
            numbered = list(enumerate(rows, start=1))
        examples = [hub.benchmark_example(bench, r, n) for n, r in numbered]
        if name in local_files:  # rows are reported with the file they came from
            for example in examples:
                example.origin = str(local_files[name].path)
        files[f"test_{name}"] = Part("test", examples, benchmark_prompt(bench, args.system_prompt))
    return files


def benchmark_prompt(bench: hub.Benchmark, given: str | None) -> str | None:
    """The system prompt of a benchmark's rows: --system-prompt when given, else the paper's for the sets
    graded by \\boxed{} / letter extraction, and none for IFEval (its prompt is the whole instruction)."""
    if given:
        return given
    return SYSTEM_PROMPT if bench.system_prompt == "paper" else bench.system_prompt


def finalize(
    files: dict[str, Part], skip_invalid: bool, report: Report, overlap: Overlap | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Validate, de-duplicate within each file, report test rows that repeat a training prompt (dropped
    only with --decontaminate) and format every row."""
    overlap = overlap if overlap is not None else Overlap()
    out: dict[str, list[dict[str, Any]]] = {}
    train_seen: dict[str, Example] = {}
    for name in sorted(files, key=lambda n: (n != "train", n)):  # training first: tests dedupe against it
        part = files[name]
        if not part.examples:
            continue
        good = check_all(part.examples, part.kind, skip_invalid, report)
        pairs = dedupe([(e, messages_of(e, part.system_prompt)) for e in good], report)
        if part.kind == "test" and train_seen:
            pairs = overlap.check(name, pairs, train_seen)
        if name == "train":
            train_seen = {prompt_key(m): e for e, m in pairs}
        if not pairs:
            raise DataError(f"{name}: no usable rows left after validation and de-duplication")
        out[name] = [to_row(e, m, part.kind, i) for i, (e, m) in enumerate(pairs)]
    if "train" in files and "train" not in out:
        raise DataError("no training rows")
    return out
