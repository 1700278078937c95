"""The out-of-domain suite of arXiv v2 (ARC-Challenge, TruthfulQA, IFEval, SuperGPQA, HEAD-QA) on samples in
the Hub's layouts, and --benchmark-files: a local copy in the Hub's layout gives the Hub's output."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from benchmark_rows import BENCH_ROWS, SHUFFLED_CORRECT

import prepare_data
from evaluation.ifeval import parse_ground_truth
from prepare import benchmark_files, hub, ood
from prepare.records import DataError, validate
from recipe.psft.files import file_sha256
from recipe.psft.rows import read_records

NEW = ("arc_challenge", "truthfulqa", "ifeval", "supergpqa", "headqa")


def test_truthfulqa_shuffles_the_first_listed_answer_away_and_letters_pass_j() -> None:
    """mc1 always lists the correct answer first: after the seeded shuffle every letter is the key about
    equally often, and a 13-option row is lettered A-M."""
    bench = hub.BENCHMARKS["truthfulqa"]
    rows = [
        {"question": f"Question {i}?", "mc1_targets": {"choices": ["right", "w1", "w2", "w3"], "labels": [1, 0, 0, 0]}}
        for i in range(200)
    ]
    golds = [hub.benchmark_example(bench, r, i + 1).answer for i, r in enumerate(rows)]
    assert all(30 <= golds.count(letter) <= 70 for letter in "ABCD"), {x: golds.count(x) for x in "ABCD"}
    assert golds == [hub.benchmark_example(bench, r, 1).answer for r in rows]  # independent of row number
    many = {"question": "Which?", "mc1_targets": {"choices": [f"o{i}" for i in range(13)], "labels": [1] + [0] * 12}}
    example = hub.benchmark_example(bench, many, 1)
    assert validate(example, "test") == []
    assert "M) " in example.prompt and example.prompt.endswith("(A-M).")
    assert f"{example.answer}) o0\n" in example.prompt + "\n"


@pytest.mark.parametrize(
    ("name", "change", "key", "reason"),
    [
        ("arc_challenge", {"answerKey": "E"}, "answerKey", "'E' is not one of the labels"),
        ("arc_challenge", {"choices": {"text": ["a", "b"], "label": ["A"]}}, "choices.label", "1 labels for 2 options"),
        ("truthfulqa", {"mc1_targets": {"choices": ["a", "b"], "labels": [1, 1]}}, "mc1_targets.labels", "one 1"),
        ("supergpqa", {"answer_letter": "F"}, "answer_letter", "'F' names none of the 5 options"),
        ("supergpqa", {"answer": "nucleus"}, "answer", "is not option B"),
        ("supergpqa", {"options": ["only one"]}, "options", "expected a list of 2-26 options"),
        ("headqa", {"ra": 7}, "ra", "7 is not one of the answer ids [1, 2, 3, 4]"),
        ("headqa", {"qtext": "  "}, "qtext", "question is missing or empty"),
        ("ifeval", {"kwargs": [{}]}, "kwargs", "expected 2 argument objects"),
        ("ifeval", {"instruction_id_list": []}, "instruction_id_list", "non-empty list"),
        ("ifeval", {"instruction_id_list": ["no_comma", "x:y"]}, "instruction_id_list", "is not an instruction id"),
    ],
)
def test_bad_rows_are_reported_with_row_and_hub_key(name: str, change: dict, key: str, reason: str) -> None:
    row = dict(copy.deepcopy(BENCH_ROWS[name][0]), **change)
    problems = validate(hub.benchmark_example(hub.BENCHMARKS[name], row, 12), "test")
    assert len(problems) == 1, problems
    assert (problems[0].row, problems[0].key) == (12, key) and reason in problems[0].reason


def test_ifeval_gold_is_the_same_from_googles_jsonl_and_the_hubs_parquet() -> None:
    """Google's input_data.jsonl gives only the used arguments; the Hub's parquet every name, nulls included."""
    hub_row = BENCH_ROWS["ifeval"][0]
    google_row = dict(hub_row, kwargs=[{}, {"relation": "at least", "num_words": 300}])
    assert ood.ifeval_gold(hub_row) == ood.ifeval_gold(google_row)
    assert parse_ground_truth(ood.ifeval_gold(hub_row)).kwargs == ({}, {"relation": "at least", "num_words": 300})


def test_headqa_answers_as_a_struct_of_lists_give_the_same_row() -> None:
    """datasets may hand a list of {aid, atext} back as {aid: [...], atext: [...]}: the same prompt and gold."""
    bench, row = hub.BENCHMARKS["headqa"], BENCH_ROWS["headqa"][0]
    answers = row["answers"]
    columns = dict(row, answers={"aid": [a["aid"] for a in answers], "atext": [a["atext"] for a in answers]})
    first, second = hub.benchmark_example(bench, row, 1), hub.benchmark_example(bench, columns, 1)
    assert (first.prompt, first.answer) == (second.prompt, second.answer) and validate(second, "test") == []


def _write(path: Path, rows: list[dict]) -> Path:
    """A local copy in the Hub's layout, as parquet, JSONL or JSON by the suffix."""
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path.write_text(json.dumps(rows))
    return path


def _hub_rows(monkeypatch) -> list[str]:
    """load_hub_rows answers from BENCH_ROWS (the Hub's layout) and records what was asked for."""
    calls: list[str] = []

    def fake_load(repo: str, split: str, config=None, drop_columns=(), **kwargs) -> list[dict]:
        bench = next(b for b in hub.BENCHMARKS.values() if (b.repo, b.split, b.config) == (repo, split, config))
        calls.append(bench.name)
        assert kwargs == bench.load_kwargs() and drop_columns == bench.drop_columns
        return copy.deepcopy(BENCH_ROWS[bench.name])

    monkeypatch.setattr(hub, "load_hub_rows", fake_load)
    return calls


def test_local_files_give_the_hubs_output(tmp_path: Path, monkeypatch) -> None:
    """Each new set read from a local parquet / JSONL / JSON copy gives byte-identical files to the same rows
    from the Hub; the data card names each local file with its sha256 and lists only the rest as Hub sets."""
    calls = _hub_rows(monkeypatch)
    names = ",".join(NEW + ("gpqa_diamond",))
    hub_out = tmp_path / "hub"
    assert prepare_data.main(["--source", "benchmarks", "--benchmarks", names, "--output-dir", str(hub_out)]) == 0
    assert sorted(calls) == sorted(NEW + ("gpqa_diamond",))
    suffixes = {"arc_challenge": ".parquet", "truthfulqa": ".jsonl", "ifeval": ".parquet"}
    suffixes.update(supergpqa=".json", headqa=".parquet")
    files = {n: _write(tmp_path / f"{n}{suffixes[n]}", BENCH_ROWS[n]) for n in NEW}
    spec = ",".join(f"{n}={p}" for n, p in files.items())
    calls.clear()
    local_out = tmp_path / "local"
    argv = ["--source", "benchmarks", "--benchmarks", names, "--benchmark-files", spec, "--output-dir", str(local_out)]
    assert prepare_data.main(argv) == 0
    assert calls == ["gpqa_diamond"]  # only the set without a local file came from the Hub
    for name in NEW:
        assert (local_out / f"test_{name}.parquet").read_bytes() == (hub_out / f"test_{name}.parquet").read_bytes()
    card = json.loads((local_out / "data_card.json").read_text())
    assert card["hub_datasets"] == ["Idavidrein/gpqa [gpqa_diamond] (train)"]
    assert card["benchmark_files"]["headqa"] == {
        "path": str(files["headqa"]),
        "sha256": file_sha256(files["headqa"]),
        "layout_of": "dvilares/head_qa@refs/convert/parquet [en/] (test)",
    }
    assert card["options"]["benchmark_files"] == spec
    ifeval = [r for _, r in read_records(local_out / "test_ifeval.parquet")]
    assert ifeval[0]["data_source"] == "ifeval" and [m["role"] for m in ifeval[0]["prompt"]] == ["user"]


def test_a_bad_local_layout_stops_before_any_work(tmp_path: Path, monkeypatch, capsys) -> None:
    """A row without a needed column: exit 2 naming the file, the row and the column, before the Hub is asked
    for anything and before any file is written."""
    calls = _hub_rows(monkeypatch)
    rows = [dict(BENCH_ROWS["supergpqa"][0], uuid=str(i)) for i in range(3)]
    del rows[1]["answer_letter"]
    path = _write(tmp_path / "super.jsonl", rows)
    out = tmp_path / "out"
    argv = ["--source", "benchmarks", "--benchmarks", "aime24,supergpqa", "--benchmark-files", f"supergpqa={path}"]
    assert prepare_data.main([*argv, "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: 1 row(s) are not in supergpqa's Hub layout" in err
    assert "row 2: missing column(s) ['answer_letter']" in err
    assert calls == [] and not out.exists()


@pytest.mark.parametrize(
    ("spec", "selected", "message"),
    [
        ("mmlu_pro", ["mmlu_pro"], "'mmlu_pro' is not NAME=PATH"),
        ("nope=x.parquet", ["mmlu_pro"], "unknown benchmark 'nope'"),
        ("mmlu_pro=a.parquet,mmlu_pro=b.parquet", ["mmlu_pro"], "mmlu_pro is given twice"),
        ("aime24=a.parquet", ["mmlu_pro"], "['aime24'] not selected by --benchmarks"),
    ],
)
def test_benchmark_files_option_errors(spec: str, selected: list[str], message: str) -> None:
    with pytest.raises(DataError) as info:
        benchmark_files.read_all(benchmark_files.parse_spec(spec), selected)
    assert message in str(info.value)


def test_benchmark_file_of_another_type_or_empty(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"reads \.parquet, \.jsonl, \.ndjson, \.json files, not '\.csv'"):
        benchmark_files.read("aime24", tmp_path / "a.csv")
    with pytest.raises(DataError, match="no rows"):
        benchmark_files.read("aime24", _write(tmp_path / "a.json", []))


def test_original_ids_and_no_system_prompt_for_ifeval(tmp_path: Path, monkeypatch) -> None:
    """--system-prompt, when given, applies to every benchmark, IFEval too."""
    _hub_rows(monkeypatch)
    out = tmp_path / "o"
    argv = [
        "--source",
        "benchmarks",
        "--benchmarks",
        "ifeval",
        "--system-prompt",
        "Be brief.",
        "--output-dir",
        str(out),
    ]
    assert prepare_data.main(argv) == 0
    rows = [r for _, r in read_records(out / "test_ifeval.parquet")]
    assert rows[0]["prompt"][0] == {"role": "system", "content": "Be brief."}


def test_correct_options_cover_every_shuffled_set() -> None:
    assert set(SHUFFLED_CORRECT) == {b.name for b in hub.BENCHMARKS.values() if b.kind == "choice"} - {"mmlu_pro"}
