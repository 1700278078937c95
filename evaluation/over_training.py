"""Accuracy over training: evaluate every checkpoint of a run, resumably, and log accuracy per step.

    python -m evaluation.over_training CKPT_DIR --test_file data/test_aime24.parquet --n 8 [--watch] [eval flags]
    # CKPT_DIR is trainer.default_local_dir: it holds global_step_N/huggingface; with --watch new
    # checkpoints are evaluated as they appear.

A checkpoint is evaluated once it is complete by the rule a resume uses (``recipe.psft.checkpoints``:
its ``psft_checkpoint.json`` manifest, written after every other file, lists them all); checkpoints
written without manifests count up to ``latest_checkpointed_iteration.txt``.

Each checkpoint is evaluated by ``python -m evaluation.eval --backend vllm`` in its own process (a
fresh engine per checkpoint; vLLM does not give memory back within a process) into
``CKPT_DIR/eval/<test file>/global_step_N``; rerunning reuses every finished sample, so the command can be
stopped and restarted at any time. Every flag this command does not know is passed to evaluation.eval
(sampling, ``--engine-arg``, ...), and must stay the same across reruns (evaluation.eval refuses a
folder written with other settings).

After each checkpoint, accuracy per step is rewritten, complete checkpoints only, as verl file-log lines
``{"step": N, "data": {"eval/<source>/avg@n": .., "eval/<source>/avg@n_stderr": .., ...}}`` into
``--log`` (default: ``<training log>.eval.jsonl`` beside ``--train-log``, else
``CKPT_DIR/eval/<test file>/accuracy.jsonl``). ``scripts/plot_runs.py --accuracy-log LABEL=FILE`` draws it.

Forgetting beside accuracy: with ``--kl-initial MODEL_DIR --kl-data HELDOUT`` (an SFT-layout file) each
checkpoint's exact forward KL to the initial model (:mod:`evaluation.kl_to_initial`, cached in
``CKPT_DIR/eval/kl_to_initial/<data stem>.jsonl``) joins its log line as ``kl/to_initial``, and
``<log stem>.kl.png`` beside the log draws KL and accuracy against the step.

Exit status (``recipe/psft/exit_codes.py``): 0 every checkpoint complete, 6 some evaluation incomplete
(rerun), 130 interrupted, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from evaluation.kl_to_initial import (
    KL_KEY,
    KLInputError,
    KLSettings,
    add_kl_arguments,
    kl_for_models,
    load_rows,
    plot_kl,
)
from recipe.psft.checkpoints import readable_checkpoints
from recipe.psft.exit_codes import BAD_INPUT, INCOMPLETE, INTERRUPTED
from recipe.psft.files import atomic_write

WEIGHT_SUFFIXES = (".safetensors", ".bin")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m evaluation.over_training",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("ckpt_dir", type=Path, help="the run's checkpoint folder (trainer.default_local_dir)")
    p.add_argument("--test_file", "--test-file", dest="test_file", required=True)
    p.add_argument("--train-log", type=Path, default=None, help="the run's verl file log (VERL_FILE_LOGGER_PATH)")
    p.add_argument("--log", type=Path, default=None, help="where accuracy per step goes (see above)")
    p.add_argument("--output-root", type=Path, default=None, help="default: CKPT_DIR/eval/<test file stem>")
    p.add_argument("--watch", action="store_true", help="keep polling for new checkpoints until Ctrl-C")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between polls with --watch")
    p.add_argument("--until-step", type=int, default=None, help="with --watch: stop once this step is evaluated")
    p.add_argument("--kl-initial", type=Path, default=None, help="the initial model: adds KL to it per step")
    add_kl_arguments(p, "kl-")
    return p


def kl_settings(args: argparse.Namespace) -> KLSettings | None:
    """The KL options, or None without ``--kl-initial``; raises KLInputError for half of them or missing files."""
    if args.kl_initial is None and args.kl_data is None:
        return None
    if args.kl_initial is None or args.kl_data is None:
        raise KLInputError("--kl-initial and --kl-data go together")
    if not args.kl_initial.is_dir():
        raise KLInputError(f"--kl-initial {args.kl_initial}: no such folder")
    if not Path(args.kl_data).is_file():
        raise KLInputError(f"--kl-data {args.kl_data}: no such file")
    settings = KLSettings(args.kl_data, args.kl_max_rows, args.kl_max_length, args.kl_dtype, args.kl_device)
    from transformers import AutoTokenizer

    # Bad rows are found now, before any checkpoint is evaluated (the tokenisation is seconds).
    load_rows(settings, AutoTokenizer.from_pretrained(str(args.kl_initial), local_files_only=True))
    return settings


def kl_of_checkpoints(
    args: argparse.Namespace, settings: KLSettings | None, checkpoints: dict[int, Path]
) -> dict[int, float]:
    """step -> KL to the initial model, for every ready checkpoint (computed once, cached)."""
    if settings is None or not checkpoints:
        return {}
    out = args.ckpt_dir / "eval" / "kl_to_initial" / f"{Path(settings.data).stem}.jsonl"
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    results = kl_for_models(args.kl_initial, checkpoints, settings, out, log=log)
    return {step: r[KL_KEY] for step, r in results.items()}


def ready_checkpoints(ckpt_dir: Path) -> dict[int, Path]:
    """step -> its ``huggingface`` folder, for the checkpoints training itself would trust
    (:func:`recipe.psft.checkpoints.readable_checkpoints`: complete by their manifest, which is written
    after every other file) that hold a Hugging Face export with config and weights."""
    found = {}
    for state in readable_checkpoints(ckpt_dir):
        hf = state.path / "huggingface"
        if (hf / "config.json").is_file() and any(f.name.endswith(WEIGHT_SUFFIXES) for f in hf.iterdir()):
            found[state.step] = hf
    return found


def accuracy_entry(step: int, summary: dict[str, Any]) -> dict[str, Any]:
    """One verl file-log line from an evaluation summary."""
    n = summary["n"]
    data: dict[str, Any] = {}
    sections = {"all": summary["overall"], **summary.get("by_data_source", {})}
    for source, s in sections.items():
        data[f"eval/{source}/avg@{n}"] = s[f"avg@{n}"]
        data[f"eval/{source}/avg@{n}_stderr"] = s[f"avg@{n}_stderr"]
        data[f"eval/{source}/problems"] = s["problems"]
    return {"step": step, "data": data}


def write_accuracy_log(path: Path, out_root: Path, steps: list[int], kl: dict[int, float] | None = None) -> int:
    """Rewrite the accuracy log from every complete summary (atomically), with ``kl/to_initial`` for the
    steps in ``kl`` (a step with KL and no complete evaluation yet gets a line with KL alone); returns the
    lines with accuracy written."""
    lines, accurate = [], 0
    for step in steps:
        summary_path = out_root / f"global_step_{step}" / "summary.json"
        entry: dict[str, Any] = {"step": step, "data": {}}
        if summary_path.is_file():
            summary = json.loads(summary_path.read_text())
            if summary.get("complete"):
                entry = accuracy_entry(step, summary)
                accurate += 1
        if kl and step in kl:
            entry["data"][KL_KEY] = kl[step]
        if entry["data"]:
            lines.append(json.dumps(entry))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, "".join(line + "\n" for line in lines))
    return accurate


def is_complete(out_dir: Path) -> bool:
    summary = out_dir / "summary.json"
    if not summary.is_file():
        return False
    try:
        data = json.loads(summary.read_text())
    except ValueError:
        return False
    return bool(data.get("complete")) and not data.get("interrupted")


def evaluate_step(hf: Path, test_file: str, out_dir: Path, eval_args: list[str]) -> int:
    """Run (or resume) evaluation.eval on one checkpoint; its exit status."""
    cmd = [sys.executable, "-m", "evaluation.eval", "--backend", "vllm", "--model", str(hf)]
    cmd += ["--test_file", test_file, "--output", str(out_dir), "--no-progress", *eval_args]
    print(f"[steps] {hf.parent.name}: {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
    proc = subprocess.Popen(cmd)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        # The child got the same Ctrl-C (same process group) and saves what it finished.
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise


def main(argv: list[str] | None = None) -> int:
    args, eval_args = build_parser().parse_known_args(argv)
    if not Path(args.test_file).is_file():
        print(f"error: --test_file {args.test_file}: no such file", file=sys.stderr)
        return BAD_INPUT
    if any(a in ("--model", "--output", "--backend") for a in eval_args):
        print("error: --model, --output and --backend are set per checkpoint by this command", file=sys.stderr)
        return BAD_INPUT
    try:
        kl_config = kl_settings(args)
    except KLInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return BAD_INPUT
    stem = Path(args.test_file).stem
    out_root = args.output_root or args.ckpt_dir / "eval" / stem
    if args.log is not None:
        log = args.log
    elif args.train_log is not None:
        log = args.train_log.with_name(f"{args.train_log.stem}.eval.jsonl")
    else:
        log = out_root / "accuracy.jsonl"
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        print("[steps] note: SIGINT is ignored in this shell; stop with kill -TERM", file=sys.stderr)
    status = 0
    try:
        while True:
            checkpoints = ready_checkpoints(args.ckpt_dir)
            incomplete = 0
            for step, hf in checkpoints.items():
                out_dir = out_root / f"global_step_{step}"
                if is_complete(out_dir):
                    continue  # finished earlier: nothing to start
                code = evaluate_step(hf, args.test_file, out_dir, eval_args)
                if code == BAD_INPUT:
                    return BAD_INPUT
                if code != 0:
                    incomplete += 1
                written = write_accuracy_log(log, out_root, list(checkpoints))
                print(f"[steps] accuracy of {written} checkpoint(s) in {log}", file=sys.stderr, flush=True)
            kl = kl_of_checkpoints(args, kl_config, checkpoints)
            written = write_accuracy_log(log, out_root, list(checkpoints), kl)
            if kl:
                figure = plot_kl(
                    {s: {KL_KEY: v} for s, v in kl.items()},
                    log.with_name(f"{log.stem}.kl.png"),
                    log if written else None,
                )
                print(f"[steps] KL to the initial model of {len(kl)} checkpoint(s): {log}, {figure}", file=sys.stderr)
            status = INCOMPLETE if incomplete else 0
            done_until = args.until_step is not None and args.until_step in checkpoints and not incomplete
            if not args.watch or done_until:
                if not checkpoints:
                    print(f"error: no global_step_*/huggingface with weights in {args.ckpt_dir}", file=sys.stderr)
                    return BAD_INPUT
                print(f"[steps] {written} of {len(checkpoints)} checkpoint(s) evaluated: {log}", file=sys.stderr)
                return status
            time.sleep(args.interval)
    except KLInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return BAD_INPUT
    except KeyboardInterrupt:
        print("\n[steps] interrupted: rerun the same command to continue", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
