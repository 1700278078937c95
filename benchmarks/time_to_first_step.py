"""Seconds from `python -m recipe.psft.main_psft ...` to its first logged training step, and where they go.

Builds the tiny random model and a toy data set, launches the real entry point (local Ray, FSDP
workers), and watches the file log: start-up cost is what a user waits before training begins. Each
run's breakdown is read from timestamps that already exist, so the run itself is not changed:

* driver before Ray: Python start, imports, config, run preparation, tokenising the data (until Ray's
  GCS writes its first log line);
* ray.init: GCS, raylet, Ray's agents, until the driver's core worker connects;
* worker spawn: until the raylet starts the FSDP workers' processes (``raylet.out``);
* worker import ray: until each worker's core worker is constructed (the slowest worker);
* actor creation: the worker class's imports (verl, torch, ...) and ``__init__`` (slowest worker);
* model init: from the actors' creation to the first step's start (FSDP, weights, optimizer, ...);
* first step: its own ``perf/step_time_s``.

``--checkout LABEL=PATH`` (repeatable) runs the same command with ``PYTHONPATH=PATH`` (a git worktree
of another commit, say) and interleaves the checkouts run by run, so machine drift hits them alike.
``--cfg-job-runs N`` also times ``--cfg job`` (print the config, no run) N times per checkout.
``--importtime`` adds one run per checkout under ``PYTHONPROFILEIMPORTTIME=1`` (not timed) and prints
the driver's and a worker's slowest top-level imports.

    python -m benchmarks.time_to_first_step [--workers 2] [--runs 2] [--warmup-runs 1]
    python -m benchmarks.time_to_first_step --runs 3 --checkout before=/tmp/wt --checkout after=. --cfg-job-runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
PHASES = (
    "driver before Ray",
    "ray.init",
    "worker spawn",
    "worker import ray",
    "actor creation",
    "model init",
    "first step",
)
RAY_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")


def ray_time(line: str) -> float | None:
    """A Ray log line's timestamp (local time, milliseconds) as a Unix time."""
    match = RAY_STAMP.match(line)
    if not match:
        return None
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def first_stamp(path: Path, needle: str = "") -> float | None:
    if not path.is_file():
        return None
    for line in path.read_text(errors="replace").splitlines():
        if needle in line and (stamp := ray_time(line)) is not None:
            return stamp
    return None


def session_dir(driver_pid: int) -> Path | None:
    root = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray"
    found = sorted(root.glob(f"session_*_{driver_pid}"))
    return found[-1] if found else None


def breakdown(start: float, first_step: float, step_s: float, session: Path | None) -> tuple[dict, dict]:
    """Seconds per phase (see the module docstring) and counts of Ray's worker processes."""
    phases = dict.fromkeys(PHASES, float("nan"))
    counts = {"workers started": 0, "task workers": 0, "idle": 0}
    phases["first step"] = step_s
    if session is None:
        return phases, counts
    logs = session / "logs"
    gcs = first_stamp(logs / "gcs_server.out")
    drivers = sorted(logs.glob("python-core-driver-*.log"))
    driver = first_stamp(drivers[0]) if drivers else None
    started = {}  # pid -> time the raylet started it
    for line in (
        (logs / "raylet.out").read_text(errors="replace").splitlines() if (logs / "raylet.out").is_file() else []
    ):
        if "Started worker process with pid" in line:
            pid = int(re.search(r"with pid (\d+)", line).group(1))
            started[pid] = ray_time(line)
    counts["workers started"] = len(started)
    actors = []
    for log in logs.glob("python-core-worker-*.log"):
        pid = int(log.stem.rsplit("_", 1)[1])
        created, finished = first_stamp(log, "Creating actor"), first_stamp(log, "Actor creation task finished")
        if created is None:
            # verl's get_master_addr_port runs as a task; Ray starts a spare worker alongside it.
            ran_task = any(":task_name:" in out.read_text(errors="replace") for out in logs.glob(f"worker-*-{pid}.out"))
            counts["task workers" if ran_task else "idle"] += 1
            continue
        actors.append((started.get(pid), first_stamp(log), created, finished))
    if gcs is not None:
        phases["driver before Ray"] = gcs - start
        if driver is not None:
            phases["ray.init"] = driver - gcs
    if actors and driver is not None and all(None not in a for a in actors):
        spawned = max(a[0] for a in actors)
        phases["worker spawn"] = spawned - driver
        phases["worker import ray"] = max(a[1] - a[0] for a in actors)
        phases["actor creation"] = max(a[3] - a[2] for a in actors)
        last_actor = max(a[3] for a in actors)
        phases["model init"] = (start + first_step - step_s) - last_actor
    return phases, counts


def run_once(checkout: Path, work: Path, model: Path, args, name: str, env_extra: dict | None = None) -> dict:
    log = work / f"{name}.jsonl"
    log.unlink(missing_ok=True)
    env = {**os.environ, "VERL_FILE_LOGGER_PATH": str(log), "PYTHONPATH": str(checkout), "PYTHONUNBUFFERED": "1"}
    env.update(env_extra or {})
    env.pop("RAY_ADDRESS", None)
    command = [
        sys.executable, "-m", "recipe.psft.main_psft", f"model.path={model}",
        f"data.train_files={work / 'train.parquet'}", "data.train_batch_size=8", "psft.mini_batch_size=4",
        f"trainer.n_gpus_per_node={args.workers}", "trainer.total_training_steps=2",
        "trainer.logger=[console,file]", f"trainer.default_local_dir={work / f'ckpt_{name}'}",
        "checkpoint.save_contents=[model,optimizer,extra]",
    ]  # fmt: skip
    output: list[tuple[float, str]] = []
    start_wall, start = time.time(), time.perf_counter()
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=work, text=True, errors="replace"
    )
    reader = threading.Thread(
        target=lambda: output.extend((time.perf_counter() - start, line.rstrip()) for line in proc.stdout), daemon=True
    )
    reader.start()
    seen = None
    while proc.poll() is None:
        if seen is None and log.is_file() and log.stat().st_size > 0:
            seen = time.perf_counter() - start
        time.sleep(0.05)
    total = time.perf_counter() - start
    reader.join(timeout=10)
    if proc.returncode or seen is None:
        tail = "\n".join(line for _, line in output[-40:])
        raise SystemExit(f"{name} failed with exit code {proc.returncode}:\n{tail}")
    steps = [json.loads(line) for line in log.read_text().splitlines()]
    step_s = float(steps[0]["data"].get("perf/step_time_s", float("nan")))
    phases, counts = breakdown(start_wall, seen, step_s, session_dir(proc.pid))
    metrics = {(e["step"], k): v for e in steps for k, v in e["data"].items() if not k.startswith(("perf/", "timing"))}
    return {
        "first_step": seen,
        "total": total,
        "phases": phases,
        "counts": counts,
        "output": output,
        "pid": proc.pid,
        "metrics": metrics,
    }


def time_cfg_job(checkout: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "recipe.psft.main_psft", "--cfg", "job"],
        env=env, cwd=checkout, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return time.perf_counter() - start


def import_profile(path_or_text: Path | str, top: int = 6) -> tuple[float, list[tuple[float, str]]]:
    """Total seconds of top-level imports in ``-X importtime`` output, and the ``top`` slowest."""
    text = path_or_text if isinstance(path_or_text, str) else path_or_text.read_text(errors="replace")
    rows = []
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and "import time:" in parts[0] and parts[1].strip().isdigit():
            if parts[2].startswith(" ") and not parts[2].startswith("  "):  # depth 0
                rows.append((int(parts[1]) / 1e6, parts[2].strip()))
    rows.sort(reverse=True)
    return sum(s for s, _ in rows), rows[:top]


def check_checkout(label: str, checkout: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    where = subprocess.run(
        [sys.executable, "-c", "import recipe.psft; print(recipe.psft.__file__)"],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not where.startswith(str(checkout.resolve())):
        raise SystemExit(f"{label}: recipe imports from {where}, not from {checkout}")
    commit = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(checkout), "status", "--porcelain", "recipe"], capture_output=True, text=True
    )
    state = " + uncommitted changes in recipe/" if dirty.stdout.strip() else ""
    print(f"{label}: {checkout} (commit {commit or '?'}{state}); recipe from {where}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=2, help="timed runs per checkout")
    parser.add_argument("--warmup-runs", type=int, default=1, help="untimed runs per checkout first (file caches)")
    parser.add_argument("--checkout", action="append", default=[], metavar="LABEL=PATH")
    parser.add_argument("--cfg-job-runs", type=int, default=0, help="also time `--cfg job`, N times per checkout")
    parser.add_argument("--importtime", action="store_true", help="one extra, untimed run per checkout: import profile")
    parser.add_argument("--show-output", action="store_true", help="print each run's timestamped driver output")
    args = parser.parse_args()
    checkouts = {}
    for item in args.checkout or [f"this={REPO}"]:
        label, _, path = item.partition("=")
        checkouts[label] = Path(path).resolve()
    for label, checkout in checkouts.items():
        check_checkout(label, checkout)

    from psft_assets.tiny_model import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="psft_first_step_"))
    model = build_tiny_model(work / "model")
    rows = [
        {"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}], "demonstration": f"{i} + {i} = {2 * i}."}
        for i in range(16)
    ]
    pd.DataFrame(rows).to_parquet(work / "train.parquet")

    labels = list(checkouts)
    for run in range(args.warmup_runs):
        for label in labels:
            result = run_once(checkouts[label], work, model, args, f"{label}_warmup{run}")
            print(f"{label} warm-up run: first step after {result['first_step']:.1f} s (not counted)", flush=True)
    results: dict[str, list[dict]] = {label: [] for label in labels}
    for run in range(args.runs):
        order = labels[run % len(labels) :] + labels[: run % len(labels)]
        for label in order:
            result = run_once(checkouts[label], work, model, args, f"{label}_{run}")
            results[label].append(result)
            phases = ", ".join(f"{k} {v:.1f}" for k, v in result["phases"].items())
            print(
                f"{label} run {run + 1}: first step logged after {result['first_step']:.1f} s; whole run (2 steps + "
                f"checkpoint) {result['total']:.1f} s; Ray worker processes {result['counts']['workers started']} "
                f"({result['counts']['task workers']} ran a task, {result['counts']['idle']} idle)\n    {phases}",
                flush=True,
            )
            if args.show_output:
                for stamp, line in result["output"]:
                    print(f"    {stamp:7.2f} {line[:200]}")

    print(f"\nmedian over {args.runs} run(s), seconds ({args.workers} workers)")
    print(f"{'phase':<22}" + "".join(f"{label:>14}" for label in labels))
    for phase in PHASES:
        cells = [statistics.median(r["phases"][phase] for r in results[label]) for label in labels]
        print(f"{phase:<22}" + "".join(f"{c:>14.1f}" for c in cells))
    firsts = {label: statistics.median(r["first_step"] for r in results[label]) for label in labels}
    print(f"{'command -> first step':<22}" + "".join(f"{firsts[label]:>14.1f}" for label in labels))
    if len(labels) > 1:
        base = labels[0]
        for label in labels[1:]:
            paired = [b["first_step"] / a["first_step"] for a, b in zip(results[base], results[label], strict=True)]
            print(
                f"{label} / {base}: {firsts[label] / firsts[base]:.3f} (medians); per run "
                + ", ".join(f"{r:.3f}" for r in paired)
            )
    print("median command -> first step: " + ", ".join(f"{label} {firsts[label]:.1f} s" for label in labels))
    for label in labels[1:]:  # the same run must log the same numbers whatever the start-up
        a, b = results[labels[0]][0]["metrics"], results[label][0]["metrics"]
        common = sorted(set(a) & set(b))
        differ = [key for key in common if a[key] != b[key]]
        print(
            f"logged metrics, {label} vs {labels[0]}: {len(common)} in common, {len(differ)} differ"
            + (f" ({', '.join(f'{k} step {s}' for s, k in differ[:6])})" if differ else "")
        )

    if args.cfg_job_runs:
        times: dict[str, list[float]] = {label: [] for label in labels}
        for run in range(args.cfg_job_runs):
            for label in labels[run % len(labels) :] + labels[: run % len(labels)]:
                times[label].append(time_cfg_job(checkouts[label]))
        print(
            "--cfg job, median seconds: "
            + ", ".join(
                f"{label} {statistics.median(times[label]):.1f} ({', '.join(f'{t:.1f}' for t in times[label])})"
                for label in labels
            )
        )

    if args.importtime:
        for label in labels:
            result = run_once(
                checkouts[label], work, model, args, f"{label}_importtime", {"PYTHONPROFILEIMPORTTIME": "1"}
            )
            driver_text = "\n".join(line for _, line in result["output"] if line.startswith("import time:"))
            total, top = import_profile(driver_text)
            print(
                f"\n{label}: driver imports {total:.1f} s (under -X importtime): "
                + ", ".join(f"{n} {s:.1f}" for s, n in top)
            )
            session = session_dir(result["pid"])
            for err in sorted((session / "logs").glob("worker-*-01000000-*.err"))[:1] if session else []:
                total, top = import_profile(err)
                print(f"{label}: a worker's imports {total:.1f} s: " + ", ".join(f"{n} {s:.1f}" for s, n in top))


if __name__ == "__main__":
    main()
