"""The GPU kit (scripts/gpu_kit.sh): built for real from the package index, checked, installed into a
clean CPython 3.12 environment shaped like the GPU image.

No CPU build of torch for CPython 3.12 can be had from the index this project may use, so the clean
environment has no torch: what needs torch (``import verl``, training) is the GPU check's job
(benchmarks/gpu_check.sh). Here: the kit's size and contents, that its stripped wheels are
self-consistent, that it installs offline over the image's packages, and that Ray, Hydra, the pinned
transformers/tokenizers and the recipe's package metadata work in that environment.
"""

from __future__ import annotations

import csv
import io
import os
import socket
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest
from trainer_harness import REPO

# The kit tier: `.ci/run` runs it when scripts/gpu_kit.sh, scripts/gpu_kit_strip.py or pyproject.toml
# differ from the inputs of the last passing kit run (tests/e2e/gpu_kit.inputs.sha256, see kit_inputs.py).
# About 14 minutes: the build alone may take 25.
pytestmark = [pytest.mark.kit, pytest.mark.timeout(2700)]

PY312 = Path(os.environ.get("PSFT_PY312", "/root/.pyenv/versions/3.12.1/bin/python3.12"))
KIT_LIMIT = 60 * 2**20
# Packages the GPU image holds that the kit's wheels import, at the image's versions where the device
# README's package list gives them (numpy, huggingface-hub, safetensors); the rest at the newest.
IMAGE_PACKAGES = [
    "numpy==2.5.2",
    "huggingface-hub==1.33.0",
    "safetensors==0.8.0",
    "packaging",
    "pyyaml",
    "requests",
    "filelock",
    "fsspec",
    "msgpack",
    "protobuf",
    "click",
    "psutil",
    "pandas",
    "pyarrow",
    "tqdm",
    "regex",
    "xxhash",
    "httpx",
    "anyio",
    "h11",
    "attrs",
    "jinja2",
    "typer",
    "prometheus-client",
    "aiohttp",
    "cloudpickle",
]


def index_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> Path:
    if os.environ.get("PSFT_GPU_KIT"):  # a kit already built by scripts/gpu_kit.sh (saves a rebuild)
        return Path(os.environ["PSFT_GPU_KIT"])
    if not index_reachable():
        pytest.skip("pypi.org is unreachable: the kit is built from the package index")
    out = tmp_path_factory.mktemp("gpukit")
    proc = subprocess.run(
        ["bash", str(REPO / "scripts/gpu_kit.sh"), str(out)], capture_output=True, text=True, timeout=1500
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "kit size:" in proc.stdout
    return out


def wheel_names(kit: Path) -> list[str]:
    with tarfile.open(kit / "wheels.tar.xz") as tar:
        return sorted(Path(m.name).name for m in tar.getmembers() if m.name.endswith(".whl"))


def test_kit_is_under_the_carry_limit_and_holds_what_the_gpu_run_needs(kit):
    assert sorted(p.name for p in kit.iterdir()) == ["MANIFEST.txt", "install.sh", "psft-src.tar.gz", "wheels.tar.xz"]
    size = sum(p.stat().st_size for p in kit.iterdir())
    assert size < KIT_LIMIT, f"kit is {size / 2**20:.1f} MiB"
    names = wheel_names(kit)
    for wanted in (
        "verl-0.9.1-",
        "ray-2.60.0-cp312",
        "transformers-5.10.4-",
        "tokenizers-0.22.2-",
        "tensordict-0.10.0-cp312",
        "torchdata-0.11.0-",
        "hydra_core-1.3.8-",
        "omegaconf-2.3.1-",
        "antlr4_python3_runtime-4.9.3-",
        "codetiming-",
        "psft_verl-0.1.0-",
    ):
        assert any(n.startswith(wanted) for n in names), f"no {wanted}* wheel in {names}"
    # Never torch, CUDA, vLLM or flash-attention: the image's own stay untouched.
    assert not [
        n
        for n in names
        if n.split("-")[0].lower() in ("torch", "vllm", "flash_attn", "triton") or n.startswith("nvidia_")
    ]
    assert len({n.split("-")[0].lower() for n in names}) == len(names), "two versions of one package"
    with tarfile.open(kit / "psft-src.tar.gz") as tar:
        assert "recipe/psft/psft_trainer.py" in tar.getnames()
    manifest = (kit / "MANIFEST.txt").read_text()
    assert all(n in manifest for n in names)


def test_stripped_wheels_keep_a_consistent_record(kit, tmp_path):
    with tarfile.open(kit / "wheels.tar.xz") as tar:
        tar.extractall(tmp_path, filter="data")
    ray_wheel = next(tmp_path.rglob("ray-2.60.0-*.whl"))
    with zipfile.ZipFile(ray_wheel) as whl:
        members = set(whl.namelist())
        record = "ray-2.60.0.dist-info/RECORD"
        recorded = {row[0] for row in csv.reader(io.StringIO(whl.read(record).decode())) if row}
        assert {i.compress_type for i in whl.infolist()} == {zipfile.ZIP_STORED}
    assert recorded == members, "RECORD and the wheel's files disagree"
    assert not [m for m in members if m.startswith(("ray/jars/", "ray/dashboard/client/")) or "/tests/" in m]
    assert "ray/core/src/ray/raylet/raylet" in members  # the binaries Ray runs stay


def test_kit_installs_offline_into_a_clean_python312(kit, tmp_path):
    if not PY312.exists():
        pytest.skip(f"no CPython 3.12 at {PY312} (set PSFT_PY312)")
    venv = tmp_path / "venv"
    subprocess.run([str(PY312), "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin/python")
    # The image's side: its packages (no torch: see the module docstring) and an older transformers
    # that the kit must replace.
    proc = subprocess.run(
        [python, "-m", "pip", "install", "-q", *IMAGE_PACKAGES, "transformers==5.17.0", "tokenizers==0.23.2"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0 and "No matching distribution" in proc.stderr:
        pytest.skip(f"the image's package versions are not on the index: {proc.stderr[-500:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run(
        ["bash", str(kit / "install.sh")],
        env={**os.environ, "PYTHON": python},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "has no torch" in proc.stderr  # said plainly, not hidden
    check = r"""
import importlib.metadata as md
# tensordict is left out: it imports torch
import ray, hydra, omegaconf, transformers, tokenizers, datasets, fastapi, uvicorn, codetiming
assert transformers.__version__ == "5.10.4", transformers.__version__
assert tokenizers.__version__ == "0.22.2", tokenizers.__version__
from transformers import PreTrainedTokenizerFast  # noqa: F401  (the tokenizer side needs no torch)
assert md.version("verl") == "0.9.1"
plugins = {ep.name: ep.value for ep in md.entry_points(group="verl.plugins")}
assert plugins.get("psft_cpu") == "recipe.psft.verl_adapters.cpu_platform", plugins
ray.init(address="local", num_cpus=1)  # as the trainer starts Ray
assert ray.get(ray.remote(lambda: 6 * 7).remote()) == 42
ray.shutdown()
print("kit imports ok")
"""
    proc = subprocess.run([python, "-c", check], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0 and "kit imports ok" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]
    # Without torch (see the module docstring) verl itself cannot import, and torch must be all it misses.
    proc = subprocess.run([python, "-c", "import verl"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode != 0 and "No module named 'torch'" in proc.stderr, proc.stderr[-3000:]
