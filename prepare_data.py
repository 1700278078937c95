"""Turn a data source into the PSFT trainer's parquet files, validating every row.

    python prepare_data.py                                   # the paper's set (Hub) + its benchmarks
    python prepare_data.py --source builtin                  # offline: reasoning-gym math, train/test/OOD
    python prepare_data.py --source local --input my.jsonl --prompt-key question --response-key solution
    python prepare_data.py --source benchmarks --benchmarks aime24,math500   # test sets only (Hub)

Writes ``train.parquet`` and ``test*.parquet`` into ``--output-dir`` with the columns ``data_source``,
``prompt`` (chat messages), ``demonstration``, ``ability``, ``reward_model`` {ground_truth, style} and
``extra_info`` {split, index, source_row}, plus ``data_card.json`` (source, versions, row counts, skipped
rows with reasons, content hash). The same options and seed give byte-identical files.

Exit codes: 0 done; 2 invalid input (bad rows, a missing file or key, bad options); 3 a Hub source that
cannot be reached (use --source builtin or --source local offline).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from prepare import builtin, hub, local, stats
from prepare.overlap import Overlap
from prepare.records import (
    SYSTEM_PROMPT,
    DataError,
    Example,
    Report,
    SourceUnavailable,
    check_all,
    content_hash,
    dedupe,
    format_problems,
    messages_of,
    prompt_key,
    to_row,
    write_parquet,
)

CARD_NAME = "data_card.json"
CARD_VERSION = 1
PROGRESS_MIN_ROWS = 1000
SOURCES = ("openr1", "local", "builtin", "benchmarks")
DEFAULTS = {  # per-source defaults for the size options
    "builtin": {"train_size": 256, "test_size": 64, "ood_size": 64, "benchmarks": "none"},
    "openr1": {"test_size": 0, "benchmarks": "all"},
    "local": {"test_size": 0, "benchmarks": "none"},
    "benchmarks": {"test_size": 0, "benchmarks": "all"},
}
T = TypeVar("T")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prepare_data.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--source",
        choices=SOURCES,
        default="openr1",
        help="openr1: the paper's training set from the Hub (default); local: --input FILE; "
        "builtin: offline reasoning-gym math; benchmarks: only the Hub test sets",
    )
    p.add_argument("--output-dir", type=Path, default=None, help="where the files go (default: data/<source>)")
    p.add_argument("--seed", type=int, default=0, help="seed for generation, the test split and sampling")
    p.add_argument(
        "--test-size",
        type=int,
        default=None,
        help="test rows: held out from the input (openr1/local, default 0) or generated (builtin, 64)",
    )
    p.add_argument(
        "--max-samples",
        type=int,
        default=None,
        help="use at most N input rows (the first N; builtin: caps --train-size)",
    )
    p.add_argument(
        "--skip-invalid",
        action="store_true",
        help="drop invalid rows (listed in the data card) instead of stopping with exit code 2",
    )
    p.add_argument(
        "--benchmarks",
        default=None,
        help=f"comma list of {','.join(hub.BENCHMARKS)}, 'all' or 'none' (default: all for openr1, "
        "none otherwise); written as test_<name>.parquet, one row per problem",
    )
    p.add_argument(
        "--system-prompt",
        default=None,
        help="system message for every prompt (replaces any in the input); openr1/builtin default to "
        "the paper's step-by-step \\boxed{} prompt, local to none",
    )
    p.add_argument(
        "--decontaminate",
        action="store_true",
        help="drop test problems that also appear in the training set (default: keep them; the overlap is "
        "always reported in the data card under overlap_with_training)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    g = p.add_argument_group("--source local")
    g.add_argument("--input", type=Path, help="training file: .jsonl, .json, .parquet or .csv")
    g.add_argument("--test-input", type=Path, help="optional test file (same formats; rows need an answer)")
    g.add_argument("--prompt-key", default="prompt", help="problem column: a string or chat messages (prompt)")
    g.add_argument("--response-key", default="response", help="demonstration column (response)")
    g.add_argument("--answer-key", default="answer", help="ground-truth answer column (answer)")
    g.add_argument(
        "--messages-key",
        default="messages",
        help="verl's conversation column, used when the prompt column is absent (messages)",
    )
    g.add_argument(
        "--data-source",
        default=None,
        help="data_source value (default: the row's own data_source column, else the input file's stem)",
    )

    g = p.add_argument_group("--source builtin")
    g.add_argument("--train-size", type=int, default=None, help="training rows (256)")
    g.add_argument(
        "--ood-size",
        type=int,
        default=None,
        help=f"out-of-domain test rows, split evenly over {', '.join(builtin.OOD_TASKS)} (64)",
    )

    g = p.add_argument_group("token statistics")
    g.add_argument("--tokenizer", default=None, help="local tokenizer/model folder for token-length statistics")
    g.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="the trainer's data.max_length: count rows it would truncate or reject",
    )
    return p


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill per-source defaults and reject option combinations that cannot work (exit code 2)."""
    for key, value in DEFAULTS[args.source].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.output_dir is None:
        args.output_dir = Path("data") / args.source
    if args.source == "local" and args.input is None:
        raise DataError("--source local needs --input FILE")
    if args.source != "local" and (args.input or args.test_input):
        raise DataError("--input/--test-input are for --source local")
    for name in ("test_size", "max_samples", "train_size", "ood_size", "max_length"):
        value = getattr(args, name, None)
        if value is not None and value < 0:
            raise DataError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
    if args.max_length is not None and not args.tokenizer:
        raise DataError("--max-length needs --tokenizer PATH")
    args.benchmark_list = parse_benchmarks(args.benchmarks)
    return args


def parse_benchmarks(value: str) -> list[str]:
    if value in ("", "none"):
        return []
    if value == "all":
        return list(hub.BENCHMARKS)
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in hub.BENCHMARKS]
    if unknown:
        raise DataError(f"--benchmarks: unknown {unknown}; choose from {list(hub.BENCHMARKS)}, 'all' or 'none'")
    return names


def progress(items: Iterable[T], total: int, desc: str, quiet: bool) -> Iterator[T]:
    """A tqdm bar on stderr for long conversions (>= PROGRESS_MIN_ROWS rows); plain iteration otherwise."""
    if quiet or total < PROGRESS_MIN_ROWS:
        yield from items
        return
    from tqdm import tqdm

    yield from tqdm(items, total=total, desc=desc, file=sys.stderr, mininterval=0.5, unit="row")


def hold_out(examples: list[Example], test_size: int, seed: int) -> tuple[list[Example], list[Example]]:
    """Split off ``test_size`` seeded-random rows as the test set; both parts keep the input order.

    Only rows whose prompt appears once in the input are eligible, so a held-out problem never also sits
    in training (and the test set gets exactly ``test_size`` rows).
    """
    if test_size == 0:
        return examples, []
    keys = [_raw_prompt_key(e) for e in examples]
    counts = Counter(k for k in keys if k is not None)
    eligible = [i for i, k in enumerate(keys) if k is not None and counts[k] == 1]
    if test_size >= len(examples) or test_size > len(eligible):
        raise DataError(
            f"--test-size {test_size} is too large: {len(examples)} input rows, {len(eligible)} with a unique prompt"
        )
    chosen = set(random.Random(seed).sample(eligible, test_size))
    train = [e for i, e in enumerate(examples) if i not in chosen]
    return train, [e for i, e in enumerate(examples) if i in chosen]


def _raw_prompt_key(example: Example) -> str | None:
    """The duplicate key of a not-yet-validated prompt; None when it is malformed (validation reports it)."""
    prompt = example.prompt
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not all(
        isinstance(m, dict) and isinstance(m.get("content"), str) for m in prompt
    ):
        return None
    return prompt_key([{"role": str(m.get("role")), "content": m["content"]} for m in prompt])


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
    for name in args.benchmark_list:  # graded by \boxed{} extraction: always the paper's prompt by default
        bench = hub.BENCHMARKS[name]
        rows = hub.load_hub_rows(bench.repo, bench.split, bench.config)
        hub.check_layout(rows, bench.repo, bench.required_columns())
        examples = [hub.benchmark_example(bench, r, i + 1) for i, r in enumerate(rows)]
        files[f"test_{name}"] = Part("test", examples, paper_prompt)
    return files


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


def versions(args: argparse.Namespace) -> dict[str, str]:
    names = ["pyarrow", "pandas"]
    if args.source in ("openr1", "benchmarks") or args.benchmark_list:
        names.append("datasets")
    if args.source == "builtin":
        names.append("reasoning_gym")
    if args.tokenizer:
        names.append("transformers")
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def options(args: argparse.Namespace) -> dict[str, Any]:
    """The options that decide the content, for the card (paths as given, so the card is reproducible)."""
    keep = ["source", "seed", "test_size", "max_samples", "skip_invalid", "benchmarks", "system_prompt"]
    keep += ["decontaminate"]
    if args.source == "local":
        keep += ["input", "test_input", "prompt_key", "response_key", "answer_key", "messages_key", "data_source"]
    if args.source == "builtin":
        keep += ["train_size", "ood_size"]
    if args.tokenizer:
        keep += ["tokenizer", "max_length"]
    return {k: (str(v) if isinstance(v, Path) else v) for k in keep if (v := getattr(args, k, None)) is not None}


def write_outputs(
    args: argparse.Namespace,
    out: dict[str, list[dict[str, Any]]],
    report: Report,
    token_stats: dict[str, Any],
    overlap: Overlap | None = None,
) -> dict[str, Any]:
    """Write the parquet files and the card; warn about parquet files from earlier runs left beside them."""
    args.output_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, rows in out.items():
        written[f"{name}.parquet"] = {
            "rows": len(rows),
            "sha256": write_parquet(rows, args.output_dir / f"{name}.parquet"),
        }
    stale = sorted(p.name for p in args.output_dir.glob("*.parquet") if p.name not in written)
    card = {
        "card_version": CARD_VERSION,
        "source": args.source,
        "options": options(args),
        "versions": versions(args),
        "files": written,
        "rows": {name: len(rows) for name, rows in out.items()},
        "content_sha256": content_hash(out),
        **report.summary(),
    }
    if args.source in ("openr1", "benchmarks") or args.benchmark_list:
        card["hub_datasets"] = ([hub.OPENR1_REPO] if args.source == "openr1" else []) + [
            hub.BENCHMARKS[n].source for n in args.benchmark_list
        ]
    if overlap is not None and overlap.sizes:
        card["overlap_with_training"] = overlap.card()
    if token_stats:
        card["token_stats"] = token_stats
    if stale:
        card["other_parquet_files_in_dir"] = stale
    (args.output_dir / CARD_NAME).write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return card


def compute_token_stats(args: argparse.Namespace, out: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    if not args.tokenizer:
        return {}
    tokenizer = stats.load_tokenizer(args.tokenizer)
    result = {}
    for name, rows in out.items():
        shown = progress(rows, len(rows), f"tokenising {name}", args.no_progress)
        result[name] = stats.token_stats(tokenizer, list(shown), args.max_length)
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    report = Report()
    files = collect(args, report)
    overlap = Overlap(decontaminate=args.decontaminate)
    out = finalize(files, args.skip_invalid, report, overlap)
    token_stats = compute_token_stats(args, out)
    card = write_outputs(args, out, report, token_stats, overlap)
    for line in overlap.lines():
        print(f"overlap: {line}", file=sys.stderr)
    print_summary(args, card, report, token_stats, time.perf_counter() - started)
    return card


def print_summary(
    args: argparse.Namespace, card: dict[str, Any], report: Report, token_stats: dict[str, Any], seconds: float
) -> None:
    for name, info in card["files"].items():
        print(f"wrote {args.output_dir / name}: {info['rows']} rows")
    if report.skipped:
        if args.source == "builtin":  # expected filtering of generated rows, not the user's bad rows
            print(f"filtered {len(report.skipped)} generated row(s) (listed in the data card):", file=sys.stderr)
        else:
            title = f"skipped {len(report.skipped)} invalid row problem(s) (--skip-invalid)"
            print(format_problems(report.skipped, title, limit=10).rsplit("\n", 1)[0], file=sys.stderr)
        for reason, count in card["skipped_by_reason"].items():
            print(f"  {count:6d} x {reason}", file=sys.stderr)
    if report.duplicates:
        print(f"dropped {len(report.duplicates)} duplicate prompt(s):", file=sys.stderr)
        for problem in report.duplicates[:10]:
            print(f"  {problem}", file=sys.stderr)
    for name, s in token_stats.items():
        print(stats.describe(name, s))
    for name in card.get("other_parquet_files_in_dir", []):
        print(
            f"warning: {args.output_dir / name} was not written by this run (a trainer or evaluation that globs "
            f"test*.parquet would pick it up)",
            file=sys.stderr,
        )
    print(f"wrote {args.output_dir / CARD_NAME} in {seconds:.1f} s")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(resolve(args))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SourceUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
