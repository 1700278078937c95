"""``evaluation.eval --preset paper|r1|greedy``: the values pinned per benchmark, explicit flags winning,
and the effective values sent with every request and recorded in summary.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from unit.test_eval_client import FakeOpenAI, run_cli, write_jsonl

from evaluation import eval as evalcli
from evaluation.presets import PRESETS, resolve
from evaluation.store import SUMMARY_FILE
from prepare import hub
from recipe.psft.rows import DataError


def values(preset: str | None, source: str, **given) -> tuple:
    flags = {"temperature": None, "top_p": None, "max_tokens": None, "n": None, **given}
    e = resolve(preset, {source}, **flags)
    return e.temperature, e.top_p, e.max_tokens, e.n


def test_paper_preset_per_benchmark() -> None:
    """Avg@32 on AIME/AMC, Avg@8 on everything else (MMLU-Pro included), IFEval at 4,096 new tokens."""
    expected = {name: (0.7, 0.95, 10240, 8) for name in hub.BENCHMARKS}
    expected.update({n: (0.7, 0.95, 10240, 32) for n in ("aime24", "aime25", "amc23")})
    expected["ifeval"] = (0.7, 0.95, 4096, 8)
    assert {name: values("paper", name) for name in hub.BENCHMARKS} == expected
    assert values("paper", "aime-2024") == (0.7, 0.95, 10240, 32)  # the original's file names
    assert values("paper", "my_own_set") == (0.7, 0.95, 10240, 8)


def test_r1_and_greedy_presets() -> None:
    assert values("r1", "aime24") == (0.6, 0.95, 32768, 32)
    assert values("r1", "ifeval") == (0.6, 0.95, 32768, 8)
    assert values("greedy", "aime24") == (0.0, 1.0, 2048, 1)
    assert values("greedy", "mmlu_pro") == (0.0, 1.0, 2048, 1)
    assert sorted(PRESETS) == ["greedy", "paper", "r1"]


def test_explicit_flags_win_and_no_preset_keeps_the_old_defaults() -> None:
    e = resolve("paper", {"aime24"}, temperature=1.0, top_p=None, max_tokens=None, n=4)
    assert (e.temperature, e.top_p, e.max_tokens, e.n) == (1.0, 0.95, 10240, 4)
    assert e.origin == {"temperature": "flag", "top_p": "preset paper", "max_tokens": "preset paper", "n": "flag"}
    assert values(None, "aime24") == (0.7, 0.95, 10240, None)  # n: the file's repeat count, as before
    assert resolve(None, {"x"}, None, None, 64, None).origin["max_tokens"] == "flag"


def test_a_file_mixing_benchmarks_of_different_k_needs_n() -> None:
    with pytest.raises(DataError, match=r"different n \(aime24: 32, math500: 8\).*give --n"):
        resolve("paper", {"aime24", "math500"}, None, None, None, None)
    with pytest.raises(DataError, match=r"different max_tokens \(ifeval: 4096, math500: 10240\)"):
        resolve("paper", {"ifeval", "math500"}, None, None, None, None)
    e = resolve("paper", {"aime24", "math500"}, None, None, None, 8)
    assert e.n == 8 and e.max_tokens == 10240
    assert resolve("greedy", {"aime24", "math500"}, None, None, None, None).n == 1


def _aime_file(path: Path) -> Path:
    """The client test's problems, labelled as AIME-24 (the data_source prepare_data.py writes)."""
    write_jsonl(path)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(dict(r, data_source="aime24")) + "\n" for r in lines))
    return path


def _run(tmp_path: Path, server: FakeOpenAI, *flags: str) -> dict:
    out = tmp_path / "out"
    argv = ["--model", "tiny", "--test_file", str(_aime_file(tmp_path / "t.jsonl")), "--output", str(out)]
    assert evalcli.main([*argv, "--base-url", server.url, "--retry-delay", "0.01", "--no-progress", *flags]) == 0
    return json.loads((out / SUMMARY_FILE).read_text())


@pytest.fixture
def server():
    s = FakeOpenAI()
    yield s
    s.close()


def test_preset_values_are_sent_and_recorded(tmp_path: Path, server: FakeOpenAI) -> None:
    summary = _run(tmp_path, server, "--preset", "paper")
    assert {(r["n"], r["temperature"], r["top_p"], r["max_tokens"]) for r in server.requests} == {
        (32, 0.7, 0.95, 10240)
    }
    assert summary["n"] == 32 and summary["preset"] == "paper"
    assert (summary["sampling"]["temperature"], summary["sampling"]["max_tokens"]) == (0.7, 10240)
    assert summary["settings_origin"]["n"] == "preset paper"


def test_flags_override_the_preset_in_the_requests(tmp_path: Path, server: FakeOpenAI) -> None:
    summary = _run(tmp_path, server, "--preset", "greedy", "--temperature", "0.3", "--max-tokens", "64")
    assert {(r["n"], r["temperature"], r["top_p"], r["max_tokens"]) for r in server.requests} == {(1, 0.3, 1.0, 64)}
    assert summary["settings_origin"] == {
        "temperature": "flag",
        "top_p": "preset greedy",
        "max_tokens": "flag",
        "n": "preset greedy",
    }


def test_without_a_preset_nothing_changes(tmp_path: Path, server: FakeOpenAI) -> None:
    assert run_cli(write_jsonl(tmp_path / "t.jsonl", repeat=2), tmp_path / "o", server.url) == 0
    summary = json.loads((tmp_path / "o" / SUMMARY_FILE).read_text())
    assert summary["preset"] is None and summary["n"] == 2 and summary["sampling"]["temperature"] == 0.7


def test_paper_table_averages_the_seven_out_of_domain_benchmarks(tmp_path: Path) -> None:
    """All 13 benchmarks present: the in-domain average over 6, the out-of-domain one over the paper's 7."""
    from evaluation import paper_table

    model = tmp_path / "psft"
    scores = dict(zip(hub.IN_DOMAIN, (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)))
    scores.update(zip(hub.OUT_OF_DOMAIN, (0.30, 0.90, 0.50, 0.70, 0.60, 0.40, 0.80)))
    for name, value in scores.items():
        n = 32 if name in ("aime24", "aime25", "amc23") else 8
        (model / name).mkdir(parents=True)
        summary = {"n": n, "complete": True, "overall": {f"avg@{n}": value}}
        (model / name / "summary.json").write_text(json.dumps(summary))
    head, _, row, _ = paper_table.table([model]).splitlines()
    labels = ["GPQA-D", "ARC-C", "TruthfulQA", "IFEval", "MMLU-Pro", "SuperGPQA", "HeadQA"]
    assert head.split()[-9:] == labels + ["OOD", "avg"]
    cells = row.split()  # model, 6 in-domain, their average, 7 out-of-domain, their average
    assert len(cells) == 16 and cells[8:15] == ["30.0", "90.0", "50.0", "70.0", "60.0", "40.0", "80.0"]
    assert cells[15] == "60.0"  # (30 + 90 + 50 + 70 + 60 + 40 + 80) / 7, no "(k/7)": all present
    assert cells[7] == "35.0"  # in-domain average of 10..60
