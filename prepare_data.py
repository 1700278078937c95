"""Turn a data source into the PSFT trainer's parquet files, validating every row.

    python prepare_data.py                                   # the paper's set (Hub) + its benchmarks
    python prepare_data.py --source builtin                  # offline: reasoning-gym math, train/test/OOD
    python prepare_data.py --source local --input my.jsonl --prompt-key question --response-key solution
    python prepare_data.py --source benchmarks --benchmarks aime24,math500   # test sets only (Hub)
    python prepare_data.py --source benchmarks --benchmark-files gpqa_diamond=gpqa.parquet   # one from a local copy

Writes ``train.parquet`` and ``test*.parquet`` into ``--output-dir`` with the columns ``data_source``,
``prompt`` (chat messages), ``demonstration``, ``ability``, ``reward_model`` {ground_truth, style} and
``extra_info`` {split, index, source_row}, plus ``data_card.json`` (source, versions, row counts, skipped
rows with reasons, rows holding control strings, content hash). The same options and seed give
byte-identical files. The work is in ``prepare/``; rows are defined in ``recipe/psft/rows.py``.

Exit codes (the project's one table, ``recipe/psft/exit_codes.py``): 0 done; 2 invalid input (bad rows, a
missing file or key, bad options); 7 a Hub source that cannot be reached (use --source builtin or
--source local offline).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from prepare import benchmark_files, builtin, card, control, hub, stats
from prepare.collect import collect, finalize
from prepare.overlap import Overlap
from prepare.records import Report, SourceUnavailable
from recipe.psft.exit_codes import BAD_INPUT, OK, SOURCE_UNAVAILABLE
from recipe.psft.rows import ConversationEncoder, DataError

SOURCES = ("openr1", "local", "builtin", "benchmarks")
DEFAULTS = {  # per-source defaults for the size options
    "builtin": {"train_size": 256, "test_size": 64, "ood_size": 64, "benchmarks": "none"},
    "openr1": {"test_size": 0, "benchmarks": "all"},
    "local": {"test_size": 0, "benchmarks": "none"},
    "benchmarks": {"test_size": 0, "benchmarks": "all"},
}


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
        "--benchmark-files",
        default=None,
        metavar="NAME=PATH[,NAME=PATH...]",
        help="read these benchmarks from local .parquet/.jsonl/.json files in the Hub's column layout instead "
        "of the Hub (clusters without Hub access); the data card records each file and its sha256",
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
    g.add_argument(
        "--chat-template-kwargs",
        default=None,
        help="JSON object passed to the chat template, as the trainer's data.apply_chat_template_kwargs "
        """(e.g. '{"enable_thinking": false}'); give the same value to both so the counts match""",
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
    if args.chat_template_kwargs is not None:
        if not args.tokenizer:
            raise DataError("--chat-template-kwargs needs --tokenizer PATH")
        args.chat_template_kwargs = parse_json_object(args.chat_template_kwargs)
    args.benchmark_list = parse_benchmarks(args.benchmarks)
    # Local benchmark files are read and their layout checked here, before any download or conversion.
    args.benchmark_local = benchmark_files.read_all(
        benchmark_files.parse_spec(args.benchmark_files), args.benchmark_list
    )
    return args


def parse_json_object(value: str) -> dict[str, Any]:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise DataError(f"--chat-template-kwargs {value!r}: not valid JSON ({exc.msg})") from exc
    if not isinstance(parsed, dict):
        example = '{"enable_thinking": false}'
        raise DataError(f"--chat-template-kwargs {value!r}: expected a JSON object such as '{example}'")
    return parsed


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


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    report = Report()
    overlap = Overlap(decontaminate=args.decontaminate)
    out = finalize(collect(args, report), args.skip_invalid, report, overlap)
    encoder = None
    token_stats = {}
    if args.tokenizer:
        encoder = ConversationEncoder(stats.load_tokenizer(args.tokenizer), args.chat_template_kwargs)
        for name, rows in out.items():
            token_stats[name] = stats.token_stats(encoder, name, rows, args.max_length)
    written = card.write_outputs(
        args, out, report, token_stats, control.find_control_strings(out, encoder), overlap
    )
    for line in overlap.lines():
        print(f"overlap: {line}", file=sys.stderr)
    card.print_summary(args, written, report, time.perf_counter() - started)
    return written


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(resolve(args))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return BAD_INPUT
    except SourceUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return SOURCE_UNAVAILABLE
    return OK


if __name__ == "__main__":
    sys.exit(main())
