"""Compare training runs from their verl file logs (JSONL): entropy, loss, clip fraction, accuracy.

    python scripts/plot_runs.py --run SFT=logs/sft.jsonl --run PSFT=logs/psft.jsonl --out figures/
    python scripts/plot_runs.py --run SFT=sft.jsonl --run PSFT=psft.jsonl \\
        --accuracy SFT=eval/sft --accuracy PSFT=eval/psft --out figures/

    # accuracy over training (from `python -m evaluation.over_training`), SFT against PSFT, stderr bars:
    python scripts/plot_runs.py --accuracy-log SFT=logs/sft.eval.jsonl --accuracy-log PSFT=logs/psft.eval.jsonl \
        --out figures/

Each log line is verl's `{"step": N, "data": {...}}` (trainer.logger=[...,file], path from
VERL_FILE_LOGGER_PATH). `--accuracy LABEL=DIR` reads evaluation summaries: DIR/*/summary.json or
DIR/summary.json as written by `python -m evaluation.eval --output DIR`. `--accuracy-log LABEL=FILE`
reads the accuracy-per-step log of `python -m evaluation.over_training` (same line format, keys
`eval/<source>/avg@n` and `..._stderr`) and draws accuracy against step, one panel per data source.
Writes one PNG per figure and prints the paths.

Clipped-token analytics (``psft.clipped_token_log``): for each `--run LABEL=<name>.jsonl` with a
`<name>.clipped_tokens.jsonl` beside it (or `--clipped-tokens LABEL=FILE`), `clipped_ratio_<LABEL>.png`
draws the share of demonstration tokens per ratio bin over steps (a heatmap: steps x bins, the clip
bound marked), and the run's most often clipped tokens are printed (counts summed over its steps).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# (file name, title, [(metric, y label)]) : one figure per entry, one line per run and metric.
FIGURES = [
    ("entropy.png", "Token entropy on demonstrations", [("train/entropy", "train"), ("val/entropy", "held-out")]),
    ("loss.png", "Demonstration NLL", [("train/loss", "train"), ("val/loss", "held-out")]),
    ("clip_fraction.png", "Share of tokens outside the trust region (r > 1 + eps_high)", [("train/clip_frac", "")]),
    ("ratio.png", "Probability ratio to the snapshot", [("train/ratio_max", "max"), ("train/ratio_mean", "mean")]),
]


def read_log(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """metric -> [(step, value)], later lines for the same step winning (resumed runs)."""
    series: dict[str, dict[int, float]] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            step, data = int(entry["step"]), entry["data"]
        except (ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"{path}, line {number}: not a verl file-log line ({exc})") from exc
        for key, value in data.items():
            if isinstance(value, int | float):
                series.setdefault(key, {})[step] = float(value)
    return {key: sorted(points.items()) for key, points in series.items()}


def read_accuracy(directory: str | Path) -> dict[str, float]:
    """test set name -> accuracy (avg@n) from evaluation summaries under ``directory``."""
    directory = Path(directory)
    summaries = sorted(directory.glob("*/summary.json")) or sorted(directory.glob("summary.json"))
    if not summaries:
        raise SystemExit(f"{directory}: no summary.json found")
    result = {}
    for path in summaries:
        overall = json.loads(path.read_text()).get("overall", {})
        name = path.parent.name if path.parent != directory else directory.name
        keys = [k for k in overall if k.startswith("avg@") and not k.endswith("_stderr")]
        if not keys:
            raise SystemExit(f"{path}: no overall avg@n in the summary (is it evaluation.eval's summary.json?)")
        result[name] = float(overall[keys[0]])
    return result


def parse_pairs(pairs: list[str], what: str) -> list[tuple[str, str]]:
    parsed = []
    for pair in pairs:
        label, sep, path = pair.partition("=")
        if not sep or not label or not path:
            raise SystemExit(f"--{what} {pair!r}: expected LABEL=PATH")
        parsed.append((label, path))
    return parsed


def plot_curves(runs: dict[str, dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for filename, title, metrics in FIGURES:
        if not any(metric in series for series in runs.values() for metric, _ in metrics):
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        for index, (label, series) in enumerate(runs.items()):
            color = f"C{index}"
            for style, (metric, suffix) in zip(("-", "--", ":"), metrics):
                if metric in series:
                    steps, values = zip(*series[metric])
                    name = f"{label} {suffix}".strip()
                    ax.plot(steps, values, style, color=color, marker="o", markersize=2.5, label=name)
        ax.set_title(title)
        ax.set_xlabel("global step")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out / filename
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def plot_accuracy(accuracy: dict[str, dict[str, float]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test_sets = sorted({name for values in accuracy.values() for name in values})
    width = 0.8 / max(len(accuracy), 1)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for index, (label, values) in enumerate(accuracy.items()):
        xs = [i + index * width for i in range(len(test_sets))]
        heights = [100 * values.get(name, float("nan")) for name in test_sets]
        bars = ax.bar(xs, heights, width=width, label=label, color=f"C{index}")
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks([i + width * (len(accuracy) - 1) / 2 for i in range(len(test_sets))], test_sets)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy by test set")
    ax.legend()
    fig.tight_layout()
    path = out / "accuracy.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def read_accuracy_log(path: str | Path) -> dict[str, list[tuple[int, float, float]]]:
    """data source -> [(step, avg@n, stderr)] from an evaluation.over_training log."""
    series = read_log(path)
    out: dict[str, list[tuple[int, float, float]]] = {}
    for key, points in series.items():
        # eval/<source>/avg@n, where the source name may itself hold slashes (reasoning_gym/gsm_symbolic)
        source, _, metric = key.removeprefix("eval/").rpartition("/")
        if not key.startswith("eval/") or not source or not metric.startswith("avg@") or metric.endswith("_stderr"):
            continue
        errors = dict(series.get(key + "_stderr", []))
        out[source] = [(step, value, errors.get(step, 0.0)) for step, value in points]
    if not out:
        raise SystemExit(f"{path}: no eval/<source>/avg@n values (is it an evaluation.over_training log?)")
    return out


def plot_accuracy_over_steps(runs: dict[str, dict[str, list[tuple[int, float, float]]]], out: Path) -> Path:
    """Accuracy against step with standard-error bars: one panel per data source, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = sorted({s for series in runs.values() for s in series}, key=lambda s: (s != "all", s))
    fig, axes = plt.subplots(1, len(sources), figsize=(4.2 * len(sources), 3.4), squeeze=False)
    for ax, source in zip(axes[0], sources):
        for index, (label, series) in enumerate(runs.items()):
            if source not in series:
                continue
            steps, values, errors = zip(*series[source])
            ax.errorbar(
                steps,
                [100 * v for v in values],
                yerr=[100 * e for e in errors],
                color=f"C{index}",
                marker="o",
                markersize=3,
                capsize=3,
                label=label,
            )
        ax.set_title("all test problems" if source == "all" else source)
        ax.set_xlabel("global step")
        ax.set_ylabel("accuracy (%, ± s.e.)")
        ax.set_ylim(bottom=0, top=max(ax.get_ylim()[1], 5))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = out / "accuracy_over_steps.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def clipped_log_beside(run_log: str | Path) -> Path | None:
    """The clipped-token log the trainer writes beside a file log, if there is one."""
    from recipe.psft.clipped_token_log import clipped_token_log_path

    path = clipped_token_log_path(run_log)
    return path if path.is_file() else None


def read_clipped(path: str | Path) -> list[dict]:
    from recipe.psft.clipped_token_log import read_clipped_token_log

    try:
        entries = read_clipped_token_log(path)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    if not entries:
        raise SystemExit(f"{path}: no lines (is it a <name>.clipped_tokens.jsonl of a PSFT run?)")
    edges = entries[0]["ratio_bin_edges"]
    for entry in entries:
        if entry["ratio_bin_edges"] != edges:
            raise SystemExit(f"{path}: step {entry['step']} has other ratio bin edges than step {entries[0]['step']}")
    return entries


def top_clipped_of_run(entries: list[dict], n: int = 20) -> list[tuple[str, int, float]]:
    """(token, count, mean ratio) of the run's ``n`` most often clipped tokens, counts summed over steps
    (a step's top 20 only: a token outside a step's top 20 is not counted there)."""
    counts: dict[int, int] = {}
    ratio_sums: dict[int, float] = {}
    names: dict[int, str] = {}
    for entry in entries:
        for token in entry["top_clipped"]:
            counts[token["id"]] = counts.get(token["id"], 0) + token["count"]
            ratio_sums[token["id"]] = ratio_sums.get(token["id"], 0.0) + token["count"] * token["mean_ratio"]
            names[token["id"]] = token["token"]
    ranked = sorted(counts, key=lambda token: (-counts[token], token))[:n]
    return [(names[t], counts[t], ratio_sums[t] / counts[t]) for t in ranked]


def print_top_clipped(label: str, entries: list[dict]) -> None:
    tokens = sum(e["tokens"] for e in entries)
    clipped = sum(e["clipped"] for e in entries)
    print(f"{label}: {clipped} of {tokens} demonstration-token forwards clipped over {len(entries)} steps")
    print(f"  {'token':<24}{'count':>8}{'mean r':>9}")
    for name, count, mean in top_clipped_of_run(entries):
        print(f"  {json.dumps(name):<24}{count:>8}{mean:>9.3f}")


def plot_clipped_ratio(label: str, entries: list[dict], out: Path) -> Path:
    """Heatmap of the share of demonstration tokens per ratio bin (rows) at each step (columns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import LogNorm

    edges = entries[0]["ratio_bin_edges"]
    counts = np.array([e["ratio_histogram"] for e in entries], dtype=float).T
    share = counts / np.maximum(counts.sum(axis=0, keepdims=True), 1)
    steps = [e["step"] for e in entries]
    fig, ax = plt.subplots(figsize=(max(6.4, 0.12 * len(steps) + 3), 4.6))
    image = ax.imshow(
        np.where(share > 0, share, np.nan),
        aspect="auto",
        origin="lower",
        interpolation="nearest",
        norm=LogNorm(vmin=1e-4, vmax=1.0),
        extent=(-0.5, len(steps) - 0.5, -0.5, len(edges) - 1.5),
    )
    names = [f"({a:g}, {b:g}]" for a, b in zip(edges[:-1], edges[1:])]
    names[0] = f"[0, {edges[1]:g}]"
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ticks = sorted(set(np.linspace(0, len(steps) - 1, min(len(steps), 10)).round().astype(int).tolist()))
    ax.set_xticks(ticks, [str(steps[i]) for i in ticks])
    ax.set_xlabel("global step")
    ax.set_ylabel("r = pi / pi_old")
    fig.colorbar(image, ax=ax, label="share of demonstration tokens (all updates of the step)")
    ax.set_title(f"{label}: ratio to the snapshot over demonstration tokens")
    fig.tight_layout()
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
    path = out / f"clipped_ratio_{safe}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", default=[], help="LABEL=path/to/log.jsonl (repeatable)")
    parser.add_argument("--accuracy", action="append", default=[], help="LABEL=eval output dir (repeatable)")
    parser.add_argument(
        "--accuracy-log",
        action="append",
        default=[],
        help="LABEL=accuracy log of `python -m evaluation.over_training` (repeatable): accuracy against step",
    )
    parser.add_argument(
        "--clipped-tokens",
        action="append",
        default=[],
        help="LABEL=<name>.clipped_tokens.jsonl (repeatable; found beside each --run log anyway)",
    )
    parser.add_argument("--out", required=True, help="folder for the PNGs")
    args = parser.parse_args(argv)
    if not args.run and not args.accuracy and not args.accuracy_log and not args.clipped_tokens:
        parser.error("give at least one --run, --accuracy, --accuracy-log or --clipped-tokens")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = {label: read_log(path) for label, path in parse_pairs(args.run, "run")}
    written = plot_curves(runs, out) if runs else []
    clipped = {label: clipped_log_beside(path) for label, path in parse_pairs(args.run, "run")}
    clipped = {label: path for label, path in clipped.items() if path is not None}
    clipped.update(parse_pairs(args.clipped_tokens, "clipped-tokens"))
    for label, path in clipped.items():
        entries = read_clipped(path)
        print_top_clipped(label, entries)
        written.append(plot_clipped_ratio(label, entries, out))
    if args.accuracy:
        accuracy = {label: read_accuracy(path) for label, path in parse_pairs(args.accuracy, "accuracy")}
        written.append(plot_accuracy(accuracy, out))
    if args.accuracy_log:
        logs = {label: read_accuracy_log(path) for label, path in parse_pairs(args.accuracy_log, "accuracy-log")}
        written.append(plot_accuracy_over_steps(logs, out))
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
