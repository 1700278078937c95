"""prepare_data.py on the user's own files: every format, every kind of bad row, --skip-invalid, duplicates,
determinism, the data card and token statistics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import prepare_data
from prepare.records import SYSTEM_PROMPT
from recipe.psft.rows import read_records

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = ["data_source", "prompt", "demonstration", "ability", "reward_model", "extra_info"]

ROWS = [
    {"prompt": "What is 2 + 3?", "response": "2 + 3 = 5.\nThe answer is \\boxed{5}.", "answer": "5"},
    {"prompt": "What is 4 * 6?", "response": "4 * 6 = 24.\nThe answer is \\boxed{24}.", "answer": "24"},
    {"prompt": "What is 9 - 7?", "response": "9 - 7 = 2.\nThe answer is \\boxed{2}.", "answer": "2"},
    {"prompt": "What is 8 / 2?", "response": "8 / 2 = 4.\nThe answer is \\boxed{4}.", "answer": "4"},
]


def run_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python prepare_data.py ARGS`` from the repo root, as a user would."""
    return subprocess.run(
        [sys.executable, "prepare_data.py", *args, "--no-progress"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Write ``rows`` in the format the suffix names."""
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    elif suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path)
    elif suffix == ".csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        raise ValueError(suffix)
    return path


def read(path: Path) -> list[dict]:
    return [record for _, record in read_records(path)]


def card(out: Path) -> dict:
    return json.loads((out / "data_card.json").read_text())


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".csv"])
def test_local_every_format(tmp_path: Path, suffix: str) -> None:
    src = write_rows(tmp_path / f"mine{suffix}", ROWS)
    out = tmp_path / "out"
    result = run_cli(
        "--source", "local", "--input", str(src), "--output-dir", str(out), "--system-prompt", SYSTEM_PROMPT
    )
    assert result.returncode == 0, result.stderr
    rows = read(out / "train.parquet")
    assert list(pd.read_parquet(out / "train.parquet").columns) == COLUMNS
    assert len(rows) == 4
    first = rows[0]
    assert first["prompt"] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "What is 2 + 3?"},
    ]
    assert first["demonstration"] == ROWS[0]["response"]
    assert first["reward_model"] == {"ground_truth": "5", "style": "rule"}
    assert first["extra_info"] == {"split": "train", "index": 0, "source_row": 1}
    assert first["data_source"] == "mine" and first["ability"] == "math"
    info = card(out)
    assert info["source"] == "local" and info["rows"] == {"train": 4}
    assert info["skipped_count"] == 0 and info["duplicates_count"] == 0
    assert set(info["versions"]) >= {"python", "pyarrow", "pandas"}
    assert len(info["content_sha256"]) == 64
    assert not (out / "test.parquet").exists()


def test_custom_keys_messages_rows_and_held_out_test(tmp_path: Path) -> None:
    """--*-key names, verl's messages rows mixed in, --test-size held out and --test-input appended."""
    rows = [{"question": r["prompt"], "solution": r["response"], "gold": int(r["answer"])} for r in ROWS]
    rows.append(
        {
            "messages": [
                {"role": "user", "content": "What is 1 + 1?"},
                {"role": "assistant", "content": "The answer is \\boxed{2}."},
            ],
            "gold": 2,
        }
    )
    src = write_rows(tmp_path / "mixed.jsonl", rows)
    extra = write_rows(tmp_path / "extra.jsonl", [{"question": "What is 7 + 7?", "gold": 14.0}])
    out = tmp_path / "out"
    result = run_cli(
        "--source",
        "local",
        "--input",
        str(src),
        "--test-input",
        str(extra),
        "--output-dir",
        str(out),
        "--prompt-key",
        "question",
        "--response-key",
        "solution",
        "--answer-key",
        "gold",
        "--test-size",
        "2",
        "--seed",
        "3",
    )
    assert result.returncode == 0, result.stderr
    train, test = read(out / "train.parquet"), read(out / "test.parquet")
    assert len(train) == 3 and len(test) == 3
    assert all(r["extra_info"]["split"] == "test" for r in test)
    assert test[-1]["reward_model"]["ground_truth"] == "14"  # 14.0 from JSON -> "14"
    assert test[-1]["demonstration"] == ""
    everything = {r["prompt"][-1]["content"]: r for r in train + test}
    assert everything["What is 1 + 1?"]["demonstration"] == "The answer is \\boxed{2}."
    assert all(r["prompt"][0]["role"] == "user" for r in train + test)  # no --system-prompt: none added


BAD_ROWS = [
    # (row to insert as row 3, key, reason fragment)
    ({"prompt": "", "response": "x", "answer": "1"}, "prompt", "prompt is an empty string"),
    ({"prompt": "   ", "response": "x", "answer": "1"}, "prompt", "prompt is an empty string"),
    ({"response": "x", "answer": "1"}, "prompt", "prompt is missing"),
    ({"prompt": 17, "response": "x", "answer": "1"}, "prompt", "prompt must be a string"),
    ({"prompt": [{"role": "bot", "content": "hi"}], "response": "x"}, "prompt", "role 'bot'"),
    ({"prompt": [{"role": "user", "content": ""}], "response": "x"}, "prompt", "message 0 content is an empty"),
    ({"prompt": "What?", "response": ""}, "response", "demonstration is an empty string"),
    ({"prompt": "What?"}, "response", "demonstration is missing"),
    ({"prompt": "What?", "response": ["a", "b"]}, "response", "demonstration must be a string"),
    ({"prompt": "What?", "response": "ok", "answer": {"a": 1}}, "answer", "answer must be a string"),
    ({"messages": [{"role": "user", "content": "Hi"}]}, "messages", "demonstration is missing"),
]


@pytest.mark.parametrize(("bad", "key", "reason"), BAD_ROWS, ids=[r[2] for r in BAD_ROWS])
def test_each_bad_row_stops_the_run(tmp_path: Path, capsys, bad: dict, key: str, reason: str) -> None:
    src = write_rows(tmp_path / "in.jsonl", ROWS[:2] + [bad] + ROWS[2:])
    out = tmp_path / "out"
    code = prepare_data.main(["--source", "local", "--input", str(src), "--output-dir", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{src}: row 3: {key!r}: " in err and reason in err, err
    assert "--skip-invalid" in err
    assert not (out / "train.parquet").exists()


def test_test_rows_need_an_answer(tmp_path: Path, capsys) -> None:
    src = write_rows(tmp_path / "in.jsonl", ROWS)
    test = write_rows(tmp_path / "test.jsonl", [{"prompt": "What is 5 + 5?", "answer": "10"}, {"prompt": "No gold"}])
    code = prepare_data.main(
        [
            "--source",
            "local",
            "--input",
            str(src),
            "--test-input",
            str(test),
            "--output-dir",
            str(tmp_path / "out"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert f"{test}: row 2: 'answer': answer is missing (test rows need one for grading)" in err


def test_all_bad_rows_listed_at_once_via_subprocess(tmp_path: Path) -> None:
    rows = ROWS + [{"prompt": "", "response": "x"}, {"prompt": "Q?", "response": ""}]
    src = write_rows(tmp_path / "in.jsonl", rows)
    result = run_cli("--source", "local", "--input", str(src), "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "2 invalid train row problem(s)" in result.stderr
    assert "row 5: 'prompt'" in result.stderr and "row 6: 'response'" in result.stderr


def test_invalid_json_line_names_the_line(tmp_path: Path, capsys) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(ROWS[0]) + "\n" + "{not json\n" + json.dumps(ROWS[1]) + "\n")
    assert prepare_data.main(["--source", "local", "--input", str(src), "--output-dir", str(tmp_path / "o")]) == 2
    assert f"{src}: row 2: invalid JSON" in capsys.readouterr().err


def test_missing_key_lists_columns_present(tmp_path: Path, capsys) -> None:
    src = write_rows(tmp_path / "in.csv", [{"question": "Q?", "solution": "A"}])
    assert prepare_data.main(["--source", "local", "--input", str(src), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "['prompt', 'response']" in err and "columns present: ['question', 'solution']" in err
    assert "--prompt-key" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source", "local"], "--source local needs --input FILE"),
        (["--source", "local", "--input", "does/not/exist.jsonl"], "does/not/exist.jsonl: no such file"),
        (["--source", "local", "--input", "prepare_data.py"], "unsupported file type '.py'"),
        (["--source", "builtin", "--max-length", "10"], "--max-length needs --tokenizer"),
        (["--source", "builtin", "--benchmarks", "gsm9k"], "unknown ['gsm9k']"),
        (["--source", "builtin", "--test-size", "-1"], "--test-size must be >= 0"),
        (["--source", "builtin", "--chat-template-kwargs", "{}"], "--chat-template-kwargs needs --tokenizer"),
        (["--source", "builtin", "--tokenizer", "t", "--chat-template-kwargs", "[1]"], "expected a JSON object"),
        (["--source", "builtin", "--tokenizer", "t", "--chat-template-kwargs", "{x"], "not valid JSON"),
    ],
)
def test_bad_options_exit_2(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    assert prepare_data.main([*args, "--output-dir", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err


def test_skip_invalid_drops_and_reports(tmp_path: Path) -> None:
    rows = ROWS[:2] + [{"prompt": "", "response": "x"}, {"prompt": "Q?", "response": 3}] + ROWS[2:]
    src = write_rows(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    result = run_cli("--source", "local", "--input", str(src), "--output-dir", str(out), "--skip-invalid")
    assert result.returncode == 0, result.stderr
    assert "skipped 2 invalid row problem(s)" in result.stderr
    assert "row 3: 'prompt': prompt is an empty string" in result.stderr
    assert len(read(out / "train.parquet")) == 4
    info = card(out)
    assert info["skipped_count"] == 2
    assert info["skipped_by_reason"] == {"demonstration must be a string": 1, "prompt is an empty string": 1}
    assert info["skipped"][0] == {"origin": str(src), "row": 3, "key": "prompt", "reason": "prompt is an empty string"}


def test_duplicates_reported_and_dropped(tmp_path: Path) -> None:
    rows = ROWS + [dict(ROWS[1], response="another solution"), dict(ROWS[0], prompt="  What is 2 +  3? ")]
    src = write_rows(tmp_path / "in.jsonl", rows)
    test = write_rows(
        tmp_path / "test.jsonl",
        [{"prompt": "What is 4 * 6?", "answer": "24"}, {"prompt": "What is 3 + 3?", "answer": "6"}],
    )
    out = tmp_path / "out"
    result = run_cli("--source", "local", "--input", str(src), "--test-input", str(test), "--output-dir", str(out))
    assert result.returncode == 0, result.stderr
    assert "dropped 3 duplicate prompt(s)" in result.stderr
    assert f"{src}: row 5: 'prompt': duplicate prompt of {src} row 2" in result.stderr
    assert f"{test}: row 1: 'prompt': duplicate prompt of {src} training set row 2" in result.stderr
    train, tested = read(out / "train.parquet"), read(out / "test.parquet")
    assert [r["demonstration"] for r in train] == [r["response"] for r in ROWS]  # first occurrence kept
    assert [r["prompt"][-1]["content"] for r in tested] == ["What is 3 + 3?"]
    assert card(out)["duplicates_count"] == 3


def test_local_is_deterministic(tmp_path: Path) -> None:
    src = write_rows(tmp_path / "in.jsonl", ROWS * 1 + [dict(r, prompt=r["prompt"] + " (again)") for r in ROWS])
    outs = []
    for name in ("a", "b"):
        result = run_cli(
            "--source",
            "local",
            "--input",
            str(src),
            "--output-dir",
            str(tmp_path / name),
            "--test-size",
            "3",
            "--seed",
            "7",
        )
        assert result.returncode == 0, result.stderr
        outs.append(tmp_path / name)
    for name in ("train.parquet", "test.parquet", "data_card.json"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory) -> Path:
    from psft_assets.tiny_model import build_tokenizer

    path = tmp_path_factory.mktemp("tok")
    build_tokenizer(path)
    return path


def test_token_statistics(tmp_path: Path, tiny_tokenizer: Path) -> None:
    from transformers import AutoTokenizer

    rows = ROWS + [{"prompt": "What is 1 + 1?", "response": "1 + 1 = 2. " * 40, "answer": "2"}]
    src = write_rows(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer))
    lengths = [
        len(
            tok(
                tok.apply_chat_template(
                    [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}],
                    tokenize=False,
                ),
                add_special_tokens=False,
            )["input_ids"]
        )
        for r in rows
    ]
    limit = sorted(lengths)[-2] + 1  # only the long row exceeds it
    result = run_cli(
        "--source",
        "local",
        "--input",
        str(src),
        "--output-dir",
        str(out),
        "--tokenizer",
        str(tiny_tokenizer),
        "--max-length",
        str(limit),
    )
    assert result.returncode == 0, result.stderr
    stats = card(out)["token_stats"]["train"]
    assert stats["total_tokens"]["max"] == max(lengths)
    assert stats["total_tokens"]["p50"] == sorted(lengths)[2]
    assert stats["over_max_length"] == 1 and stats["prompt_fills_max_length"] == 0
    assert set(stats["prompt_tokens"]) == {"p50", "p95", "max"}
    assert "1 row(s) over --max-length" in result.stdout


def test_prepared_file_feeds_back_in(tmp_path: Path) -> None:
    """Our own (verl-format) output is valid local input: answer from reward_model.ground_truth, labels kept."""
    first = tmp_path / "first"
    src = write_rows(tmp_path / "in.jsonl", [dict(r, data_source="mine") for r in ROWS])
    assert run_cli("--source", "local", "--input", str(src), "--output-dir", str(first)).returncode == 0
    second = tmp_path / "second"
    result = run_cli(
        "--source",
        "local",
        "--input",
        str(first / "train.parquet"),
        "--response-key",
        "demonstration",
        "--output-dir",
        str(second),
        "--test-size",
        "1",
    )
    assert result.returncode == 0, result.stderr
    rows = read(second / "train.parquet") + read(second / "test.parquet")
    assert sorted(r["reward_model"]["ground_truth"] for r in rows) == ["2", "24", "4", "5"]
    assert {r["data_source"] for r in rows} == {"mine"}
