"""Two Ray nodes on this host, PSFT with trainer.nnodes=2 through scripts/submit_job.sh, the worker node lost.

What the README's multi-node section describes, for real. The cluster is Ray's own multi-node test
facility (``ray.cluster_utils.Cluster``): a head node with the job API and a second node, each a full
set of Ray processes (raylet, agents, workers) on 127.0.0.1. Each node advertises 12 logical CPUs and
verl asks 10 per worker bundle, so the two per-node placement groups of ``trainer.nnodes=2
trainer.n_gpus_per_node=1`` must land on different nodes. The job is the fault suite's configuration
(fault_harness) on 2 nodes x 1 rank: the test kills the worker node after step 2 (every process of that
node, as a lost machine), brings the node back, resubmits, and expects the weights, loss and grad-norm
series of the session's uninterrupted 1-node x 2-rank ``reference`` run, bit for bit (same world size,
same data order, same reductions).

Why not two ``ray start``: Ray's CLI turns a 127.0.0.1 head address into the machine's outward address
before joining, and refuses to join at all in its loopback mode; a test must not open ports on the
machine's network. The Cluster facility starts the same processes without that rewrite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from faults.fault_harness import STEPS, overrides
from trainer_harness import REPO, assert_same_weights, final_weights, free_port, logged_train_steps

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

CPUS_PER_NODE = 12  # verl's worker bundle takes 10 logical CPUs: one bundle per node, never two
WAIT_S = 300  # for a job to reach a step or end (one job takes about a minute on 2 idle cores)


@pytest.fixture
def cluster(monkeypatch):
    import ray._private.ray_constants as ray_constants
    from ray._common.utils import get_ray_address_file
    from ray.cluster_utils import Cluster

    # Ray's single-machine mode: every node's address is 127.0.0.1 (inherited by the nodes' processes).
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    dashboard = free_port()
    head_args = {"num_cpus": CPUS_PER_NODE, "include_dashboard": True, "dashboard_host": "127.0.0.1",
                 "dashboard_port": dashboard}  # fmt: skip
    # The facility records its head as this host's "current cluster" (what a bare ray.init() joins):
    # put back what was there before, so no later Ray user on this host is pointed at a dead cluster.
    address_file = Path(get_ray_address_file(None))
    previous = address_file.read_text() if address_file.exists() else None
    nodes = Cluster(initialize_head=True, head_node_args=head_args, shutdown_at_exit=False)
    try:
        nodes.add_node(num_cpus=CPUS_PER_NODE)
        nodes.wait_for_nodes(timeout=120)
        yield {"nodes": nodes, "address": f"http://127.0.0.1:{dashboard}"}
    finally:
        nodes.shutdown()
        if previous is None:
            address_file.unlink(missing_ok=True)
        else:
            address_file.write_text(previous)


def worker_node(cluster):
    (node,) = cluster["nodes"].worker_nodes
    return node


def training_workers_on(node) -> list[psutil.Process]:
    """The verl TrainingWorker processes this node's raylet started (Ray workers are its children)."""
    import ray._private.ray_constants as ray_constants

    raylet = psutil.Process(node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid)
    return [p for p in raylet.children(recursive=True) if "TrainingWorker" in " ".join(p.cmdline())]


def submit(cluster, run_dir: Path, tiny_model: Path, train: Path) -> subprocess.Popen:
    """``scripts/submit_job.sh`` as a user runs it; its output goes to ``run_dir/submit_<n>.txt``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "RAY_ADDRESS": cluster["address"],
        "PYTHON": sys.executable,
        "VERL_FILE_LOGGER_PATH": str(run_dir / "metrics.jsonl"),
        "ENV_VARS": "VERL_FILE_LOGGER_PATH RAY_DEDUP_LOGS=0",
    }
    args = overrides(tiny_model, train, run_dir, "trainer.nnodes=2", "trainer.n_gpus_per_node=1")
    with open(run_dir / f"submit_{len(list(run_dir.glob('submit_*.txt')))}.txt", "w") as output:
        return subprocess.Popen(
            ["bash", str(REPO / "scripts" / "submit_job.sh"), *args], env=env, stdout=output, stderr=subprocess.STDOUT
        )


def logged_steps(run_dir: Path) -> list[int]:
    return logged_train_steps(run_dir / "metrics.jsonl")


def series(run_dir: Path, key: str) -> list[float]:
    log = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [entry["data"][key] for entry in log if key in entry["data"]]


def outputs(run_dir: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(run_dir.glob("submit_*.txt")))


def test_two_nodes_lose_the_worker_node_and_resume_to_the_same_weights(
    reference, cluster, tiny_model, toy_data, tmp_path
):
    train = toy_data["train24"]
    faulty = tmp_path / "faulty"
    job = submit(cluster, faulty, tiny_model, train)
    deadline = time.monotonic() + WAIT_S
    while 2 not in logged_steps(faulty):
        assert job.poll() is None, outputs(faulty)[-5000:]
        assert time.monotonic() < deadline, f"no step 2 within {WAIT_S} s"
        time.sleep(0.2)
    lost = worker_node(cluster)
    assert len(training_workers_on(lost)) == 1, "the run does not span both nodes"
    assert len(training_workers_on(cluster["nodes"].head_node)) == 1
    lost_at = time.monotonic()
    cluster["nodes"].remove_node(lost, allow_graceful=False)  # the machine is gone: raylet, agents, workers
    assert job.wait(timeout=WAIT_S) != 0, outputs(faulty)[-5000:]
    detected = time.monotonic() - lost_at
    text = outputs(faulty)
    assert "a training worker or its node died during step" in text, text[-5000:]
    print(f"worker node killed after step 2 -> job failed in {detected:.1f} s")
    assert detected < 120, f"the driver took {detected:.0f} s to notice the lost node"

    cluster["nodes"].add_node(num_cpus=CPUS_PER_NODE)  # the node comes back
    cluster["nodes"].wait_for_nodes(timeout=120)
    assert submit(cluster, faulty, tiny_model, train).wait(timeout=WAIT_S) == 0, outputs(faulty)[-5000:]
    assert "resuming from" in outputs(faulty) and "succeeded" in outputs(faulty)
    assert logged_steps(faulty) == list(range(1, STEPS + 1)), logged_steps(faulty)
    assert_same_weights(final_weights(faulty / "ckpt"), reference.final_weights())
    for key in ("train/loss", "train/grad_norm"):
        assert series(faulty, key) == reference.series(key), key
