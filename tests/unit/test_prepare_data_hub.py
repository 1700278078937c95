"""The Hub sources (the paper's training set, the benchmarks): a clean, fast failure offline, and their
conversion on small local samples in the Hub's column layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import prepare_data
from prepare import hub
from prepare.records import SYSTEM_PROMPT, DataError, messages_of, to_row, validate
from recipe.psft.rows import read_records

ROOT = Path(__file__).resolve().parents[2]

# Rows in Elliott/Openr1-Math-46k-8192's layout (LUFFY's release): system + user prompt, target messages.
OPENR1_ROWS = [
    {
        "data_source": "openr1",
        "prompt": [
            {"role": "system", "content": "Your task is to follow a systematic, thorough reasoning process..."},
            {"role": "user", "content": f"Compute {a} + {b}."},
        ],
        "target": [
            {"role": "assistant", "content": f"<think>\nadd\n</think>\n{a} + {b} = {a + b}, so \\boxed{{{a + b}}}"}
        ],
        "ability": "math",
        "reward_model": {"ground_truth": str(a + b), "style": "rule"},
        "extra_info": {"index": i, "split": "default"},
    }
    for i, (a, b) in enumerate([(1, 2), (3, 4), (5, 6)])
]
BENCH_ROWS = {
    "aime24": [{"id": 60, "problem": "Find x.", "solution": "...", "answer": "204", "url": "u", "year": "2024"}],
    "aime25": [{"problem": "Find y.", "answer": "70", "id": "0"}],
    "amc": [{"id": 0, "problem": "Find z.", "answer": 142.0, "url": "u"}, {"id": 1, "problem": "Half?", "answer": 0.5}],
    "math500": [
        {
            "problem": "Compute 1+1.",
            "solution": "2",
            "answer": "\\frac{1}{2}",
            "subject": "A",
            "level": 1,
            "unique_id": "t/1.json",
        }
    ],
    "minerva": [{"question": "Speed of light?", "answer": "3e8"}],
}


def offline_run(*args: str, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HTTP", "HTTPS", "http"))}
    environ.update(env)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "prepare_data.py", *args, "--no-progress"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
    )
    return result, time.monotonic() - started


@pytest.mark.parametrize(
    "args", [[], ["--source", "openr1"], ["--source", "benchmarks"], ["--source", "builtin", "--benchmarks", "aime24"]]
)
@pytest.mark.parametrize(
    "env",
    [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}],
    ids=["HF_HUB_OFFLINE", "unreachable-endpoint"],
)
def test_hub_sources_fail_fast_offline(tmp_path: Path, args: list[str], env: dict) -> None:
    result, seconds = offline_run(*args, "--output-dir", str(tmp_path / "out"), **env)
    assert result.returncode == 3, result.stderr
    assert seconds < 30
    assert "--source builtin" in result.stderr and "--source local" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "train.parquet").exists()


def test_openr1_row_conversion_matches_the_original() -> None:
    """The original: system prompt replaced by the step-by-step/\\boxed{} one, user turn = prompt[1],
    demonstration = target[0]['content'], reward_model kept, data_source 'lighteval/MATH'."""
    example = hub.openr1_example(OPENR1_ROWS[1], 2)
    assert validate(example, "train") == []
    row = to_row(example, messages_of(example, SYSTEM_PROMPT), "train", 1)
    assert row == {
        "data_source": "lighteval/MATH",
        "prompt": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "Compute 3 + 4."}],
        "demonstration": OPENR1_ROWS[1]["target"][0]["content"],
        "ability": "math",
        "reward_model": {"ground_truth": "7", "style": "rule"},
        "extra_info": {"split": "train", "index": 1, "source_row": 2},
    }


def test_openr1_bad_rows_name_the_hub_keys() -> None:
    row = dict(OPENR1_ROWS[0], target=[])
    problems = validate(hub.openr1_example(row, 9), "train")
    assert [str(p) for p in problems] == [
        "Elliott/Openr1-Math-46k-8192: row 9: 'target[0].content': demonstration is missing"
    ]


@pytest.mark.parametrize("name", sorted(BENCH_ROWS))
def test_benchmark_conversion(name: str) -> None:
    bench = hub.BENCHMARKS[name]
    hub.check_layout(BENCH_ROWS[name], bench.repo, [bench.problem_keys, bench.answer_keys])
    example = hub.benchmark_example(bench, BENCH_ROWS[name][0], 1)
    assert validate(example, "test") == []
    row = to_row(example, messages_of(example, SYSTEM_PROMPT), "test", 0)
    assert row["data_source"] == name and row["demonstration"] == ""
    assert row["prompt"][0]["content"] == SYSTEM_PROMPT and row["prompt"][1]["content"].endswith(
        ("x.", "y.", "z.", "1+1.", "light?")
    )
    expected = {"aime24": "204", "aime25": "70", "amc": "142", "math500": "\\frac{1}{2}", "minerva": "3e8"}
    assert row["reward_model"]["ground_truth"] == expected[name]


def test_changed_hub_layout_lists_the_columns() -> None:
    bench = hub.BENCHMARKS["math500"]
    with pytest.raises(DataError, match=r"\['problem'\] not found; columns present: \['question', 'answer'\]"):
        hub.check_layout([{"question": "q", "answer": "1"}], bench.repo, [bench.problem_keys, bench.answer_keys])


def test_openr1_and_benchmarks_end_to_end_with_a_local_sample(tmp_path: Path, monkeypatch, capsys) -> None:
    """The whole --source openr1 path (hold-out, benchmarks, card) with the Hub download replaced by samples."""
    calls = []

    def fake_load(repo: str, split: str, config: str | None = None) -> list[dict]:
        calls.append((repo, split))
        if repo == hub.OPENR1_REPO:
            return [dict(r) for r in OPENR1_ROWS] + [dict(OPENR1_ROWS[0])]  # one duplicate
        return next(BENCH_ROWS[b.name] for b in hub.BENCHMARKS.values() if b.repo == repo)

    monkeypatch.setattr(hub, "load_hub_rows", fake_load)
    out = tmp_path / "out"
    assert prepare_data.main(["--output-dir", str(out), "--test-size", "1", "--no-progress"]) == 0
    assert calls[0] == (hub.OPENR1_REPO, "train") and len(calls) == 1 + len(hub.BENCHMARKS)
    names = sorted(p.name for p in out.glob("*.parquet"))
    assert names == ["test.parquet"] + [f"test_{n}.parquet" for n in sorted(hub.BENCHMARKS)] + ["train.parquet"]
    train = [record for _, record in read_records(out / "train.parquet")]
    assert len(train) == 2 and all(r["prompt"][0]["content"] == SYSTEM_PROMPT for r in train)
    amc = pd.read_parquet(out / "test_amc.parquet")
    assert list(amc["reward_model"].map(lambda r: r["ground_truth"])) == ["142", "0.5"]  # one row per problem
    card = json.loads((out / "data_card.json").read_text())
    assert card["duplicates_count"] == 1 and card["rows"]["test"] == 1
    assert "HuggingFaceH4/MATH-500 (test)" in card["hub_datasets"]
    assert "dropped 1 duplicate prompt" in capsys.readouterr().err
