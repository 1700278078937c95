"""Do both backends sample from the same distribution? A model whose generation_config.json sets
``top_k: 1`` (greedy), sampled at temperature 1, 4 samples per problem: the share of distinct answers.

    python -m benchmarks.sampling_pin [--problems 16] [--n 4] [--max-tokens 12]

"before" reproduces the client of the earlier code: requests carry temperature, top_p and max_tokens
only, to a server started with vLLM's default ``generation_config=auto`` (so the server fills top_k 1
from the model) and, in process, explicit SamplingParams with those three fields. "after" is the
current code: every sampling parameter pinned in each request, servers started with
``generation-config=vllm``. A random tiny model at temperature 1 almost never repeats a 12-token answer,
so a share near 1.0 means the model's top_k was not applied, 1/n means it was.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def build_model(root: Path) -> Path:
    from psft_assets.tiny_model import build_tiny_model

    model = build_tiny_model(root / "tiny-topk1")
    cfg_path = model / "generation_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(top_k=1, do_sample=True)
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return model


def questions(count: int) -> list[str]:
    return [f"What is {i} + {2 * i + 1}?" for i in range(count)]


def distinct_share(answers: list[list[str]], n: int) -> float:
    """Mean over problems of (distinct answers / n)."""
    return sum(len(set(a)) / n for a in answers) / len(answers)


def sample_served(base: str, model: str, qs: list[str], n: int, max_tokens: int, pinned: bool) -> list[list[str]]:
    from evaluation.jobs import Sampling

    out = []
    for q in qs:
        body = {"model": model, "messages": [{"role": "user", "content": q}], "n": n}
        if pinned:
            body.update(Sampling(temperature=1.0, top_p=1.0, max_tokens=max_tokens).request_fields())
        else:  # what the earlier client sent
            body.update(temperature=1.0, top_p=1.0, max_tokens=max_tokens)
        reply = httpx.post(base + "/v1/chat/completions", json=body, timeout=120).json()
        out.append([c["message"]["content"] for c in reply["choices"]])
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(model: Path, extra: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, RAY_ADDRESS="local", RAY_USAGE_STATS_ENABLED="0")
    cmd = [sys.executable, "-m", "evaluation.serve_app", f"model={model}", f"port={port}", "dtype=float32", *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited; see {log}")
        try:
            if httpx.get(base + "/v1/models", timeout=5).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise SystemExit("server not ready in 600 s")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def in_process(model: Path, qs: list[str], n: int, max_tokens: int) -> dict[str, float]:
    from vllm import LLM, SamplingParams

    from evaluation.jobs import Sampling
    from evaluation.vllm_local import engine_kwargs

    results = {}
    msgs = [[{"role": "user", "content": q}] for q in qs]
    for label, gen_config in (("before", "auto"), ("after", "vllm")):
        kwargs = engine_kwargs(str(model), {"dtype": "float32", "generation_config": gen_config})
        llm = LLM(**kwargs)
        if label == "before":
            params = SamplingParams(n=n, temperature=1.0, top_p=1.0, max_tokens=max_tokens)
        else:
            params = SamplingParams(n=n, **Sampling(temperature=1.0, top_p=1.0, max_tokens=max_tokens).request_fields())
        outs = llm.chat(msgs, params, use_tqdm=False)
        results[label] = distinct_share([[o.text for o in out.outputs] for out in outs], n)
        llm.llm_engine.engine_core.shutdown()
        del llm
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--problems", type=int, default=16)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=12)
    p.add_argument("--skip-inproc", action="store_true")
    args = p.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-1" if (os.cpu_count() or 1) > 1 else "0")
    root = Path(tempfile.mkdtemp(prefix="sampling_pin_"))
    model = build_model(root)
    qs = questions(args.problems)
    rows = []
    if not args.skip_inproc:
        for label, share in in_process(model, qs, args.n, args.max_tokens).items():
            rows.append(("in process", label, share))
    # Before: the server's default generation_config=auto, the earlier three-field requests.
    proc, base = serve(model, ["generation-config=auto"], root / "serve_before.log")
    try:
        name = httpx.get(base + "/v1/models").json()["data"][0]["id"]
        rows.append(
            (
                "Ray Serve",
                "before",
                distinct_share(sample_served(base, name, qs, args.n, args.max_tokens, False), args.n),
            )
        )
        rows.append(
            (
                "Ray Serve",
                "pinned request only",
                distinct_share(sample_served(base, name, qs, args.n, args.max_tokens, True), args.n),
            )
        )
    finally:
        stop(proc)
    proc, base = serve(model, [], root / "serve_after.log")  # this project's default: generation-config=vllm
    try:
        name = httpx.get(base + "/v1/models").json()["data"][0]["id"]
        rows.append(
            ("Ray Serve", "after", distinct_share(sample_served(base, name, qs, args.n, args.max_tokens, True), args.n))
        )
    finally:
        stop(proc)
    print(f"model generation_config.json: top_k=1; temperature 1, top_p 1, n={args.n}, {args.problems} problems")
    print(f"{'backend':<12} {'code':<22} distinct answers / n (mean over problems)")
    for backend, label, share in rows:
        print(f"{backend:<12} {label:<22} {share:.3f}")


if __name__ == "__main__":
    main()
