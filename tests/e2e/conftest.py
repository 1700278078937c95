"""Records the GPU kit's input digest (kit_inputs.RECORD) after a session in which every kit test ran and
passed on a kit built from this tree (not a prebuilt one named by PSFT_GPU_KIT)."""

from __future__ import annotations

import os

import pytest

_kit: dict[str, list[str]] = {"collected": [], "bad": [], "passed": []}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    _kit["collected"] = [item.nodeid for item in items if item.get_closest_marker("kit")]  # before -m / -k


def pytest_runtest_logreport(report):
    if "kit" in report.keywords:
        if report.failed or report.skipped:
            _kit["bad"].append(report.nodeid)
        elif report.when == "call" and report.passed:
            _kit["passed"].append(report.nodeid)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    from e2e.kit_inputs import RECORD, record

    kit_items = [item for item in session.items if item.get_closest_marker("kit")]
    defined = {name for item in kit_items for name in dir(item.module) if name.startswith("test_")}
    ran = {item.originalname for item in kit_items}
    nodeids = [item.nodeid for item in kit_items]
    complete = kit_items and ran == defined and nodeids == _kit["collected"] and set(nodeids) == set(_kit["passed"])
    if not complete or _kit["bad"] or session.testsfailed or exitstatus != 0:
        return  # not every kit test ran, or not all passed
    if os.environ.get("PSFT_GPU_KIT"):
        print(f"\n[kit] passed on the prebuilt kit PSFT_GPU_KIT; {RECORD.name} not updated")
        return
    value = record()
    print(f"\n[kit] every kit test passed: recorded the inputs' digest {value[:12]} in {RECORD}; commit it")
