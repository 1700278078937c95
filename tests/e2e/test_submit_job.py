"""Job submission for real: a local Ray head on 127.0.0.1, `scripts/submit_job.sh` trains the tiny model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from trainer_harness import REPO, free_port

SCRIPTS = REPO / "scripts"
VENV_BIN = Path(sys.executable).parent


@pytest.fixture
def ray_head(tmp_path):
    """A local Ray head on 127.0.0.1 with its dashboard (job server); stopped afterwards."""
    gcs_port, dashboard_port = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", "--block", f"--port={gcs_port}", "--node-ip-address=127.0.0.1",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", "--num-cpus=64"],
        env=env, stdout=open(tmp_path / "ray_head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    address = f"http://127.0.0.1:{dashboard_port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        probe = subprocess.run(
            [str(VENV_BIN / "ray"), "job", "list", "--address", address], env=env, capture_output=True, timeout=60
        )
        if probe.returncode == 0:
            break
        time.sleep(2)
    else:
        os.killpg(head.pid, signal.SIGTERM)
        pytest.fail("the Ray head did not come up: " + (tmp_path / "ray_head.log").read_text()[-3000:])
    yield {**env, "RAY_ADDRESS": address}
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:  # a slow `ray stop` on a loaded machine: end the whole head
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()


@pytest.mark.slow
def test_submit_job_trains_on_a_local_ray_cluster(ray_head, tiny_model, toy_data, tmp_path):
    ckpt = tmp_path / "ckpt"
    proc = subprocess.run(
        ["bash", str(SCRIPTS / "submit_job.sh"), f"model.path={tiny_model}", f"data.train_files={toy_data['train16']}",
         "trainer.n_gpus_per_node=2", "data.train_batch_size=8", "psft.mini_batch_size=4",
         "trainer.total_training_steps=2", "data.max_length=512", f"trainer.default_local_dir={ckpt}",
         "trainer.logger=[console]"],
        env={**ray_head, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    assert "succeeded" in output
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    assert (ckpt / "global_step_2" / "huggingface" / "model.safetensors").is_file()
