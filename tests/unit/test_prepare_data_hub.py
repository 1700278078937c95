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
from benchmark_rows import BENCH_ROWS, SHUFFLED_CORRECT
from time_limits import limit

import prepare_data
from prepare import hub
from prepare.collect import benchmark_prompt
from prepare.records import SYSTEM_PROMPT, DataError, messages_of, to_row, validate
from recipe.psft.exit_codes import SOURCE_UNAVAILABLE
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
    assert result.returncode == SOURCE_UNAVAILABLE, result.stderr
    assert seconds < limit(30)
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
    hub.check_layout(BENCH_ROWS[name], bench.repo, bench.required_columns())
    example = hub.benchmark_example(bench, BENCH_ROWS[name][0], 1)
    assert validate(example, "test") == []
    row = to_row(example, messages_of(example, benchmark_prompt(bench, None)), "test", 0)
    assert row["data_source"] == name and row["demonstration"] == ""
    user = row["prompt"][-1]["content"]
    if name == "ifeval":  # the instruction as released, no system turn; the gold is the checkers' input
        assert row["prompt"] == [{"role": "user", "content": BENCH_ROWS["ifeval"][0]["prompt"]}]
        assert json.loads(row["reward_model"]["ground_truth"]) == {
            "grader": "ifeval",
            "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
            "kwargs": [{}, {"num_words": 300, "relation": "at least"}],
        }
        return
    assert row["prompt"][0]["content"] == SYSTEM_PROMPT and len(row["prompt"]) == 2
    expected = {
        "aime24": "204",
        "aime25": "70",
        "amc23": "142",
        "math500": "\\frac{1}{2}",
        "minerva": "3e8",
        "olympiadbench": "(1,1), (0,2)",
        "mmlu_pro": "B",
    }
    gold = row["reward_model"]["ground_truth"]
    if name in SHUFFLED_CORRECT:
        # The correct option sits where the seeded shuffle put it, and the gold letter points at it.
        options = [line[3:] for line in user.splitlines() if line[1:3] == ") "]
        assert gold in "ABCDE"[: len(options)] and f"{gold}) {SHUFFLED_CORRECT[name]}" in user
        assert len(options) == len(set(options)) >= 3
    else:
        assert gold == expected[name]
    if bench.kind == "choice":
        last = "ABCDEFGHIJ"[len([line for line in user.splitlines() if line[1:3] == ") "]) - 1]
        assert user.endswith(f"Answer with the letter of the correct option (A-{last}).")
    else:
        assert user.endswith(("x.", "y.", "z.", "1+1.", "light?"))


def test_benchmark_suite_definitions() -> None:
    """The paper's suite (arXiv v2): six in-domain maths sets, seven out-of-domain sets in the paper's order."""
    assert hub.IN_DOMAIN == ("aime24", "aime25", "amc23", "math500", "minerva", "olympiadbench")
    assert hub.OUT_OF_DOMAIN == (
        "gpqa_diamond",
        "arc_challenge",
        "truthfulqa",
        "ifeval",
        "mmlu_pro",
        "supergpqa",
        "headqa",
    )
    counts = {n: b.problems for n, b in hub.BENCHMARKS.items() if b.domain == "out"}
    assert counts == {
        "gpqa_diamond": 198,
        "arc_challenge": 1172,
        "truthfulqa": 817,
        "ifeval": 541,
        "mmlu_pro": 12032,
        "supergpqa": 26529,
        "headqa": 2742,
    }
    assert hub.BENCHMARKS["amc23"].problems == 40 and hub.BENCHMARKS["olympiadbench"].problems == 675
    assert all(b.kind == "choice" for b in hub.BENCHMARKS.values() if b.domain == "out" and b.name != "ifeval")
    assert prepare_data.parse_benchmarks("all") == list(hub.BENCHMARKS)


def test_gpqa_shuffle_is_reproducible_and_spreads_the_answer() -> None:
    """Same question -> same order whatever the row order; over many questions every letter is the key."""
    bench = hub.BENCHMARKS["gpqa_diamond"]
    rows = [
        {
            "Question": f"Question {i}?",
            "Correct Answer": "right",
            "Incorrect Answer 1": "w1",
            "Incorrect Answer 2": "w2",
            "Incorrect Answer 3": "w3",
        }
        for i in range(200)
    ]
    first = [hub.benchmark_example(bench, r, i) for i, r in enumerate(rows)]
    again = [hub.benchmark_example(bench, r, i) for i, r in reversed(list(enumerate(rows)))][::-1]
    assert [(e.prompt, e.answer) for e in first] == [(e.prompt, e.answer) for e in again]
    counts = {letter: sum(e.answer == letter for e in first) for letter in "ABCD"}
    assert all(30 <= c <= 70 for c in counts.values()), counts
    for e in first:
        assert f"{e.answer}) right" in e.prompt


def test_choice_rows_with_a_broken_key_are_reported() -> None:
    gpqa = hub.BENCHMARKS["gpqa_diamond"]
    row = dict(BENCH_ROWS["gpqa_diamond"][0], **{"Incorrect Answer 2": None})
    problems = validate(hub.benchmark_example(gpqa, row, 7), "test")
    assert problems and problems[0].key == "Incorrect Answer 2" and problems[0].row == 7
    mmlu = hub.BENCHMARKS["mmlu_pro"]
    with pytest.raises(DataError, match="'answer' 'C' disagrees with 'answer_index' 1"):
        hub.benchmark_example(mmlu, dict(BENCH_ROWS["mmlu_pro"][0], answer="C"), 3)
    bad = dict(BENCH_ROWS["mmlu_pro"][0], answer="Z", answer_index=None)
    assert validate(hub.benchmark_example(mmlu, bad, 4), "test")[0].key == "answer"


def test_changed_hub_layout_lists_the_columns() -> None:
    bench = hub.BENCHMARKS["math500"]
    with pytest.raises(DataError, match=r"\['problem'\] not found; columns present: \['question', 'answer'\]"):
        hub.check_layout([{"question": "q", "answer": "1"}], bench.repo, [bench.problem_keys, bench.answer_keys])


def test_openr1_and_benchmarks_end_to_end_with_a_local_sample(tmp_path: Path, monkeypatch, capsys) -> None:
    """The whole --source openr1 path (hold-out, benchmarks, card) with the Hub download replaced by samples."""
    calls = []

    def fake_load(repo: str, split: str, config: str | None = None, drop_columns=(), **kwargs: str) -> list[dict]:
        calls.append((repo, split))
        if repo == hub.OPENR1_REPO:
            return [dict(r) for r in OPENR1_ROWS] + [dict(OPENR1_ROWS[0])]  # one duplicate
        return next(BENCH_ROWS[b.name] for b in hub.BENCHMARKS.values() if b.repo == repo and b.split == split)

    monkeypatch.setattr(hub, "load_hub_rows", fake_load)
    out = tmp_path / "out"
    assert prepare_data.main(["--output-dir", str(out), "--test-size", "1", "--no-progress"]) == 0
    assert calls[0] == (hub.OPENR1_REPO, "train") and len(calls) == 1 + len(hub.BENCHMARKS)
    names = sorted(p.name for p in out.glob("*.parquet"))
    assert names == ["test.parquet"] + [f"test_{n}.parquet" for n in sorted(hub.BENCHMARKS)] + ["train.parquet"]
    train = [record for _, record in read_records(out / "train.parquet")]
    assert len(train) == 2 and all(r["prompt"][0]["content"] == SYSTEM_PROMPT for r in train)
    amc = pd.read_parquet(out / "test_amc23.parquet")
    assert list(amc["reward_model"].map(lambda r: r["ground_truth"])) == ["142", "0.5"]  # one row per problem
    card = json.loads((out / "data_card.json").read_text())
    assert card["duplicates_count"] == 1 and card["rows"]["test"] == 1
    assert "HuggingFaceH4/MATH-500 (test)" in card["hub_datasets"]
    assert "dropped 1 duplicate prompt" in capsys.readouterr().err
