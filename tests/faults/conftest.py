"""Session-wide runs of the fault suite's configuration (fault_harness.FAULT_OVERRIDES), shared by every
test that compares with them (test_faults.py, the 2-node test)."""

from __future__ import annotations

import pytest
from faults.fault_harness import STEPS, overrides
from trainer_harness import assert_continuous_log


@pytest.fixture(scope="session")
def fault_args(tiny_model, toy_data):
    """``fault_args(run_dir, *extra)``: the fault configuration's overrides for a run in ``run_dir``."""
    return lambda run_dir, *extra: overrides(tiny_model, toy_data["train24"], run_dir, *extra)


@pytest.fixture(scope="session")
def reference(fault_args, trained_run):
    """The uninterrupted 4-step run every fault is compared with (weights, loss and grad-norm series)."""
    result = trained_run("fault_reference", lambda run_dir: fault_args(run_dir))
    assert_continuous_log(result, STEPS)
    return result
