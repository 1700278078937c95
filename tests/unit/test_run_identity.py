"""Run identity: what it records, which changes stop a resume, and the documented override."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf, open_dict

from recipe.psft.exit_codes import ResumeMismatch
from recipe.psft.run_identity import IDENTITY_KEYS, check_resume, run_identity


@pytest.fixture
def config(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"\x01" * 4096)
    data = tmp_path / "train.parquet"
    data.write_bytes(b"rows v1")
    return OmegaConf.create(
        {
            "model": {"path": str(model)},
            "data": {"train_files": [str(data)], "train_batch_size": 8, "max_length": 512, "truncation": "error",
                     "prompt_key": "prompt", "response_key": "demonstration"},
            "psft": {"mini_batch_size": 4, "epochs": 1, "loss_mode": "psft", "clip_ratio_low": 0.2,
                     "clip_ratio_high": 0.28, "sft_warmup_steps": 0, "shuffle_mini_batches": False},
            "trainer": {"seed": 1, "nnodes": 1, "n_gpus_per_node": 2, "total_training_steps": 3, "save_freq": 1},
            "optim": {"lr": 1e-6, "lr_warmup_steps": 10, "weight_decay": 0.1, "betas": [0.9, 0.999],
                      "lr_scheduler_type": "constant"},
        }
    )  # fmt: skip


def test_identity_records_every_defining_key(config):
    identity = run_identity(config)
    assert set(identity) == set(IDENTITY_KEYS)
    assert identity["trainer.world_size"] == 2
    assert len(identity["data.train_files.sha256"][0]) == 64
    assert identity["model.weights"].startswith("sha256:")


def test_unchanged_and_always_allowed_changes_pass(config):
    recorded = run_identity(config)
    config.trainer.total_training_steps = 10  # extending the run
    config.trainer.save_freq = 5
    assert check_resume(recorded, run_identity(config), [], "ckpt") == []


def test_changed_keys_are_named_with_both_values(config, tmp_path):
    recorded = run_identity(config)
    config.data.train_batch_size = 16
    config.psft.loss_mode = "sft"
    (tmp_path / "train.parquet").write_bytes(b"rows v2")  # same path, new content
    (tmp_path / "model" / "model.safetensors").write_bytes(b"\x02" * 4096)  # other weights, same shape
    with pytest.raises(ResumeMismatch) as err:
        check_resume(recorded, run_identity(config), [], "ckpt/global_step_2")
    message = str(err.value)
    assert "data.train_batch_size: checkpoint has 8, this run has 16" in message
    assert "psft.loss_mode: checkpoint has 'psft', this run has 'sft'" in message
    assert "data.train_files.sha256" in message and "model.weights" in message
    assert "psft.resume_allow_changes=[" in message and "ckpt/global_step_2" in message


def test_override_accepts_listed_keys_only(config):
    recorded = run_identity(config)
    config.data.max_length = 1024
    config.trainer.seed = 2
    current = run_identity(config)
    assert check_resume(recorded, current, ["data.max_length", "trainer.seed"], "c") == [
        "data.max_length",
        "trainer.seed",
    ]
    with pytest.raises(ResumeMismatch, match="trainer.seed"):
        check_resume(recorded, current, ["data.max_length"], "c")
    with pytest.raises(ResumeMismatch, match="not run-identity keys"):
        check_resume(recorded, current, ["trainer.total_training_steps"], "c")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("optim.lr", 2e-6),
        ("optim.lr_scheduler_type", "cosine"),
        ("optim.lr_warmup_steps", 0),
        ("optim.weight_decay", 0.0),
        ("optim.betas", [0.9, 0.95]),
        ("data.train_max_samples", 100),
        ("data.apply_chat_template_kwargs", {"enable_thinking": False}),
        ("data.messages_key", "conversation"),
        ("psft.loss_agg_mode", "token-mean"),
        ("psft.snapshot", "initial"),
        ("psft.kl_coef", 0.1),
        ("psft.kl_estimator", "kl"),
        ("psft.clip_ratio_high", 0.3),
    ],
)
def test_settings_that_change_results_are_refused_unless_allowed(config, key, value):
    """Each of these changes the updates (optimizer, data seen, template, loss): a resume, or a rerun of a
    finished run, with another value is refused naming the key and both values; listing it accepts it."""
    recorded = run_identity(config)
    section, name = key.split(".")
    old = recorded[key]
    with open_dict(config):
        config[section][name] = value
    current = run_identity(config)
    with pytest.raises(ResumeMismatch) as err:
        check_resume(recorded, current, [], "ckpt/global_step_3")
    assert f"{key}: checkpoint has {old!r}, this run has {current[key]!r}" in str(err.value)
    assert check_resume(recorded, current, [key], "ckpt/global_step_3") == [key]


def test_checkpoint_of_an_earlier_version_is_not_compared_on_keys_it_lacks(config):
    recorded = {k: v for k, v in run_identity(config).items() if not k.startswith("optim.")}
    config.optim.lr = 3e-6
    assert check_resume(recorded, run_identity(config), [], "c") == []


def test_checkpoint_without_identity_is_not_compared(config):
    assert check_resume(None, run_identity(config), [], "c") == []
