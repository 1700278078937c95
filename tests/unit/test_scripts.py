"""Launch scripts: shellcheck, --dry-run commands (resolved through Hydra), plots."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from trainer_harness import REPO

from evaluation.paper_table import IN_DOMAIN, OUT_OF_DOMAIN
from prepare import hub

SCRIPTS = REPO / "scripts"
VENV_BIN = Path(sys.executable).parent


def dry_run(script: str, *args: str, **env: str) -> list[str]:
    proc = subprocess.run(
        ["bash", str(SCRIPTS / script), "--dry-run", *args],
        env={**os.environ, "PYTHON": sys.executable, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return shlex.split(proc.stdout)


@pytest.fixture(scope="module")
def resolved_config():
    """Resolve a printed Hydra command with --cfg job (composes the config without training): through one
    tests/cfg_job_server.py process for the whole module, so verl is imported once, not per command."""
    server = subprocess.Popen(
        [sys.executable, str(REPO / "tests/cfg_job_server.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )

    def resolve(command: list[str]) -> dict:
        assert command[0] == sys.executable, command
        server.stdin.write(json.dumps(command) + "\n")
        server.stdin.flush()
        answer = json.loads(server.stdout.readline() or '{"code": -1, "stderr": "cfg_job_server died"}')
        assert answer["code"] == 0, answer["stderr"][-3000:]
        return yaml.safe_load(answer["stdout"])

    yield resolve
    server.stdin.close()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()


def test_shellcheck_clean():
    scripts = sorted(str(p) for p in SCRIPTS.glob("*.sh")) + [str(REPO / ".ci/run")]
    shellcheck = VENV_BIN / "shellcheck"
    proc = subprocess.run([str(shellcheck), *scripts], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


# (script, PRESET or None, loss mode, (batch, mini-batch, lr), other psft keys). Sources: README
# "Baselines and ablations" (the paper; the original's run_psft.sh; its author in issues 7 and 18).
PSFT_SETTING = (256, 32, 1e-6)
PAPER_SFT_SETTING = (256, 256, 2e-5)  # the author: mini-batch = batch, lr 2e-5 (one update per step)
ORIGINAL_AVERAGING = {"loss_agg_mode": "micro-token-mean"}
LIMO = {"loss_agg_mode": "seq-mean-token-mean"}  # one sequence per GPU micro-batch in the original
BASELINES = [
    ("run_psft.sh", None, "psft", PSFT_SETTING, ORIGINAL_AVERAGING),
    ("run_sft.sh", None, "sft", PAPER_SFT_SETTING, ORIGINAL_AVERAGING),
    ("run_sft_matched.sh", None, "sft", PSFT_SETTING, ORIGINAL_AVERAGING),
    ("run_sft_kl.sh", None, "sft_kl", PSFT_SETTING, {"kl_coef": 0.5, "kl_estimator": "low_var_kl"}),
    ("run_psft_warmup.sh", None, "psft", PSFT_SETTING, {"sft_warmup_steps": 178}),
    ("run_psft_initial_snapshot.sh", None, "psft", PSFT_SETTING, {"snapshot": "initial"}),
    ("run_psft.sh", "limo_toy", "psft", (64, 8, 1e-6), LIMO),
    ("run_sft.sh", "limo_toy_sft", "sft", (64, 64, 2e-5), LIMO),
    ("run_sft_matched.sh", "limo_toy_sft_matched", "sft", (64, 8, 1e-6), LIMO),
]


@pytest.mark.parametrize(
    ("script", "preset", "mode", "setting", "psft_keys"),
    BASELINES,
    ids=[f"{b[0]}:{b[1] or 'default'}" for b in BASELINES],
)
def test_cluster_training_scripts_use_the_papers_setting(
    script, preset, mode, setting, psft_keys, tmp_path, resolved_config
):
    train = tmp_path / "train.parquet"
    train.touch()
    env = {"MODEL": "/models/Llama-3.1-8B-Instruct", "TRAIN_FILE": str(train), "NNODES": "2", "GPUS_PER_NODE": "8"}
    if preset:
        env["PRESET"] = preset
    command = dry_run(script, "trainer.total_epochs=3", **env)
    assert command[:3] == [sys.executable, "-m", "recipe.psft.main_psft"]
    assert f"psft.loss_mode={mode}" in command and "trainer.total_epochs=3" == command[-1]
    config = resolved_config(command)
    assert config["psft"]["loss_mode"] == mode
    batch, mini, lr = setting
    assert (config["data"]["train_batch_size"], config["psft"]["mini_batch_size"]) == (batch, mini)
    assert (config["psft"]["clip_ratio_low"], config["psft"]["clip_ratio_high"]) == (0.2, 0.28)
    optim = config["optim"]
    assert (optim["lr"], optim["lr_warmup_steps"], optim["weight_decay"], optim["clip_grad"]) == (lr, 10, 0.1, 1.0)
    # The original's micro-batch token budget: max prompt + max response (2048 + 6144; LIMO 2048 + 36864,
    # rounded up to 40960 here, which seq-mean-token-mean does not depend on).
    assert config["data"]["max_token_len_per_gpu"] == (8192 if batch == 256 else 40960)
    assert (config["trainer"]["nnodes"], config["trainer"]["n_gpus_per_node"]) == (2, 8)
    assert config["model"]["path"] == "/models/Llama-3.1-8B-Instruct"
    assert config["trainer"]["total_epochs"] == 3  # the extra override came through
    assert {key: config["psft"][key] for key in psft_keys} == psft_keys
    if batch == 256:
        assert config["psft"]["loss_agg_mode"] == "micro-token-mean"  # every paper_openr1* preset


def test_train_script_without_a_loss_mode_keeps_the_presets(tmp_path, resolved_config):
    train = tmp_path / "train.parquet"
    train.touch()
    env = {"PRESET": "paper_openr1_sft_matched", "TRAIN_FILE": str(train), "MODEL": "/models/Qwen2.5-7B-Instruct"}
    command = dry_run("train.sh", **env)
    assert not any(arg.startswith("psft.loss_mode=") for arg in command)
    assert "trainer.experiment_name=Qwen2.5-7B-Instruct-paper_openr1_sft_matched" in command
    config = resolved_config(command)
    assert (config["psft"]["loss_mode"], config["psft"]["mini_batch_size"], config["optim"]["lr"]) == ("sft", 32, 1e-6)


def test_rl_from_psft_script_resolves_in_verls_ppo_config(tmp_path, resolved_config):
    command = dry_run("run_rl_from_psft.sh", "trainer.total_epochs=2", PSFT_CKPT="/ckpt/global_step_9/huggingface")
    assert command[:3] == [sys.executable, "-m", "verl.trainer.main_ppo"]
    config = resolved_config(command)  # fails if any override names a key verl's PPO config lacks
    assert config["algorithm"]["adv_estimator"] == "grpo"
    assert config["actor_rollout_ref"]["model"]["path"] == "/ckpt/global_step_9/huggingface"
    assert config["actor_rollout_ref"]["rollout"]["name"] == "vllm"
    assert config["reward"]["custom_reward_function"]["path"] == "pkg://evaluation.verl_reward"
    assert config["trainer"]["total_epochs"] == 2


def test_submit_job_dry_run_ships_the_repo_and_env():
    command = dry_run(
        "submit_job.sh", "model.path=/m", RAY_ADDRESS="http://127.0.0.1:1", ENV_VARS='WANDB_MODE=off"line HOME'
    )
    assert command[1:5] == ["job", "submit", "--address", "http://127.0.0.1:1"]
    env_file = Path(command[command.index("--runtime-env") + 1])
    runtime_env = json.loads(env_file.read_text())  # written by a JSON encoder: quotes survive
    env_file.unlink()
    assert runtime_env["working_dir"] == str(REPO)
    assert ".venv" in runtime_env["excludes"]
    assert runtime_env["env_vars"]["WANDB_MODE"] == 'off"line'
    assert runtime_env["env_vars"]["HOME"] == os.environ["HOME"]  # a bare name takes this shell's value
    assert command[command.index("--") + 1 :] == [sys.executable, "-m", "recipe.psft.main_psft", "model.path=/m"]


def test_submit_job_refuses_secrets_in_the_runtime_env():
    proc = subprocess.run(
        ["bash", str(SCRIPTS / "submit_job.sh"), "--dry-run", "model.path=/m"],
        env={**os.environ, "RAY_ADDRESS": "http://127.0.0.1:1", "ENV_VARS": "WANDB_API_KEY", "WANDB_API_KEY": "s3cr3t"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "WANDB_API_KEY, which looks like a secret" in proc.stderr and "s3cr3t" not in proc.stdout + proc.stderr


def submit_job_runtime_env(**env: str) -> dict:
    command = dry_run("submit_job.sh", "model.path=/m", RAY_ADDRESS="http://127.0.0.1:1", **env)
    env_file = Path(command[command.index("--runtime-env") + 1])
    try:
        return json.loads(env_file.read_text())
    finally:
        env_file.unlink()


def test_submit_job_gives_ray_job_stop_time_for_a_step_and_a_save():
    """`ray job stop` SIGKILLs RAY_JOB_STOP_WAIT_TIME_S after its SIGTERM (Ray 2.60's job supervisor reads
    it from the job's runtime env; 3 s without it)."""
    assert submit_job_runtime_env()["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"] == "900"
    assert submit_job_runtime_env(JOB_STOP_WAIT_S="2400")["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"] == "2400"
    proc = subprocess.run(
        ["bash", str(SCRIPTS / "submit_job.sh"), "--dry-run", "model.path=/m"],
        env={**os.environ, "RAY_ADDRESS": "http://127.0.0.1:1", "JOB_STOP_WAIT_S": "15m"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "JOB_STOP_WAIT_S='15m': expected a whole number of seconds" in proc.stderr


@pytest.mark.parametrize(
    ("entry", "value"),
    [("HTTPS_PROXY", "http://alice:pa55@proxy.example:3128"), ("HF_ENDPOINT", "https://hf_t0ken@mirror.example/")],
)
def test_submit_job_refuses_credentials_inside_values(entry, value):
    for env_vars, extra in ((entry, {entry: value}), (f"{entry}={value}", {})):
        proc = subprocess.run(
            ["bash", str(SCRIPTS / "submit_job.sh"), "--dry-run", "model.path=/m"],
            env={**os.environ, "RAY_ADDRESS": "http://127.0.0.1:1", "ENV_VARS": env_vars, **extra},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode != 0, proc.stdout
        assert f"the value of {entry} holds credentials in a URL" in proc.stderr
        secret = value.split("//")[1].split("@")[0]
        assert secret not in proc.stdout + proc.stderr
    # A proxy URL with a port and no credentials goes through.
    assert submit_job_runtime_env(ENV_VARS="HTTPS_PROXY=http://proxy.example:3128/")["env_vars"]["HTTPS_PROXY"]


# A stand-in for the trainer under scripts/sbatch_psft.sh: the real signal guard, a "step" that ends once
# a stop is requested, then one second of "save" during which a second signal would end it unsaved.
SBATCH_TRAINER = """
import signal, sys, time
from recipe.psft.exit_codes import signal_exit_code
from recipe.psft.preemption import PreemptionGuard
guard = PreemptionGuard()
guard.install()
print("trainer", "ready", flush=True)  # not the text of this source, which the template echoes
deadline = time.monotonic() + float(sys.argv[1])
while not guard.requested and time.monotonic() < deadline:
    time.sleep(0.02)
if not guard.requested:
    sys.exit(0)
time.sleep(1.0)
print(f"saved after {signal.Signals(guard.signum).name}", flush=True)
sys.exit(signal_exit_code(guard.signum))
"""


def run_sbatch_template(tmp_path: Path, fault: str | None) -> tuple[int, str, str]:
    """scripts/sbatch_psft.sh as SLURM runs it (SLURM_JOB_ID set, `scontrol` on PATH: a stand-in that
    records its arguments), with the signals SLURM would send: ``usr1`` is --signal=B:USR1@N (the batch
    shell only); ``term_all`` is scancel / the time limit (every process of the job)."""
    import psutil

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol_calls"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    out = tmp_path / "job.out"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242", "PSFT_ROOT": str(REPO)}
    env.pop("SLURM_RESTART_COUNT", None)
    with open(out, "w") as output:
        proc = subprocess.Popen(
            ["bash", str(SCRIPTS / "sbatch_psft.sh"), "--", sys.executable, "-c", SBATCH_TRAINER,
             "30" if fault else "0"],
            env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 30
    while "trainer ready" not in out.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, out.read_text()
        time.sleep(0.02)
    if fault == "usr1":
        os.kill(proc.pid, signal.SIGUSR1)
    elif fault == "term_all":
        for process in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
            process.send_signal(signal.SIGTERM)
    status = proc.wait(timeout=60)
    return status, out.read_text(), calls.read_text() if calls.exists() else ""


def test_sbatch_template_checkpoints_and_requeues_on_the_time_limit_warning(tmp_path):
    status, output, scontrol = run_sbatch_template(tmp_path, "usr1")
    assert status == 143, output
    # One SIGTERM, to the trainer alone: a second would end it before its save.
    assert "saved after SIGTERM" in output and "SIGTERM again: exiting now" not in output
    assert scontrol == "requeue 4242\n", output


def test_sbatch_template_stops_once_on_scancel_and_does_not_requeue(tmp_path):
    status, output, scontrol = run_sbatch_template(tmp_path, "term_all")
    assert status == 143, output
    # The trainer got SLURM's SIGTERM; the shell forwarded no second one.
    assert "saved after SIGTERM" in output and "SIGTERM again: exiting now" not in output
    assert scontrol == "", output


def test_sbatch_template_passes_a_finished_runs_code_through(tmp_path):
    status, output, scontrol = run_sbatch_template(tmp_path, None)
    assert status == 0 and scontrol == "", output


def test_plot_tool_writes_comparison_figures(tmp_path):
    logs = {}
    for label, decay in (("SFT", 0.7), ("PSFT", 0.95)):
        path = tmp_path / f"{label}.jsonl"
        lines = []
        for step in range(1, 9):
            data = {"train/entropy": decay**step, "train/loss": 2.0 / step, "train/clip_frac": 0.01 * step}
            lines.append(json.dumps({"step": step, "data": data}))
            if step % 4 == 0:
                lines.append(json.dumps({"step": step, "data": {"val/entropy": decay**step, "val/loss": 1.0}}))
        path.write_text("\n".join(lines) + "\n")
        logs[label] = path
        eval_dir = tmp_path / f"eval_{label}" / "test"
        eval_dir.mkdir(parents=True)
        summary = {"overall": {"avg@4": 0.25 if label == "SFT" else 0.5, "avg@4_stderr": 0.1}}
        (eval_dir / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "figures"
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "plot_runs.py"), "--out", str(out)]
        + [f"--run={label}={path}" for label, path in logs.items()]
        + [f"--accuracy={label}={tmp_path / f'eval_{label}'}" for label in logs],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("entropy.png", "loss.png", "clip_fraction.png", "accuracy.png"):
        png = out / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_plot_tool_rejects_a_bad_log_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1, "data": {"train/loss": 1.0}}\nnot json\n')
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "plot_runs.py"), f"--run=A={bad}", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and f"{bad}, line 2" in proc.stderr


def test_eval_script_serves_then_runs_the_papers_benchmarks():
    """The paper's whole suite (6 in-domain, 7 out-of-domain) with --preset paper, which pins n and sampling
    per benchmark (tests/unit/test_eval_presets.py); names from the checkpoint path, never its basename."""
    proc = subprocess.run(
        ["bash", str(SCRIPTS / "eval.sh"), "/ckpt/psft-qwen/global_step_40/huggingface", "--dry-run"],
        env={**os.environ, "PYTHON": sys.executable, "DATA_DIR": "/data", "PORT": "8123"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    serve = shlex.split(lines[0].rstrip("&"))
    assert serve[1:4] == ["run", "evaluation.serve_app:build_app", "model=/ckpt/psft-qwen/global_step_40/huggingface"]
    assert "port=8123" in serve and "served-model-name=psft-qwen/global_step_40" in serve
    benchmarks = []
    for line in lines[1:-1]:
        argv = shlex.split(line)
        assert argv[:3] == [sys.executable, "-m", "evaluation.eval"]
        option = dict(zip(argv[3::2], argv[4::2]))
        assert option["--preset"] == "paper" and not {"--n", "--temperature", "--top_p", "--max_tokens"} & set(option)
        assert option["--model"] == "psft-qwen/global_step_40" and option["--base-url"] == "http://127.0.0.1:8123"
        assert option["--model-path"] == "/ckpt/psft-qwen/global_step_40/huggingface"
        assert "/outputs/eval/psft-qwen/global_step_40/" in option["--output"]
        benchmarks.append(Path(option["--test_file"]).stem.removeprefix("test_"))
    assert benchmarks == list(hub.IN_DOMAIN + hub.OUT_OF_DOMAIN) == [n for n, _ in IN_DOMAIN + OUT_OF_DOMAIN]
    assert shlex.split(lines[-1])[1:3] == ["-m", "evaluation.paper_table"]
