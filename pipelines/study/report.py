"""The study's report: a table over method x learning rate (mean +- std over seeds) and two figures.

* ``entropy.png``: teacher-forced token entropy of the held-out in-domain (narrow style) and
  out-of-domain demonstrations against optimizer updates, one line per method (seed mean, band of
  +- one standard deviation), one column per learning rate;
* ``tradeoff.png``: in-domain accuracy gain against out-of-domain retention, one point per method
  and learning rate, with error bars over seeds: a trust region is judged on this trade-off.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

Row = dict[str, Any]


def load_runs(runs_dir: Path, names: set[str] | None = None) -> list[Row]:
    paths = sorted(runs_dir.glob("*.json"))
    return [json.loads(p.read_text()) for p in paths if names is None or p.name in names]


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(runs: list[Row]) -> list[Row]:
    """One row per (method, lr): final measurements as mean and std over seeds."""
    groups: dict[tuple[str, float], list[Row]] = defaultdict(list)
    for run in runs:
        groups[(run["method"]["name"], run["lr"])].append(run)
    rows = []
    for (method, lr), group in groups.items():
        def final(key: str, group: list[Row] = group) -> list[float]:
            return [r["curve"][-1][key] for r in group]

        def start(key: str, group: list[Row] = group) -> list[float]:
            return [r["curve"][0][key] for r in group]

        clip = [statistics.fmean(p.get("train_clip_frac", 0.0) for p in r["curve"][1:]) for r in group]
        row = {"method": method, "lr": lr, "seeds": len(group)}
        row["id_gain"] = _mean_std([f - s for f, s in zip(final("acc_id"), start("acc_id"), strict=True)])
        row["acc_id"] = _mean_std(final("acc_id"))
        row["acc_ood"] = _mean_std(final("acc_ood"))
        row["forgetting"] = _mean_std([s - f for f, s in zip(final("acc_ood"), start("acc_ood"), strict=True)])
        row["retention"] = _mean_std(
            [f / s if s else float("nan") for f, s in zip(final("acc_ood"), start("acc_ood"), strict=True)]
        )
        row["entropy_id"] = _mean_std(final("entropy_id"))
        row["entropy_ood"] = _mean_std(final("entropy_ood"))
        row["ood_narrow_style"] = _mean_std(final("ood_narrow_style"))
        row["clip_frac"] = _mean_std(clip)
        rows.append(row)
    order = {name: i for i, name in enumerate(("sft", "sft_kl", "dft", "psft_k4", "psft_k8"))}
    return sorted(rows, key=lambda r: (order.get(r["method"], 99), r["lr"]))


def table_markdown(rows: list[Row], base: dict[str, Any]) -> str:
    def cell(pair: tuple[float, float], digits: int = 3) -> str:
        return f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"

    lines = [
        f"Pretrained model: in-domain accuracy {base['acc_id']:.3f}, out-of-domain accuracy {base['acc_ood']:.3f}, "
        f"entropy in-domain {base['entropy_id']:.3f}, out-of-domain {base['entropy_ood']:.3f}.",
        "",
        "| method | lr | seeds | ID acc | ID gain | OOD acc | forgetting | OOD style leak | entropy ID | entropy OOD "
        "| clip frac |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['lr']:g} | {r['seeds']} | {cell(r['acc_id'])} | {cell(r['id_gain'])} | "
            f"{cell(r['acc_ood'])} | {cell(r['forgetting'])} | {cell(r['ood_narrow_style'])} | "
            f"{cell(r['entropy_id'])} | {cell(r['entropy_ood'])} | {cell(r['clip_frac'])} |"
        )
    return "\n".join(lines)


def _method_colours(methods: list[str]) -> dict[str, Any]:
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10")
    return {m: cmap(i) for i, m in enumerate(methods)}


def plot_entropy(runs: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    lrs = sorted({r["lr"] for r in runs})
    methods = list(dict.fromkeys(r["method"]["name"] for r in runs))
    colours = _method_colours(methods)
    fig, axes = plt.subplots(2, len(lrs), figsize=(4 * len(lrs), 6.4), sharex=True, squeeze=False)
    for col, lr in enumerate(lrs):
        for row, (key, label) in enumerate((("entropy_id", "in-domain"), ("entropy_ood", "out-of-domain"))):
            ax = axes[row][col]
            for method in methods:
                group = [r for r in runs if r["lr"] == lr and r["method"]["name"] == method]
                if not group:
                    continue
                x = np.array([p["update"] for p in group[0]["curve"]])
                y = np.array([[p[key] for p in r["curve"]] for r in group])
                mean, std = y.mean(0), y.std(0)
                ax.plot(x, mean, color=colours[method], label=method)
                ax.fill_between(x, mean - std, mean + std, color=colours[method], alpha=0.2)
            ax.set_title(f"lr {lr:g}: {label}")
            ax.set_ylabel("token entropy (nats)")
            if row == 1:
                ax.set_xlabel("optimizer updates")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Held-out teacher-forced token entropy (seed mean ± 1 std)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tradeoff(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in rows))
    colours = _method_colours(methods)
    markers = "osD^v<>"
    lrs = sorted({r["lr"] for r in rows})
    fig, ax = plt.subplots(figsize=(6.4, 5))
    for r in rows:
        (x, xe), (y, ye) = r["retention"], r["id_gain"]
        ax.errorbar(
            x, y, xerr=xe, yerr=ye, color=colours[r["method"]], marker=markers[lrs.index(r["lr"]) % len(markers)],
            capsize=3, linestyle="none", label=f"{r['method']} lr {r['lr']:g}",
        )
    ax.set_xlabel("out-of-domain retention (final / pretrained OOD accuracy)")
    ax.set_ylabel("in-domain accuracy gain")
    ax.set_title("Gain vs retention, mean ± 1 std over seeds (marker = lr)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_clip(runs: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    psft = [r for r in runs if r["method"]["loss_mode"] == "psft"]
    if not psft:
        return
    lrs = sorted({r["lr"] for r in psft})
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for method in dict.fromkeys(r["method"]["name"] for r in psft):
        for i, lr in enumerate(lrs):
            group = [r for r in psft if r["lr"] == lr and r["method"]["name"] == method]
            if not group:
                continue
            x = [p["update"] for p in group[0]["curve"][1:]]
            y = np.array([[p["train_clip_frac"] for p in r["curve"][1:]] for r in group]).mean(0)
            ax.plot(x, y, marker="os^D"[i % 4], label=f"{method} lr {lr:g}")
    ax.set_xlabel("optimizer updates")
    ax.set_ylabel("clipped demonstration tokens (fraction)")
    ax.set_title("PSFT clip fraction per measuring interval (seed mean)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path, settings: dict[str, Any], pretrain_info: dict[str, Any], base: dict[str, Any],
                 wall_s: float | None, names: set[str] | None = None) -> Path:
    runs = load_runs(out / "runs", names)
    rows = summarise(runs)
    plot_entropy(runs, out / "entropy.png")
    plot_tradeoff(rows, out / "tradeoff.png")
    plot_clip(runs, out / "clip_fraction.png")
    (out / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    accuracy = ", ".join(f"{k} {v:.2f}" for k, v in pretrain_info["accuracy"].items())
    text = [
        "# PSFT toy-world study",
        "",
        f"Runs: {len(runs)}. " + (f"Wall time of this invocation: {wall_s / 60:.1f} min." if wall_s else ""),
        "",
        "## Settings",
        "",
        "```json",
        json.dumps(settings, indent=1),
        "```",
        "",
        f"Pretrained model (cached, {pretrain_info['train_time_s']:.0f} s to train): held-out greedy accuracy "
        f"per family: {accuracy}.",
        "",
        "## Results (final measurement; mean ± std over seeds)",
        "",
        "ID = held-out problems of the fine-tuning family; OOD = held-out problems of the other families "
        "(mean accuracy over families); forgetting = pretrained OOD accuracy − final OOD accuracy; "
        "OOD style leak = share of OOD answers written in the fine-tuning style's `... = ...` form; entropy = "
        "teacher-forced mean token entropy on fixed held-out demonstrations (ID in the narrow style, OOD in "
        "all styles); clip frac = share of demonstration tokens whose ratio exceeded 1 + eps_high, mean over updates.",
        "",
        table_markdown(rows, base),
        "",
        "![entropy](entropy.png)",
        "",
        "![trade-off](tradeoff.png)",
        "",
        "![clip fraction](clip_fraction.png)",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(text))
    return path
