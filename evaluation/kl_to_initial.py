"""Forgetting as a number: the exact forward KL from the initial model to each checkpoint,
KL(pi_0 || pi_theta), over the full vocabulary, teacher-forced on held-out demonstrations (the measure of
RL's Razor and GFT), averaged per demonstration token.

    python -m evaluation.kl_to_initial --initial MODEL_DIR --checkpoints CKPT_DIR --data heldout.parquet \\
        [--max-rows 256] [--max-length 4096] [--accuracy-log CKPT_DIR/eval/<test>/accuracy.jsonl]
    python -m evaluation.kl_to_initial --initial MODEL_DIR --model OTHER_DIR [--model ...] --data heldout.parquet

``--data`` is a file in the recipe's SFT layout (``prompt`` + ``demonstration``, or verl's ``messages``;
parquet, JSONL, JSON or CSV), tokenised exactly as training tokenises it (:mod:`recipe.psft.dataset`: the
initial model's chat template, the loss mask on the demonstration and its end-of-turn token). For each
demonstration token t, both models see the same prefix and

    KL_t = sum over the whole vocabulary v of pi_0(v | prefix) * (log pi_0(v | prefix) - log pi_theta(v | prefix))

(log-softmax in float32); the number reported is the sum of KL_t over every demonstration token of the
file divided by their count. Plain ``transformers`` forward passes (no vLLM, no Ray), one row at a time
(no padding), with logits computed at the demonstration positions only. Both models are held in memory:
a 7B model needs about 2 x 30 GB in float32 (``--dtype bfloat16`` halves it, at the cost of bfloat16
rounding in the logits, which biases small KL values).

Checkpoints are those :func:`recipe.psft.checkpoints.readable_checkpoints` trusts (the resume rule) with a
Hugging Face export (``global_step_N/huggingface``), as ``evaluation.over_training`` reads them. Results
go to ``--output`` (default ``CKPT_DIR/eval/kl_to_initial/<data stem>.jsonl``), one line per step, keyed
by the initial and checkpoint weight fingerprints, the data file's hash and the settings: a rerun computes
only what is missing or changed. The figure (``--plot``, default the output with ``.png``) draws KL against
the step, beside accuracy when ``--accuracy-log`` (an ``evaluation.over_training`` log) is given.
``evaluation.over_training --kl-initial MODEL_DIR --kl-data FILE`` does the same per checkpoint and adds
``kl/to_initial`` to its accuracy log.

Exit status: 0 done, 2 bad input (a missing or unreadable file, a bad row, no checkpoint).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipe.psft.exit_codes import BAD_INPUT, OK
from recipe.psft.files import atomic_write, file_sha256, model_fingerprint

KL_KEY = "kl/to_initial"  # the accuracy log's key (evaluation.over_training)


class KLInputError(ValueError):
    """Bad input, found before any model is run."""


@dataclass(frozen=True)
class KLSettings:
    """What decides the number besides the two models: recorded with each result."""

    data: str
    max_rows: int = 256
    max_length: int = 4096
    dtype: str = "float32"
    device: str = "auto"

    def key(self) -> dict[str, Any]:
        data = Path(self.data)
        return {
            "data_sha256": file_sha256(data),
            "max_rows": self.max_rows,
            "max_length": self.max_length,
            "dtype": self.dtype,
        }


def add_kl_arguments(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """The data and size options, shared with ``evaluation.over_training`` (there under ``--kl-``)."""
    p.add_argument(f"--{prefix}data", required=not prefix, default=None, help="held-out demonstrations (SFT layout)")
    p.add_argument(f"--{prefix}max-rows", type=int, default=256, help="first N rows of the file (default 256)")
    p.add_argument(f"--{prefix}max-length", type=int, default=4096, help="tokens per row; longer rows keep their start")
    p.add_argument(f"--{prefix}dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument(f"--{prefix}device", default="auto", help="cuda, cpu or auto (cuda when available)")


def _device(name: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def load_rows(settings: KLSettings, tokenizer: Any) -> list[tuple[Any, Any]]:
    """(input_ids, demonstration positions) per row: the positions whose logits predict a demonstration
    token (position t-1 predicts token t). Tokenised by the training dataset's code."""
    import torch

    from recipe.psft.dataset import DemonstrationDataset
    from recipe.psft.rows import DataError

    if settings.max_rows < 1 or settings.max_length < 2:
        raise KLInputError(f"--max-rows {settings.max_rows} / --max-length {settings.max_length}: expected >= 1 / >= 2")
    if not Path(settings.data).is_file():
        raise KLInputError(f"--data {settings.data}: no such file")
    config = {"max_length": settings.max_length, "truncation": "right"}
    try:
        dataset = DemonstrationDataset(settings.data, tokenizer, config, max_samples=settings.max_rows)
    except DataError as e:
        raise KLInputError(str(e)) from e
    rows = []
    for i in range(len(dataset)):
        item = dataset[i]
        mask = item["loss_mask"]
        positions = torch.nonzero(mask[1:], as_tuple=False).flatten()  # logits at t-1 predict token t
        if len(positions):
            rows.append((item["input_ids"], positions))
    if not rows:
        raise KLInputError(f"{settings.data}: no demonstration tokens in the first {settings.max_rows} rows")
    return rows


def load_model(path: str | Path, dtype: str, device: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype), local_files_only=True)
    return model.to(device).eval()


def _log_probs(model: Any, input_ids: Any, positions: Any) -> Any:
    """float32 log-softmax over the vocabulary at ``positions`` (logits computed there only)."""
    import torch

    logits = model(input_ids=input_ids[None], logits_to_keep=positions).logits[0]
    return torch.log_softmax(logits.float(), dim=-1)


def forward_kl(initial: Any, model: Any, rows: list[tuple[Any, Any]], device: str) -> tuple[float, int]:
    """(KL(pi_initial || pi_model) summed over every demonstration token / their count, that count)."""
    import torch

    total, tokens = 0.0, 0
    with torch.inference_mode():
        for input_ids, positions in rows:
            ids, pos = input_ids.to(device), positions.to(device)
            lp0 = _log_probs(initial, ids, pos)
            lp = _log_probs(model, ids, pos)
            if lp0.shape != lp.shape:
                raise KLInputError(f"vocabularies differ: {lp0.shape[-1]} logits (initial) vs {lp.shape[-1]}")
            total += float((lp0.exp() * (lp0 - lp)).sum(dim=-1).double().sum())
            tokens += int(pos.numel())
    return total / tokens, tokens


def read_results(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a damaged line is computed again
    return out


def kl_for_models(
    initial: str | Path, models: dict[int, Path], settings: KLSettings, output: Path, log: Any = print
) -> dict[int, dict[str, Any]]:
    """KL to ``initial`` for each ``step -> model folder``, reusing results in ``output`` computed with the
    same weights, data and settings; ``output`` is rewritten (atomically) after each new step."""
    key = settings.key()
    initial_fp = model_fingerprint(initial)["weights_sha256"]
    done = {r["step"]: r for r in read_results(output)}
    wanted = {}
    for step, folder in sorted(models.items()):
        ident = {
            **key,
            "initial_weights_sha256": initial_fp,
            "weights_sha256": model_fingerprint(folder)["weights_sha256"],
        }
        old = done.get(step)
        if old is None or any(old.get(k) != v for k, v in ident.items()):
            wanted[step] = (folder, ident)
    if wanted:
        from transformers import AutoTokenizer

        device = _device(settings.device)
        tokenizer = AutoTokenizer.from_pretrained(str(initial), local_files_only=True)
        rows = load_rows(settings, tokenizer)
        base = load_model(initial, settings.dtype, device)
        for step, (folder, ident) in wanted.items():
            model = load_model(folder, settings.dtype, device)
            kl, tokens = forward_kl(base, model, rows, device)
            del model
            done[step] = {"step": step, KL_KEY: kl, "tokens": tokens, "rows": len(rows), "model": str(folder), **ident}
            output.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(output, "".join(json.dumps(done[s]) + "\n" for s in sorted(done)))
            log(
                f"[kl] step {step}: KL(pi_0 || pi_theta) = {kl:.6g} nats/token over {tokens} tokens of {len(rows)} rows"
            )
    return {step: done[step] for step in models}


def plot_kl(results: dict[int, dict[str, Any]], out: Path, accuracy_log: Path | None = None) -> Path:
    """KL to the initial model against the step; with an accuracy log, accuracy (all sources) beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    accuracy: list[tuple[int, float, float]] = []
    if accuracy_log is not None:
        from pipelines.plots import read_accuracy_log

        accuracy = read_accuracy_log(accuracy_log).get("all", [])
    panels = 2 if accuracy else 1
    fig, axes = plt.subplots(1, panels, figsize=(4.4 * panels, 3.4), squeeze=False)
    steps = sorted(results)
    ax = axes[0][0]
    ax.plot(steps, [results[s][KL_KEY] for s in steps], marker="o")
    ax.set(xlabel="step", ylabel="KL(pi_0 || pi_theta) per token (nats)", title="Forgetting: KL to the initial model")
    if accuracy:
        ax = axes[0][1]
        xs, ys, es = zip(*accuracy)
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3)
        ax.set(xlabel="step", ylabel="accuracy (avg@n)", title="Accuracy")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m evaluation.kl_to_initial",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--initial", type=Path, required=True, help="the model training started from (HF folder)")
    p.add_argument("--checkpoints", type=Path, default=None, help="a run's trainer.default_local_dir")
    p.add_argument("--model", type=Path, action="append", default=[], help="a model folder (repeatable; step = order)")
    add_kl_arguments(p)
    p.add_argument("--output", type=Path, default=None, help="results (JSONL); see above for the default")
    p.add_argument("--accuracy-log", type=Path, default=None, help="an evaluation.over_training log to plot beside")
    p.add_argument("--plot", type=Path, default=None, help="the figure (default: the output with .png)")
    return p


def main(argv: list[str] | None = None) -> int:
    from evaluation.over_training import ready_checkpoints

    args = build_parser().parse_args(argv)
    settings = KLSettings(args.data, args.max_rows, args.max_length, args.dtype, args.device)
    try:
        if not args.initial.is_dir():
            raise KLInputError(f"--initial {args.initial}: no such folder")
        if (args.checkpoints is None) == (not args.model):
            raise KLInputError("give --checkpoints DIR or --model DIR (one or more), not both")
        if args.checkpoints is not None:
            models = ready_checkpoints(args.checkpoints)
            if not models:
                raise KLInputError(
                    f"--checkpoints {args.checkpoints}: no complete global_step_*/huggingface with weights"
                )
            default_out = args.checkpoints / "eval" / "kl_to_initial" / f"{Path(args.data).stem}.jsonl"
        else:
            models = {i + 1: m for i, m in enumerate(args.model)}
            default_out = Path("outputs") / "kl_to_initial" / f"{Path(args.data).stem}.jsonl"
        if not Path(args.data).is_file():
            raise KLInputError(f"--data {args.data}: no such file")
        if args.accuracy_log is not None and not args.accuracy_log.is_file():
            raise KLInputError(f"--accuracy-log {args.accuracy_log}: no such file")
        output = args.output or default_out
        results = kl_for_models(args.initial, models, settings, output, log=lambda m: print(m, file=sys.stderr))
    except (KLInputError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return BAD_INPUT
    figure = plot_kl(results, args.plot or output.with_suffix(".png"), args.accuracy_log)
    for step, r in sorted(results.items()):
        print(json.dumps({"step": step, KL_KEY: r[KL_KEY], "tokens": r["tokens"]}))
    print(f"[kl] results: {output}\n[kl] figure: {figure}", file=sys.stderr)
    return OK


__all__ = ["KLSettings", "KL_KEY", "add_kl_arguments", "forward_kl", "kl_for_models", "plot_kl"]

if __name__ == "__main__":
    sys.exit(main())
