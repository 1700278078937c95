"""Two Ray nodes on this host, PSFT with trainer.nnodes=2 through scripts/submit_job.sh, a node lost mid-run.

What the README's multi-node section describes, for real: a head and a worker node started with
`ray start` on 127.0.0.1 (one logical CPU each, so verl's two per-node placement groups land on
different nodes), an uninterrupted 2-node run, then the same run with the worker node killed after
step 2 (its `ray start` process group, as a lost machine), the node brought back, the job resubmitted:
it resumes and ends with the uninterrupted run's weights.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faults.fault_harness import assert_same_weights
from trainer_harness import REPO

pytestmark = pytest.mark.slow

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Node:
    """One `ray start --block` process group (stopped by its PID, never by `ray stop`)."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str]):
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "ray"), "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1", *args],
            env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=60)


def wait_for_nodes(env: dict[str, str], count: int, timeout: float = 180) -> None:
    probe = "import ray; ray.init(); print(sum(n['Alive'] for n in ray.nodes()))"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(2)
    raise AssertionError(f"the cluster did not reach {count} alive nodes")


@pytest.fixture
def cluster(tmp_path):
    gcs, dashboard = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    temp = Path("/tmp") / f"psft_mn_{os.getpid()}"  # Ray's socket paths must stay short
    head = Node(["--head", f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                 f"--temp-dir={temp}"], tmp_path / "head.log", env)  # fmt: skip
    nodes = {"head": head}

    def start_worker() -> Node:
        nodes["worker"] = Node([f"--address=127.0.0.1:{gcs}"], tmp_path / f"worker_{time.time_ns()}.log", env)
        return nodes["worker"]

    env_gcs = {**env, "RAY_ADDRESS": f"127.0.0.1:{gcs}"}
    try:
        wait_for_nodes(env_gcs, 1)  # the head's GCS first: a worker node started earlier gives up
        start_worker()
        wait_for_nodes(env_gcs, 2)
        yield {"env": {**env, "RAY_ADDRESS": f"http://127.0.0.1:{dashboard}"}, "nodes": nodes,
               "start_worker": start_worker, "env_gcs": env_gcs}  # fmt: skip
    finally:
        for node in nodes.values():
            node.kill()
        shutil.rmtree(temp, ignore_errors=True)


def submit(cluster, run_dir: Path, tiny_model: Path, train: Path) -> subprocess.Popen:
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**cluster["env"], "PYTHON": sys.executable, "VERL_FILE_LOGGER_PATH": str(run_dir / "metrics.jsonl"),
           "ENV_VARS": "VERL_FILE_LOGGER_PATH RAY_DEDUP_LOGS=0"}  # fmt: skip
    return subprocess.Popen(
        ["bash", str(REPO / "scripts" / "submit_job.sh"), f"model.path={tiny_model}", f"data.train_files={train}",
         "trainer.nnodes=2", "trainer.n_gpus_per_node=1", "data.train_batch_size=8", "psft.mini_batch_size=4",
         "psft.shuffle_mini_batches=true", "data.max_length=512", "trainer.total_training_steps=4",
         "trainer.save_freq=1", "trainer.logger=[console,file]", "optim.lr=1e-3", "optim.lr_warmup_steps=0",
         "model.enable_gradient_checkpointing=false", f"trainer.default_local_dir={run_dir / 'ckpt'}"],
        env=env, stdout=open(run_dir / f"submit_{time.time_ns()}.txt", "w"), stderr=subprocess.STDOUT,
    )  # fmt: skip


def logged_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [e["step"] for e in map(json.loads, path.read_text().splitlines()) if "train/loss" in e["data"]]


def final_weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    step = (run_dir / "ckpt" / "latest_checkpointed_iteration.txt").read_text().strip()
    return load_file(str(run_dir / "ckpt" / f"global_step_{step}" / "huggingface" / "model.safetensors"))


def outputs(run_dir: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(run_dir.glob("submit_*.txt")))


def test_two_nodes_lose_the_worker_node_and_resume_to_the_same_weights(cluster, tiny_model, toy_data, tmp_path):
    train = toy_data["train24"]
    reference = tmp_path / "reference"
    assert submit(cluster, reference, tiny_model, train).wait(timeout=900) == 0, outputs(reference)[-5000:]
    assert logged_steps(reference) == [1, 2, 3, 4]

    faulty = tmp_path / "faulty"
    job = submit(cluster, faulty, tiny_model, train)
    deadline = time.monotonic() + 900
    while 2 not in logged_steps(faulty):
        assert job.poll() is None and time.monotonic() < deadline, outputs(faulty)[-5000:]
        time.sleep(0.5)
    lost_at = time.monotonic()
    cluster["nodes"]["worker"].kill()  # the machine is gone: raylet, its workers, everything
    assert job.wait(timeout=300) != 0
    detected = time.monotonic() - lost_at
    text = outputs(faulty)
    assert "a training worker or its node died during step" in text, text[-5000:]
    print(f"worker node killed -> job failed in {detected:.1f} s")

    cluster["start_worker"]()  # the node comes back
    wait_for_nodes(cluster["env_gcs"], 2)
    assert submit(cluster, faulty, tiny_model, train).wait(timeout=900) == 0, outputs(faulty)[-5000:]
    assert "resuming from" in outputs(faulty)
    assert logged_steps(faulty) == [1, 2, 3, 4]
    assert_same_weights(final_weights(faulty), final_weights(reference))
