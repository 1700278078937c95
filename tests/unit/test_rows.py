"""Reading rows: text stays text in every format, and bad encodings are errors naming file, row and key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recipe.psft.rows import DataError, conversation_of, read_records

DIGIT_ROWS = [
    {"prompt": "0042", "response": "007", "answer": "1e3"},
    {"prompt": "12", "response": "3.50", "answer": "0123"},
]


def write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".csv":
        path.write_text("prompt,response,answer\n" + "".join(",".join(r.values()) + "\n" for r in rows))
    else:
        import pandas as pd

        pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_digit_strings_stay_strings(tmp_path: Path, suffix: str) -> None:
    """pandas.read_json would read "007" as the integer 7 and "1e3" as 1000.0; nothing here infers types."""
    records = read_records(write(tmp_path / f"rows{suffix}", DIGIT_ROWS))
    assert records == [(1, DIGIT_ROWS[0]), (2, DIGIT_ROWS[1])]


def test_digit_string_rows_train(tmp_path: Path) -> None:
    """A JSONL demonstration of digits is a demonstration, not a type error."""
    path = write(tmp_path / "digits.jsonl", [{"prompt": "2 + 2 =", "demonstration": "4"}])
    ((row, record),) = read_records(path)
    conversation = conversation_of(record, str(path), row, "prompt", "demonstration", "messages", list(record))
    assert conversation.messages[-1] == {"role": "assistant", "content": "4"}
    assert conversation.trained == (1,)


def test_lone_surrogate_names_file_row_and_key(tmp_path: Path) -> None:
    path = tmp_path / "surrogate.jsonl"
    good = json.dumps({"prompt": "fine", "demonstration": "fine"})
    path.write_text(good + "\n" + '{"prompt": "fine", "demonstration": "bad \\ud83d here"}\n')
    with pytest.raises(DataError) as info:
        read_records(path)
    assert f"{path}: row 2: 'demonstration': lone surrogate ('\\ud83d') at character 4" in str(info.value)


def test_invalid_utf8_names_file_row_and_nested_key(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    lines = [
        json.dumps({"messages": [{"role": "user", "content": "ok"}]}).encode(),
        b"",  # blank lines are skipped but still counted: row numbers are line numbers
        '{"messages": [{"role": "user", "content": "caf\u00e9"}]}'.encode("latin-1"),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DataError) as info:
        read_records(path)
    message = str(info.value)
    assert f"{path}: row 3: 'messages[0].content': byte 0xe9 is not UTF-8" in message, message
    assert "re-encode the file as UTF-8" in message


def test_invalid_utf8_in_csv(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(b"prompt,response\nfine,fine\nna\xefve,fine\n")
    with pytest.raises(DataError, match=r"row 2: 'prompt': byte 0xef is not UTF-8"):
        read_records(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [('{"a": [1], "b": [2]}', "exactly one list"), ("{", "invalid JSON at line 1"), ('"text"', "got str")],
)
def test_bad_json_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_records(path)


def test_rows_that_are_not_objects_are_kept_for_the_caller_to_reject(tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text('[{"prompt": "q"}, 7]')
    records = read_records(path)
    assert records == [(1, {"prompt": "q"}), (2, 7)]
    with pytest.raises(DataError, match=r"row 2: '<row>': expected an object with columns, got int"):
        conversation_of(records[1][1], str(path), 2, "prompt", "demonstration", "messages", ["prompt"])
