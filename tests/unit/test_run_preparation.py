"""Where a run's checkpoints go: a relative trainer.default_local_dir under a Ray job or on several nodes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from recipe.psft.config_checks import ConfigError
from recipe.psft.run_preparation import checkpoint_dir


def config(folder: str, nnodes: int = 1, root: str | None = None):
    return OmegaConf.create(
        {"trainer": {"default_local_dir": folder, "nnodes": nnodes}, "psft": {"checkpoint_root": root}}
    )


@pytest.fixture(autouse=True)
def no_ray_job(monkeypatch):
    for name in ("RAY_JOB_CONFIG_JSON_ENV_VAR", "RAY_JOB_ID"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("marker", ["RAY_JOB_CONFIG_JSON_ENV_VAR", "RAY_JOB_ID"])
def test_relative_folder_under_a_ray_job_is_refused_with_the_fix(monkeypatch, tmp_path, marker):
    # What Ray 2.60's job supervisor sets for a `ray job submit` entrypoint (RAY_JOB_ID on its workers).
    monkeypatch.setenv(marker, '{"runtime_env": {}}' if marker.endswith("JSON_ENV_VAR") else "02000000")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        checkpoint_dir(config("checkpoints/psft/lr1e-6"))
    message = str(err.value)
    assert "trainer.default_local_dir=checkpoints/psft/lr1e-6 is relative" in message and marker in message
    assert "Ray's temporary copy of the code" in message and "psft.checkpoint_root=" in message


def test_relative_folder_on_several_nodes_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="trainer.nnodes=2"):
        checkpoint_dir(config("ckpt", nnodes=2))


def test_checkpoint_root_resolves_relative_folders(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_JOB_ID", "02000000")
    assert checkpoint_dir(config("psft/run", nnodes=2, root=str(tmp_path))) == tmp_path / "psft/run"
    with pytest.raises(ConfigError, match="expected an absolute path"):
        checkpoint_dir(config("psft/run", root="relative/root"))


def test_absolute_folder_and_single_node_relative_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_JOB_ID", "02000000")
    assert checkpoint_dir(config(str(tmp_path / "abs"), nnodes=4)) == tmp_path / "abs"
    monkeypatch.delenv("RAY_JOB_ID")
    monkeypatch.chdir(tmp_path)
    assert checkpoint_dir(config("rel")) == Path(os.path.realpath(tmp_path)) / "rel"
    assert checkpoint_dir(config("~/x")) == Path(os.path.expanduser("~/x"))
