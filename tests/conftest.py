"""Shared fixtures: a tiny offline model and toy demonstration data."""

from __future__ import annotations

from pathlib import Path

import pytest

from psft_assets.toy_rows import make_rows, write_parquet


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from psft_assets.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("toy_data")
    return {
        "train16": write_parquet(make_rows(16, seed=1), root / "train16.parquet"),
        "train24": write_parquet(make_rows(24, seed=2), root / "train24.parquet"),
        "val": write_parquet(make_rows(8, seed=3), root / "val.parquet"),
    }


# --- opt-in suites ---------------------------------------------------------------------------------
# The fault-injection suite (tests/faults: ~13 real trainer runs killed, resumed and compared) and the
# study smoke test (tests/e2e/test_study.py) are marked `extended`. They are not part of the default
# run (`bash scripts/test.sh`), which must fit CI's time; `bash scripts/test.sh --run-extended` adds them.


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-extended", action="store_true", help="also run tests marked `extended` (fault injection, study)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-extended"):
        return
    skip = pytest.mark.skip(reason="extended suite: run with --run-extended (bash scripts/test.sh --run-extended)")
    for item in items:
        if "extended" in item.keywords:
            item.add_marker(skip)
