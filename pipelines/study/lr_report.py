"""Report of the learning-rate-vs-trust-region study: table, rule-generated readings, figures.

Every number is over pretrained models x fine-tuning seeds (:mod:`pipelines.study.stats`): the table
gives mean ± standard error (over pretrained models) with the spread between pretrained models (b) and
within one (w); the readings are chosen by the stated rule from paired differences, never written by hand.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from . import stats
from .pretrain import environment

# (key, label, higher is ...) of the per-run outcome measures
METRICS = (
    ("id_gain", "in-domain gain", "higher", "lower"),
    ("retention", "out-of-domain retention", "higher", "lower"),
    ("entropy_id", "held-out in-domain entropy", "higher", "lower"),
    ("entropy_ood", "held-out out-of-domain entropy", "higher", "lower"),
)
COLLAPSE = 0.5  # SFT's entropy "collapses" when its final in-domain entropy is below this share of the start


def outcomes(run: dict[str, Any]) -> dict[str, float]:
    """One run's outcome measures from its curve (first point = the pretrained model)."""
    start, last = run["curve"][0], run["curve"][-1]
    trained = run["curve"][1:]
    return {
        "id_gain": last["acc_id"] - start["acc_id"],
        "retention": last["acc_ood"] / start["acc_ood"] if start["acc_ood"] else float("nan"),
        "entropy_id": last["entropy_id"],
        "entropy_ood": last["entropy_ood"],
        "entropy_id_start": start["entropy_id"],
        "clip_frac": statistics.fmean(p.get("train_clip_frac", 0.0) for p in trained),
        "ratio_max": max(p.get("train_ratio_max", 1.0) for p in trained),
        "acc_id": last["acc_id"],
        "acc_ood": last["acc_ood"],
    }


def nested(runs: list[dict[str, Any]]) -> dict[str, dict[str, stats.Nested]]:
    """condition -> metric -> {pretrain seed: {seed: value}}."""
    out: dict[str, dict[str, stats.Nested]] = {}
    for run in runs:
        for key, value in outcomes(run).items():
            out.setdefault(run["condition"], {}).setdefault(key, {}).setdefault(run["pretrain_seed"], {})[
                run["seed"]] = value
    return out


def readings(data: dict[str, dict[str, stats.Nested]]) -> list[tuple[str, list[str]]]:
    """The questions and their rule-generated answers (only those whose conditions ran)."""
    have = set(data)
    sections: list[tuple[str, list[str]]] = []

    def diff(a: str, b: str, key: str) -> stats.Spread:
        return stats.paired_difference(data[a][key], data[b][key])

    if {"psft_k8_lo", "sft_1x_hi", "sft_k8_lo"} <= have:
        lines = [
            stats.attribute(diff("psft_k8_lo", "sft_1x_hi", key), diff("psft_k8_lo", "sft_k8_lo", key),
                            diff("sft_k8_lo", "sft_1x_hi", key), label)
            for key, label, _, _ in METRICS
        ]
        sections.append(("The paper's pairing: PSFT k=8 at the low lr against SFT with one update per step at the "
                         "high lr; where does the gap come from?", lines))
    for tier, lr_word in (("lo", "low"), ("hi", "high")):
        a, b = f"psft_k8_{tier}", f"sft_k8_{tier}"
        if {a, b} <= have:
            sections.append((f"The trust region alone, at the {lr_word} lr ({a} against {b}: same mini-batches, "
                             "same order, same updates)",
                             [stats.verdict(diff(a, b, k), a, b, label, hi, lo) for k, label, hi, lo in METRICS]))
    for tier, lr_word in (("lo", "low"), ("hi", "high")):
        base = f"psft_k8_{tier}"
        for variant, what in (("noclip", "no clip"), ("never", "never refreshed snapshot"), ("k16", "k = 16")):
            other = f"psft_{variant}_{tier}"
            if {base, other} <= have:
                sections.append((f"Ablation at the {lr_word} lr: {what} ({other} against {base})",
                                 [stats.verdict(diff(other, base, k), other, base, label, hi, lo)
                                  for k, label, hi, lo in METRICS]))
    if "sft_1x_hi" in have:
        final = stats.two_level(data["sft_1x_hi"]["entropy_id"])
        start = stats.two_level(data["sft_1x_hi"]["entropy_id_start"])
        collapsed = final.mean < COLLAPSE * start.mean
        word = "collapses" if collapsed else "does not collapse"
        sections.append(("Does SFT's entropy collapse in this regime?", [
            f"The paper's SFT {word}: held-out in-domain entropy {start.mean:.3f} before, {final.cell()} after "
            f"(rule: collapse = final below {COLLAPSE:.0%} of the pretrained model's)."
        ]))
    return sections


def table(data: dict[str, dict[str, stats.Nested]], cfg, conditions) -> str:
    lines = [
        "| condition | lr | updates | in-domain gain | OOD retention | entropy ID | entropy OOD | clip frac "
        "| max ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in cfg.conditions:
        if name not in data:
            continue
        c = conditions[name]
        fcfg = cfg.finetune_config(c)
        cells = [stats.two_level(data[name][k]).cell_full() for k, *_ in METRICS]
        clip = stats.two_level(data[name]["clip_frac"]).cell(4)
        ratio = max(v for by_seed in data[name]["ratio_max"].values() for v in by_seed.values())
        lines.append(f"| {name} | {cfg.lr(c.lr_tier):g} | {fcfg.updates} | " + " | ".join(cells) +
                     f" | {clip} | {ratio:.3g} |")
    return "\n".join(lines)


def _colours(names: list[str]) -> dict[str, Any]:
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab20")
    return {n: cmap(i % 20) for i, n in enumerate(names)}


def plot_outcomes(data: dict[str, dict[str, stats.Nested]], names: list[str], path: Path) -> None:
    """Per metric: each condition's grand mean with ±2 SE (thick), ±1 within-pretrain sd (thin), and
    each pretrained model's mean as a dot (their scatter is the between-pretrain spread)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS) + 1, figsize=(4.2 * (len(METRICS) + 1), 4.8), sharey=True)
    keys = [(k, label) for k, label, *_ in METRICS] + [("clip_frac", "clip fraction")]
    markers = "o^sDv"
    for ax, (key, label) in zip(axes, keys, strict=True):
        for y, name in enumerate(names):
            s = stats.two_level(data[name][key])
            ax.errorbar(s.mean, y, xerr=s.sd_within, color="0.6", lw=1, capsize=2)
            ax.errorbar(s.mean, y, xerr=2 * s.se, color="C0", lw=3, marker="|", ms=12)
            for i, (_, by_seed) in enumerate(sorted(data[name][key].items())):
                ax.plot(statistics.fmean(by_seed.values()), y + 0.18, markers[i % len(markers)], color="C3", ms=4)
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_yticks(range(len(names)), names, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle("Final outcomes: blue = mean ± 2 SE over pretrained models; grey = ± 1 sd within a pretrained "
                 "model; red = each pretrained model's mean", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(runs: list[dict[str, Any]], names: list[str], key: str, ylabel: str, path: Path,
                train: bool = False) -> None:
    """``key`` against epochs, mean over all (pretrain, seed) runs with a ±1 sd band per condition."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    colours = _colours(names)
    panels = [("lo", "low lr"), ("hi", "high lr")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    for ax, (tier, title) in zip(axes, panels, strict=True):
        for name in names:
            group = [r for r in runs if r["condition"] == name]
            if not group or not (name.endswith(f"_{tier}")):
                continue
            cfg = group[0]["config"]
            points = group[0]["curve"][1:] if train else group[0]["curve"]
            x = np.array([p["update"] * cfg["mini_batch"] / cfg["train_size"] for p in points])
            y = np.array([[p.get(key, 0.0) for p in (r["curve"][1:] if train else r["curve"])] for r in group])
            mean, sd = y.mean(0), y.std(0)
            style = "--" if name.startswith("sft") else "-"
            ax.plot(x, mean, style, color=colours[name], label=name)
            ax.fill_between(x, mean - sd, mean + sd, color=colours[name], alpha=0.15)
        ax.set_title(title)
        ax.set_xlabel("epochs over the fine-tuning set")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel(ylabel)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_lr_report(out: Path, cfg, infos: dict[int, dict], base_evals: dict[int, dict], names: set[str],
                    wall_s: float | None, pretrain_s: float | None = None, note: str = "") -> Path:
    from dataclasses import asdict

    from .lr_study import CONDITIONS

    runs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json")) if p.name in names]
    data = nested(runs)
    ran = [n for n in cfg.conditions if n in data]
    stem = "lr_vs_trust_region"
    plot_outcomes(data, ran, out / f"{stem}_outcomes.png")
    plot_curves(runs, ran, "entropy_id", "held-out in-domain entropy (nats/token)", out / f"{stem}_entropy.png")
    plot_curves(runs, ran, "acc_ood", "out-of-domain accuracy", out / f"{stem}_ood.png")
    plot_curves([r for r in runs if r["method"]["loss_mode"] == "psft"], ran, "train_clip_frac",
                "clipped demonstration tokens (fraction)", out / f"{stem}_clip.png", train=True)
    env = next(iter(infos.values())).get("environment") or environment()
    pre_lines = [
        f"| {p} | {infos[p]['train_time_s']:.0f} | {base_evals[p]['acc_id']:.3f} | {base_evals[p]['acc_ood']:.3f} | "
        f"{base_evals[p]['entropy_id']:.3f} | {base_evals[p]['entropy_ood']:.3f} | "
        + ", ".join(f"{k} {v:.2f}" for k, v in infos[p]["accuracy"].items()) + " |"
        for p in sorted(infos)
    ]
    summary = {
        name: {k: asdict(stats.two_level(v)) for k, v in metrics.items()} for name, metrics in data.items()
    }
    (out / f"{stem}_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    counts = {n: sum(len(s) for s in data[n]["id_gain"].values()) for n in ran}
    text = [
        "# Toy world: is the paper's SFT-vs-PSFT gap the trust region or the learning rate?",
        "",
        "Command: `bash scripts/study_lr.sh` (`python -m pipelines.study.lr_study`). "
        f"Runs: {len(runs)} ({len(cfg.pretrain_seeds)} pretrained models x {len(cfg.seeds)} fine-tuning seeds x "
        f"{len(ran)} conditions; {min(counts.values(), default=0)}-{max(counts.values(), default=0)} per condition). "
        + (f"Wall time of this invocation: {wall_s / 60:.1f} min" if wall_s else "")
        + (f" (of which pretraining {pretrain_s / 60:.1f} min)." if wall_s and pretrain_s is not None else "")
        + (f" {note}" if note else ""),
        "",
        f"Machine: {env['cpu']}, torch {env['torch']} ({env['cpu_capability']}), {env['threads']} torch thread "
        "per process, 2 processes.",
        "",
        "## Design",
        "",
        f"Fine-tuning set: {cfg.train_size} addition problems in one narrow style, {cfg.epochs} epochs "
        f"(the paper's SFT makes {cfg.sft_steps} steps of one update; a small set seen many times, the regime "
        f"where SFT's entropy collapses). Batch {cfg.batch} per step; the k=8 conditions make 8 updates of "
        f"{cfg.batch // 8} per step. High lr {cfg.lr_hi:g}, low lr {cfg.lr('lo'):g} (÷{cfg.lr_ratio:g}, the paper's "
        "2e-5 / 1e-6). Linear warm-up over the first 5% of updates, then constant; AdamW, gradient clip 1.0; "
        "PSFT clip 1 - 0.2 / 1 + 0.28. The matched conditions see the same mini-batches in the same order "
        "(same fine-tuning seed), so differences are taken per (pretrained model, seed).",
        "",
        "| condition | what |",
        "|---|---|",
        *[f"| {n} | {CONDITIONS[n].label} |" for n in ran],
        "",
        f"Model {asdict(cfg.size)}; pretraining {asdict(cfg.pretrain) | {'seed': list(cfg.pretrain_seeds)}}.",
        "",
        "Pretrained models (held-out greedy accuracy; ID = the fine-tuning family in its narrow style):",
        "",
        "| pretraining seed | train s | ID acc | OOD acc | entropy ID | entropy OOD | per family |",
        "|---|---|---|---|---|---|---|",
        *pre_lines,
        "",
        "## Results",
        "",
        "Final measurement. Each cell: mean ± standard error over pretrained models (b = standard deviation "
        "between pretrained models' means, w = pooled standard deviation between fine-tuning seeds within one "
        "pretrained model). In-domain gain = final - pretrained held-out accuracy on the fine-tuning family; "
        "OOD retention = final / pretrained out-of-domain accuracy (mean over the five other families); entropy = "
        "teacher-forced mean token entropy on fixed held-out demonstrations; clip frac = share of demonstration "
        "tokens with ratio > 1.28, mean over updates (0 by construction without a snapshot or without clip); max "
        "ratio = the largest pi/pi_old seen on any token in any run.",
        "",
        table(data, cfg, CONDITIONS),
        "",
        "![outcomes](lr_vs_trust_region_outcomes.png)",
        "",
        "![entropy](lr_vs_trust_region_entropy.png)",
        "",
        "![out-of-domain accuracy](lr_vs_trust_region_ood.png)",
        "",
        "![clip fraction](lr_vs_trust_region_clip.png)",
        "",
        "## Readings (generated from the numbers)",
        "",
        f"Rule: a paired difference (same pretrained model, same fine-tuning seed) is read as real when its mean "
        f"exceeds {stats.SIGNIFICANCE:g} standard errors, the standard error being the standard deviation of the "
        f"per-pretrained-model mean differences / sqrt(number of pretrained models), and is at least "
        f"{stats.MIN_EFFECT:g} (one point of accuracy or retention, 0.01 nats); otherwise \"no difference "
        "within the spread\". The paper's gap splits exactly into trust region (PSFT k=8 low lr - SFT k=8 low lr) "
        "plus learning rate and update count (SFT k=8 low lr - SFT one update high lr); each part gets the same rule.",
        "",
    ]
    for question, answers in readings(data):
        text += [f"**{question}**", "", *[f"- {a}" for a in answers], ""]
    text += [
        "## Determinism",
        "",
        "Pretraining runs with `torch.use_deterministic_algorithms(True)` and one torch thread per process: the same "
        "settings and seed give bit-identical weights on one machine (`tests/unit/test_study_stats.py` pretrains "
        "a tiny model twice and compares the state dicts exactly). Between machines they need not: oneDNN/MKL "
        "choose different vector kernels per CPU (here: " + env["cpu_capability"] + ") and the float rounding "
        "differs in the last bits; 1,000+ updates amplify that into a different model. That is why every "
        "number here is over several pretrained models: the spread between them is part of the answer.",
        "",
    ]
    path = out / f"{stem}.md"
    path.write_text("\n".join(text))
    return path
