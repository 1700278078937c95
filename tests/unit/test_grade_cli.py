"""python -m evaluation.grade: stored responses graded without a model, and an evaluation folder graded
again into a new one with the grader's version recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from unit.test_eval_client import FakeOpenAI, run_cli, write_jsonl

from evaluation import grade as gradecli
from evaluation.grader import GRADER_VERSION
from evaluation.store import RUN_FILE, SAMPLES_FILE, SUMMARY_FILE


def _row(source: str, question: str, gold: str) -> dict:
    return {
        "data_source": source,
        "prompt": [{"role": "user", "content": question}],
        "reward_model": {"ground_truth": gold, "style": "rule"},
    }


def _jsonl(path: Path, items: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in items))
    return path


def _output(capsys: pytest.CaptureFixture[str]) -> tuple[list[dict], dict, str]:
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines() if line.strip()]
    return lines[:-1], lines[-1]["summary"], captured.err


def test_responses_are_graded_without_a_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    pytest.importorskip("lm_eval")
    from evaluation.ifeval import ifeval_ground_truth

    ife = ifeval_ground_truth(
        ["punctuation:no_comma", "length_constraints:number_words"], [{}, {"relation": "at least", "num_words": 3}]
    )
    test_file = _jsonl(
        tmp_path / "test.jsonl",
        [
            _row("math", "What is 6*7?", "42"),
            _row("mc", "Pick one", "C"),
            _row("ifeval", "Write three words, no commas.", ife),
            _row("math", "What is 1?", "1"),
        ],
    )
    responses = _jsonl(
        tmp_path / "responses.jsonl",
        [
            {"row": 1, "response": "So \\boxed{42}."},
            {"row": 1, "response": "\\boxed{41}"},
            {"row": 2, "response": "The answer is (C)."},
            {"row": 3, "response": "Three words here"},
            {"row": 3, "response": "Hi, there"},
            {"row": 3, "response": "Sure, here:\nThree words here"},
            {"row": 4, "response": "\\boxed{9^{9^{9^{9^{9^{9}}}}}}"},
        ],
    )
    argv = ["--test-file", str(test_file), "--responses", str(responses), "--grade-timeout", "2"]
    assert gradecli.main(argv) == 0
    lines, summary, _ = _output(capsys)
    assert [x["row"] for x in lines] == [1, 1, 2, 3, 3, 3, 4], lines
    assert [x["correct"] for x in lines] == [True, False, True, True, False, False, False], json.dumps(lines)
    assert lines[0]["extracted_answer"] == "42" and lines[0]["boxed"] is True
    assert [x["grading_failure"] for x in lines] == [None] * 6 + ["timeout"]
    ok, bad, loose_only = lines[3]["ifeval"], lines[4]["ifeval"], lines[5]["ifeval"]
    assert ok == {"strict": [True, True], "loose": [True, True], "loose_correct": True} | {
        "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"]
    }
    assert bad["strict"] == [False, False] and bad["loose_correct"] is False
    # The comma is on the first line only: strict fails, loose (without the first line) passes.
    assert loose_only["strict"] == [False, True] and loose_only["loose"] == [True, True]
    assert "ifeval" not in lines[0]
    assert summary["responses"] == 7 and summary["correct"] == 3
    assert summary["accuracy"] == pytest.approx(3 / 7)
    assert summary["grading_timeouts"] == 1 and summary["grading_failures"] == [{"row": 4, "failure": "timeout"}]
    ifeval = summary["by_data_source"]["ifeval"]["ifeval"]
    assert ifeval["prompt_level_strict_acc"] == pytest.approx(1 / 3)
    assert ifeval["inst_level_strict_acc"] == pytest.approx(3 / 6)
    assert ifeval["prompt_level_loose_acc"] == pytest.approx(2 / 3)
    assert ifeval["inst_level_loose_acc"] == pytest.approx(4 / 6)
    assert summary["grader_version"] == GRADER_VERSION and summary["ifeval_checkers"]["lm-eval"]


def test_bad_responses_are_named_before_grading(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    test_file = _jsonl(tmp_path / "test.jsonl", [_row("math", "q1", "1"), _row("math", "q2", "2")])
    responses = _jsonl(
        tmp_path / "r.jsonl",
        [
            {"row": 1, "response": "\\boxed{1}"},
            "not json",
            {"row": 0, "response": "x"},
            {"row": 3, "response": "x"},
            {"row": "1", "response": "x"},
            {"row": 2},
            ["row", 1],
        ],
    )
    assert gradecli.main(["--test-file", str(test_file), "--responses", str(responses)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing graded
    err = captured.err
    assert "6 line(s) cannot be graded" in err
    assert f"{responses}:2: not valid JSON" in err
    assert f"{responses}:3: 'row': 0 is not a row of {test_file} (rows 1..2)" in err
    assert f"{responses}:4: 'row': 3 is not a row" in err
    assert f"{responses}:5: 'row': '1' is not a row number" in err
    assert f"{responses}:6: 'response': expected a string, got NoneType" in err
    assert f"{responses}:7: expected an object" in err
    assert gradecli.main(["--responses", str(responses)]) == 2
    assert "--responses needs --test-file" in capsys.readouterr().err


def test_regrade_writes_a_new_folder_with_the_grader_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """A folder graded by an older grader (one sample hit its time-out) is graded again: the new folder
    holds the corrected rows, a new summary with this grader's version and where it came from, and is an
    evaluation folder the CLI resumes; the old folder is left as it was."""
    server = FakeOpenAI()
    try:
        test_file = write_jsonl(tmp_path / "t.jsonl")
        old = tmp_path / "old"
        assert run_cli(test_file, old, server.url, "--n", "2") == 0
        # As an older grader left it: its version in run.json, one correct sample lost to a time-out.
        run = json.loads((old / RUN_FILE).read_text())
        run["fingerprint"]["grader_version"] = "1"
        (old / RUN_FILE).write_text(json.dumps(run))
        rows = [json.loads(line) for line in (old / SAMPLES_FILE).read_text().splitlines()]
        first_right = next(i for i, r in enumerate(rows) if r["correct"])
        rows[first_right].update(correct=False, grading_failure="timeout")
        (old / SAMPLES_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
        before = {p.name: p.read_bytes() for p in old.iterdir() if p.is_file() and p.name != ".lock"}
        old_avg = json.loads((old / SUMMARY_FILE).read_text())["overall"]["avg@2"]
        capsys.readouterr()

        assert gradecli.main(["--regrade", str(old)]) == 0
        new = tmp_path / f"old-regrade-v{GRADER_VERSION}"
        assert "graded again" in capsys.readouterr().err
        after = {p.name: p.read_bytes() for p in old.iterdir() if p.is_file() and p.name != ".lock"}
        assert after == before
        new_rows = {(r["problem_id"], r["sample_index"]): r for r in map(json.loads, (new / SAMPLES_FILE).open())}
        fixed = new_rows[(rows[first_right]["problem_id"], rows[first_right]["sample_index"])]
        assert fixed["correct"] is True and fixed["grading_failure"] is None
        assert fixed["response"] == rows[first_right]["response"]
        summary = json.loads((new / SUMMARY_FILE).read_text())
        assert summary["grader_version"] == GRADER_VERSION
        assert summary["regraded_from"]["grader_version"] == "1"
        assert summary["regraded_from"]["folder"] == str(old.resolve())
        assert summary["overall"]["avg@2"] == pytest.approx(old_avg)  # the time-out no longer costs a sample
        assert summary["overall"]["samples_grading_timeout"] == 0 and summary["grading_failures"] == []
        assert summary["model"] == "tiny" and summary["sampling"]["max_tokens"] == 16
        new_run = json.loads((new / RUN_FILE).read_text())
        assert new_run["fingerprint"] == {**run["fingerprint"], "grader_version": GRADER_VERSION}
        # The new folder is an evaluation folder: the same evaluation resumes it with nothing to generate.
        requests = len(server.requests)
        assert run_cli(test_file, new, server.url, "--n", "2") == 0
        assert len(server.requests) == requests
        # Once written, the folder is not overwritten.
        assert gradecli.main(["--regrade", str(old)]) == 2
        assert "already holds samples.jsonl" in capsys.readouterr().err
    finally:
        server.close()


def test_regrade_of_a_folder_that_is_not_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert gradecli.main(["--regrade", str(tmp_path)]) == 2
    assert "not an evaluation folder (needs run.json and samples.jsonl)" in capsys.readouterr().err
