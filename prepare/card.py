"""The data card (``data_card.json``: source, options, versions, files, counts, dropped rows) and the run's
console summary."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from prepare import control, hub, stats
from prepare.overlap import Overlap
from prepare.records import Report, format_problems
from prepare.write import content_hash, write_parquet

CARD_NAME = "data_card.json"
CARD_VERSION = 1


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
    keep = ["source", "seed", "test_size", "max_samples", "skip_invalid", "benchmarks", "benchmark_files"]
    keep += ["system_prompt"]
    keep += ["decontaminate"]
    if args.source == "local":
        keep += ["input", "test_input", "prompt_key", "response_key", "answer_key", "messages_key", "data_source"]
    if args.source == "builtin":
        keep += ["train_size", "ood_size"]
    if args.tokenizer:
        keep += ["tokenizer", "max_length", "chat_template_kwargs"]
    return {k: (str(v) if isinstance(v, Path) else v) for k in keep if (v := getattr(args, k, None)) is not None}


def write_outputs(
    args: argparse.Namespace,
    out: dict[str, list[dict[str, Any]]],
    report: Report,
    token_stats: dict[str, Any],
    control_strings: dict[str, Any],
    overlap: Overlap | None = None,
) -> dict[str, Any]:
    """Write the parquet files and the card; note parquet files from earlier runs left beside them."""
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
        "control_strings": control_strings,
    }
    local = getattr(args, "benchmark_local", {})
    if args.source in ("openr1", "benchmarks") or args.benchmark_list:
        card["hub_datasets"] = ([hub.OPENR1_REPO] if args.source == "openr1" else []) + [
            hub.BENCHMARKS[n].source for n in args.benchmark_list if n not in local
        ]
    if local:
        card["benchmark_files"] = {name: f.card() for name, f in local.items()}
    if overlap is not None and overlap.sizes:
        card["overlap_with_training"] = overlap.card()
    if token_stats:
        card["token_stats"] = token_stats
    if stale:
        card["other_parquet_files_in_dir"] = stale
    (args.output_dir / CARD_NAME).write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return card


def print_summary(args: argparse.Namespace, card: dict[str, Any], report: Report, seconds: float) -> None:
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
    if card["control_strings"]["rows_count"]:
        print(f"note: {control.describe(card['control_strings'])}", file=sys.stderr)
    for name, s in card.get("token_stats", {}).items():
        print(stats.describe(name, s))
    for name in card.get("other_parquet_files_in_dir", []):
        print(
            f"warning: {args.output_dir / name} was not written by this run (a trainer or evaluation that globs "
            f"test*.parquet would pick it up)",
            file=sys.stderr,
        )
    print(f"wrote {args.output_dir / CARD_NAME} in {seconds:.1f} s")
