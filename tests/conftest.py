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
