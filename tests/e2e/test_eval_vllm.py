"""Real vLLM generation with a tiny random model: in-process (``--backend vllm``) with resume after an
interrupted run, through the Ray Serve app started with ``serve run`` and the eval client, and every
checkpoint of a run with ``evaluation.over_training``.

The model's text is random; the tests check structure, counts, token accounting and resume. Its
generation_config.json sets ``top_k: 1`` (greedy): a backend that let the model's generation config fill
a sampling parameter would return identical samples, so distinct samples at temperature 1 show that the
pinned sampling set is what both backends use.

Default tier: the in-process test. Slow: the checkpoints test, then the Serve tests (in that order, so
the Serve replica is not idling on the cores while evaluation engines start).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from time_limits import limit
from trainer_harness import free_port, listening_sockets

ROOT = Path(__file__).resolve().parents[2]
MAX_TOKENS = 16
N = 3
API_KEY = "k-e2e-test"  # the Serve app's key: in `serve run`'s environment only, never its command line
AUTH = {"Authorization": f"Bearer {API_KEY}"}
QUESTIONS = ["What is 1+1?", "Solve 3x + 5 = 20.", "How many legs do 3 cows have?", "What is 17 * 23 - 9?"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-1" if (os.cpu_count() or 1) > 1 else "0")
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from psft_assets.tiny_model import build_tiny_model

    root = tmp_path_factory.mktemp("eval_vllm")
    model = build_tiny_model(root / "tiny")  # hidden 64, 2 heads: head_dim 32
    gen_config = json.loads((model / "generation_config.json").read_text())
    gen_config.update(top_k=1, do_sample=True)  # what a server with generation_config="auto" would apply
    (model / "generation_config.json").write_text(json.dumps(gen_config))
    test_file = root / "test.jsonl"
    with open(test_file, "w") as f:
        for i, q in enumerate(QUESTIONS):
            row = {
                "data_source": "toy",
                "prompt": [{"role": "user", "content": q}],
                "reward_model": {"ground_truth": str(i), "style": "rule"},
                "extra_info": {"split": "test", "index": i},
            }
            f.write(json.dumps(row) + "\n")
    return {"root": root, "model": model, "test_file": test_file}


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines() if line.strip()]


def _check_distinct(rows: list[dict]) -> None:
    """At temperature 1 a random model's samples differ; under the model's top_k: 1 they would not."""
    by_problem: dict[int, set[str]] = {}
    for r in rows:
        by_problem.setdefault(r["problem_id"], set()).add(r["response"])
    share = sum(len(v) for v in by_problem.values()) / (N * len(by_problem))
    assert all(len(v) >= 2 for v in by_problem.values()) and share > 0.8, by_problem


def weights_sha256(model: Path) -> str:
    """The run fingerprint's weights digest, recomputed from the bytes on disk: sha256 over
    ``<file name>\\0<sha256 of the file>\\n`` for each weight file (here ``model.safetensors`` alone)."""
    (weights,) = [p for p in model.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth")]
    file_sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    return hashlib.sha256(f"{weights.name}\0{file_sha}\n".encode()).hexdigest()


def _check_rows(rows: list[dict]) -> None:
    assert sorted((r["problem_id"], r["sample_index"]) for r in rows) == [
        (p, i) for p in range(len(QUESTIONS)) for i in range(N)
    ]
    for r in rows:
        assert r["error"] is None and isinstance(r["response"], str)
        assert 1 <= r["completion_tokens"] <= MAX_TOKENS
        assert r["finish_reason"] in ("stop", "length")
        assert (r["finish_reason"] == "length") == (r["completion_tokens"] == MAX_TOKENS)
        assert isinstance(r["correct"], bool)


def _eval_cmd(model: str, test_file: Path, out: Path, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "evaluation.eval", "--model", model, "--test_file", str(test_file)]
    cmd += ["--n", str(N), "--max_tokens", str(MAX_TOKENS), "--output", str(out), "--no-progress"]
    cmd += ["--temperature", "1", "--top_p", "1"]
    return cmd + list(extra)


def test_in_process_vllm_and_resume(assets: dict[str, Path]):
    out = assets["root"] / "inproc"
    cmd = _eval_cmd(str(assets["model"]), assets["test_file"], out, "--backend", "vllm")
    cmd += ["--engine-arg", "dtype=float32"]
    res = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = _rows(out)
    _check_rows(rows)
    _check_distinct(rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["n"] == N
    assert summary["sampling"]["top_k"] == -1 and summary["sampling"]["temperature"] == 1.0
    assert summary["weights_sha256"] == weights_sha256(assets["model"])
    assert set(summary["overall"]["pass@k"]) == {"1", "2", "3"}
    assert summary["overall"]["completion_tokens_total"] == sum(r["completion_tokens"] for r in rows)
    share = sum(r["finish_reason"] == "length" for r in rows) / len(rows)
    assert summary["overall"]["truncated_share"] == pytest.approx(share)

    # Simulate a crash after the first two problems: their rows survive, plus half a line.
    kept = [r for r in rows if r["problem_id"] < 2]
    text = "".join(json.dumps(r) + "\n" for r in kept) + '{"problem_id": 2, "sampl'
    (out / "samples.jsonl").write_text(text)
    res = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"{len(kept)} reused" in res.stderr
    after = _rows(out)
    assert after[: len(kept)] == kept  # finished samples are reused unchanged
    _check_rows(after)


@pytest.mark.slow
def test_accuracy_over_training_every_checkpoint(assets: dict[str, Path]):
    """evaluation.over_training on a run with two checkpoints: both evaluated, accuracy per step beside the run's
    log; a rerun starts no engine."""
    import shutil

    ckpt = assets["root"] / "run_ckpt"
    for step in (1, 2):
        shutil.copytree(assets["model"], ckpt / f"global_step_{step}" / "huggingface")
    (ckpt / "latest_checkpointed_iteration.txt").write_text("2")
    log = assets["root"] / "logs" / "psft.jsonl"
    cmd = [sys.executable, "-m", "evaluation.over_training", str(ckpt), "--test_file", str(assets["test_file"])]
    cmd += ["--train-log", str(log), "--n", "1", "--max_tokens", "8", "--engine-arg", "dtype=float32"]
    res = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [json.loads(x) for x in log.with_name("psft.eval.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]
    assert {"eval/all/avg@1", "eval/all/avg@1_stderr", "eval/toy/avg@1"} <= set(lines[0]["data"])
    for step in (1, 2):
        summary = json.loads((ckpt / "eval" / "test" / f"global_step_{step}" / "summary.json").read_text())
        assert summary["complete"] and summary["model"].endswith(f"global_step_{step}/huggingface")
    started = time.monotonic()
    res = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "evaluation.eval" not in res.stderr  # nothing started again
    assert time.monotonic() - started < limit(30)


@pytest.fixture(scope="module")
def serve_app(assets: dict[str, Path]) -> Iterator[str]:
    """``serve run evaluation.serve_app:build_app`` on a private local Ray instance and a free port."""
    port = free_port()
    serve_bin = Path(sys.executable).with_name("serve")
    cmd = [str(serve_bin), "run", "evaluation.serve_app:build_app", f"model={assets['model']}"]
    cmd += ["tensor-parallel-size=1", f"port={port}", "dtype=float32"]
    env = _env()
    env["RAY_ADDRESS"] = "local"  # never join another Ray cluster on this machine
    env["VLLM_API_KEY"] = API_KEY
    log = open(assets["root"] / "serve.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    assets["serve_pid"] = proc.pid  # type: ignore[assignment]
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (assets["root"] / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "Serve app not ready in 240 s"
            try:
                r = httpx.get(base + "/v1/models", timeout=5, headers=AUTH)
                if r.status_code == 200 and r.json()["data"]:
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(2)
        yield base
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # serve run shuts Serve and its Ray instance down
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


@pytest.mark.slow
def test_serve_app_is_openai_compatible_and_local(serve_app: str, assets: dict[str, Path]):
    models = httpx.get(serve_app + "/v1/models", timeout=10, headers=AUTH).json()
    assert [m["id"] for m in models["data"]] == ["tiny"]  # the model folder's basename
    # The key reached the replica through the deployment (the replica drops VLLM_API_KEY from its own
    # environment) and guards every route but /health, /invocations included.
    assert httpx.get(serve_app + "/health", timeout=10).status_code == 200
    for path in ("/v1/models", "/invocations", "/v1/psft/fingerprint"):
        assert httpx.post(serve_app + path, json={}, timeout=10).status_code == 401, path
    # What was served: the fingerprint of the files the replica loaded.
    fp = httpx.get(serve_app + "/v1/psft/fingerprint", timeout=10, headers=AUTH).json()
    assert fp["served_names"] == ["tiny"] and fp["root"] == str(assets["model"]) and fp["error"] is None
    assert fp["weights_sha256"] == weights_sha256(assets["model"])
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": 2, "max_tokens": 8}
    reply = httpx.post(serve_app + "/v1/chat/completions", json=body, timeout=60, headers=AUTH).json()
    assert len(reply["choices"]) == 2 and reply["usage"]["completion_tokens"] <= 16
    # A request that leaves top_k out: the server must not fill it from generation_config.json (top_k 1).
    body.update(n=4, temperature=1.0, max_tokens=12)
    texts = [
        c["message"]["content"]
        for c in httpx.post(serve_app + "/v1/chat/completions", json=body, timeout=60, headers=AUTH).json()["choices"]
    ]
    assert len(set(texts)) >= 3, texts
    port = int(serve_app.rsplit(":", 1)[1])
    # The Ray instance `serve run` got from the builder (GCS, raylet, agents, Serve's controller and
    # proxy, the replica) listens on loopback only, the HTTP port included.
    ray_sockets = listening_sockets(int(assets["serve_pid"]))
    http = [address for address in ray_sockets if address.endswith(f":{port}")]
    assert http == [f"127.0.0.1:{port}"], (http, ray_sockets)  # also proves the probe sees the tree
    exposed = {a: t for a, t in ray_sockets.items() if not a.startswith(("127.", "::ffff:127.", "::1:"))}
    # vLLM's engine in the replica opens torch.distributed's rendezvous store (rank 0's TCPStore), which
    # listens on every interface and has no bind-address option; no Ray process may.
    assert len(exposed) <= 1 and all("ServeReplica" in title for title in exposed.values()), exposed


@pytest.mark.slow
def test_client_through_serve(serve_app: str, assets: dict[str, Path]):
    import shutil

    env = {**_env(), "VLLM_API_KEY": API_KEY}
    # Other weights under --model-path: refused before any request, both fingerprints shown.
    other = assets["root"] / "other_model"
    shutil.copytree(assets["model"], other, ignore=shutil.ignore_patterns(".psft_fingerprint.json"))
    weights = other / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of the last tensor
    weights.write_bytes(bytes(data))
    cmd = _eval_cmd("tiny", assets["test_file"], assets["root"] / "refused", "--base-url", serve_app)
    res = subprocess.run(cmd + ["--model-path", str(other)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 2 and "serves other weights than --model-path" in res.stderr, res.stderr[-3000:]
    assert weights_sha256(other) in res.stderr and weights_sha256(assets["model"]) in res.stderr
    # The same files under another path (a copy on another node's disk) are accepted.
    copy = assets["root"] / "copy" / "tiny"
    shutil.copytree(assets["model"], copy, ignore=shutil.ignore_patterns(".psft_fingerprint.json"))
    out = assets["root"] / "served_copy"
    cmd = _eval_cmd("tiny", assets["test_file"], out, "--backend", "serve", "--base-url", serve_app)
    res = subprocess.run(
        cmd + ["--model-path", str(copy)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["weights_sha256"] == weights_sha256(assets["model"])

    out = assets["root"] / "served"
    cmd = _eval_cmd("tiny", assets["test_file"], out, "--backend", "serve", "--base-url", serve_app)
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = _rows(out)
    _check_rows(rows)
    _check_distinct(rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["backend"] == "serve" and summary["model"] == "tiny"
    assert summary["weights_sha256"] == weights_sha256(assets["model"])  # from the server's fingerprint
    # Rerun: everything is reused, no request is needed.
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "0 to generate" in res.stderr
    assert _rows(out) == rows
