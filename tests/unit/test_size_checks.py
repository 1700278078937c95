"""Row counts against batch and data-parallel sizes, checked before Ray starts."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from recipe.psft.config_checks import ConfigError, check_sizes


def config(batch: int = 8, nodes: int = 1, per_node: int = 2):
    return OmegaConf.create(
        {
            "data": {"train_batch_size": batch, "train_files": ["t.parquet"], "val_files": ["v.parquet"]},
            "trainer": {"nnodes": nodes, "n_gpus_per_node": per_node},
        }
    )


def test_enough_rows_pass():
    check_sizes(config(), train_rows=8, val_rows=2)
    check_sizes(config(), train_rows=100, val_rows=None)


def test_fewer_training_rows_than_a_batch():
    with pytest.raises(ConfigError, match=r"t.parquet\) has 7 usable rows, fewer than data.train_batch_size=8"):
        check_sizes(config(), train_rows=7, val_rows=None)


def test_fewer_validation_rows_than_ranks():
    with pytest.raises(ConfigError, match=r"v.parquet\) has 3 usable rows, fewer than the data-parallel size 4"):
        check_sizes(config(nodes=2, per_node=2), train_rows=8, val_rows=3)
