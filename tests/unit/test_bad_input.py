"""Bad data and bad config fail with a message naming what is wrong, before Ray or any worker starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import ray
from hydra import compose, initialize_config_dir

from psft_assets.toy_rows import make_rows, write_parquet
from recipe.psft.config_checks import ConfigError
from recipe.psft.dataset import DataError
from recipe.psft.main_psft import run_psft


def compose_config(model: Path, train: Path, *extra: str):
    config_dir = Path(run_psft.__code__.co_filename).parent / "config"
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return compose(
            config_name="psft_trainer",
            overrides=[
                f"model.path={model}",
                f"data.train_files={train}",
                "data.train_batch_size=8",
                "psft.mini_batch_size=4",
                "trainer.n_gpus_per_node=2",
                "data.max_length=512",
                *extra,
            ],
        )


def expect_failure(config, error: type[Exception], *fragments: str) -> str:
    assert not ray.is_initialized()
    with pytest.raises(error) as info:
        run_psft(config)
    assert not ray.is_initialized(), "Ray was started before the bad input was reported"
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_demonstration_column(tiny_model, tmp_path):
    rows = make_rows(8)
    for row in rows:
        del row["demonstration"]
    path = write_parquet(rows, tmp_path / "no_demo.parquet")
    expect_failure(
        compose_config(tiny_model, path), DataError, f"{path}: row 1: 'demonstration'", "columns present", "prompt"
    )


def test_empty_demonstration(tiny_model, tmp_path):
    rows = make_rows(8)
    rows[5]["demonstration"] = "   "
    path = write_parquet(rows, tmp_path / "empty_demo.parquet")
    expect_failure(compose_config(tiny_model, path), DataError, f"{path}: row 6: 'demonstration'", "empty string")


def test_non_string_prompt_content(tiny_model, tmp_path):
    rows = make_rows(8)
    rows[3]["prompt"] = [{"role": "user", "content": ""}]
    path = write_parquet(rows, tmp_path / "bad_prompt.parquet")
    expect_failure(
        compose_config(tiny_model, path), DataError, f"{path}: row 4: 'prompt': message 0 content is an empty string"
    )


def test_over_long_row_with_truncation_error(tiny_model, tmp_path):
    rows = make_rows(8, long_every=7)  # row 0 and row 7 are long
    path = write_parquet(rows, tmp_path / "long.parquet")
    expect_failure(
        compose_config(tiny_model, path, "data.max_length=64", "data.truncation=error"),
        DataError,
        f"{path}: row 1:",
        "data.max_length=64",
        "data.truncation",
    )


def test_over_long_row_with_truncation_left_keeps_the_demonstration_end(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    from recipe.psft.dataset import DemonstrationDataset

    path = write_parquet(make_rows(8, long_every=7), tmp_path / "long.parquet")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    dataset = DemonstrationDataset(str(path), tokenizer, {"max_length": 64, "truncation": "left"})
    item = dataset[0]
    assert len(item["input_ids"]) == 64
    assert item["input_ids"][-2].item() == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_mini_batch_that_does_not_divide_the_batch(tiny_model, toy_data):
    expect_failure(
        compose_config(tiny_model, toy_data["train16"], "psft.mini_batch_size=3"),
        ConfigError,
        "psft.mini_batch_size=3",
        "data.train_batch_size=8",
        "[1, 2, 4, 8]",
    )


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("psft.clip_ratio_low=1.5", "psft.clip_ratio_low=1.5"),
        ("psft.clip_ratio_high=0", "psft.clip_ratio_high=0"),
        ("trainer.n_gpus_per_node=3", "data-parallel size 3"),
        ("psft.loss_mode=ppo", "psft.loss_mode='ppo'"),
        ("psft.loss_agg_mode=seq-mean-token-sum", "psft.loss_agg_mode='seq-mean-token-sum'"),
        ("psft.snapshot=never", "psft.snapshot='never'"),
        ("psft.kl_estimator=full", "psft.kl_estimator='full'"),
        ("psft.kl_coef=-1", "psft.kl_coef=-1"),
    ],
)
def test_invalid_config_values(tiny_model, toy_data, override, fragment):
    expect_failure(compose_config(tiny_model, toy_data["train16"], override), ConfigError, fragment)


def test_initial_snapshot_outside_psft_names_both_keys(tiny_model, toy_data):
    config = compose_config(tiny_model, toy_data["train16"], "psft.snapshot=initial", "psft.loss_mode=sft_kl")
    expect_failure(config, ConfigError, "psft.snapshot=initial", "psft.loss_mode=sft_kl")


def test_missing_train_file(tiny_model, tmp_path):
    missing = tmp_path / "nope.parquet"
    expect_failure(compose_config(tiny_model, missing), ConfigError, str(missing), "prepare_data.py")


def test_too_few_rows_for_a_batch_or_for_the_ranks(tiny_model, toy_data):
    """Counted after tokenising, before Ray (was a 2-process CLI test in the fault suite; the CLI's exit
    code 2 for any bad input is test_cli_exits_2_with_the_message)."""
    config = compose_config(tiny_model, toy_data["train24"], "data.train_batch_size=32", "psft.mini_batch_size=16")
    expect_failure(config, ConfigError, "has 24 usable rows, fewer than data.train_batch_size=32")
    val = f"data.val_files={toy_data['val']}"
    sizes = ["trainer.n_gpus_per_node=16", "data.train_batch_size=16", "psft.mini_batch_size=16"]
    config = compose_config(tiny_model, toy_data["train24"], val, *sizes)
    expect_failure(config, ConfigError, "has 8 usable rows, fewer than the data-parallel size 16")


def test_cli_exits_2_with_the_message(tiny_model, tmp_path):
    rows = make_rows(8)
    rows[2]["demonstration"] = ""
    path = write_parquet(rows, tmp_path / "bad.parquet")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "recipe.psft.main_psft",
            f"model.path={tiny_model}",
            f"data.train_files={path}",
            "trainer.n_gpus_per_node=2",
            "data.train_batch_size=8",
            "psft.mini_batch_size=4",
            f"trainer.default_local_dir={tmp_path / 'ckpt'}",  # not the shared default folder (one run per folder)
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"{path}: row 3: 'demonstration': demonstration is an empty string" in proc.stderr
    assert "TrainingWorker" not in proc.stdout + proc.stderr
