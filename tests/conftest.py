"""Shared fixtures (a tiny offline model, toy demonstration data, memoised trainer runs) and the suite's rules.

Rules enforced here:
* every skip must give a reason; under ``PSFT_CI=1`` (set by ``.ci/run``) a skip fails the test, unless
  its node id contains one of the space-separated strings in ``PSFT_CI_ALLOW_SKIP`` (for a CI host that
  cannot run it, e.g. without root for the disk-full test: say so there, visibly);
* a trainer a test started and left running (failure, pytest-timeout) is killed with its local Ray
  before the next test starts, so the next run does not find Ray's fixed agent port taken.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from trainer_harness import Run, assert_ok, run_trainer, stop_leftover_trainers

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


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Callable[[str, Callable[[Path], list[str]]], Run]:
    """``trained_run(name, overrides_for)``: a finished, successful trainer run shared by every test of the
    session that asks for ``name`` (run on first use, in its own folder; ``overrides_for(run_dir)`` gives
    its overrides). A test that resumes or changes a shared run must copy its folder first."""
    runs: dict[str, tuple[Run, Path, list[str]]] = {}

    def get(name: str, overrides_for: Callable[[Path], list[str]]) -> Run:
        if name in runs:
            run, run_dir, used = runs[name]
            assert overrides_for(run_dir) == used, f"shared run {name!r} asked for with other overrides"
            return run
        run_dir = tmp_path_factory.mktemp(name)
        used = overrides_for(run_dir)
        run = run_trainer(run_dir, used)
        assert_ok(run)
        runs[name] = (run, run_dir, used)
        return run

    return get


@pytest.fixture(autouse=True)
def _no_trainer_left_running():
    yield
    left = stop_leftover_trainers()
    if left:
        print(f"[tests] killed trainer(s) left running by this test: pids {left}")


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    return str(longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else longrepr or "")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report).removeprefix("Skipped: ").strip()
    if not reason or reason in ("Skipped", "unconditional skip"):
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid}: skipped without a reason; every skip must say why"
        return
    allowed = os.environ.get("PSFT_CI_ALLOW_SKIP", "").split()
    if os.environ.get("PSFT_CI") == "1" and not any(part in item.nodeid for part in allowed):
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} skipped under PSFT_CI=1 ({reason}). Every test must run in CI; a CI host that "
            "cannot run this one must list it in PSFT_CI_ALLOW_SKIP (see tests/conftest.py)."
        )
