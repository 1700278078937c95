"""prepare_data.py --source builtin: the offline reasoning-gym set, its answer checks and its determinism."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from prepare import builtin
from prepare.records import SYSTEM_PROMPT
from recipe.psft.rows import read_records

ROOT = Path(__file__).resolve().parents[2]


def run_builtin(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "prepare_data.py", "--source", "builtin", "--output-dir", str(out), "--no-progress", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def read(path: Path) -> list[dict]:
    return [record for _, record in read_records(path)]


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("builtin")
    result = run_builtin(out, "--train-size", "48", "--test-size", "16", "--ood-size", "15", "--seed", "5")
    assert result.returncode == 0, result.stderr
    return out


def test_builtin_files_and_sizes(small_set: Path) -> None:
    train, test, ood = (read(small_set / f) for f in ("train.parquet", "test.parquet", "test_ood.parquet"))
    assert (len(train), len(test), len(ood)) == (48, 16, 15)
    card = json.loads((small_set / "data_card.json").read_text())
    assert card["rows"] == {"train": 48, "test": 16, "test_ood": 15}
    assert "reasoning_gym" in card["versions"]
    assert card["skipped_count"] > 0 and all(p["reason"] for p in card["skipped"])  # bad templates filtered
    for row in train + test + ood:
        assert row["prompt"][0] == {"role": "system", "content": SYSTEM_PROMPT}
        assert row["prompt"][1]["role"] == "user" and row["prompt"][1]["content"].strip()
        assert row["reward_model"]["ground_truth"] and row["ability"] == "math"
    assert {r["data_source"] for r in train + test} == {"reasoning_gym/gsm_symbolic"}
    assert {r["data_source"] for r in ood} == {f"reasoning_gym/{t}" for t in builtin.OOD_TASKS}
    assert all(r["demonstration"] == "" for r in ood)


def test_builtin_output_loads_into_the_trainers_dataset(small_set: Path, tiny_model: Path) -> None:
    """What the trainer reads, without Ray (training on builtin data end to end: the quickstart test)."""
    from transformers import AutoTokenizer

    from recipe.psft.dataset import DemonstrationDataset

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    dataset = DemonstrationDataset(str(small_set / "train.parquet"), tokenizer, {"max_length": 8192})
    assert len(dataset) == 48
    for index in range(len(dataset)):
        item = dataset[index]
        mask = item["loss_mask"].bool()
        assert len(item["input_ids"]) == len(mask) and not mask[0] and mask.any()
        assert "\\boxed{" in tokenizer.decode(item["input_ids"][mask])  # the demonstration is what is learnt


def test_demonstrations_end_with_the_boxed_answer(small_set: Path) -> None:
    for row in read(small_set / "train.parquet"):
        demo, gold = row["demonstration"], row["reward_model"]["ground_truth"]
        assert demo.endswith(f"The answer is \\boxed{{{gold}}}."), demo
        assert "####" not in demo
        assert not builtin.wrong_equations(demo)


def test_tests_are_deduplicated_against_training(small_set: Path) -> None:
    def users(name: str) -> list[str]:
        return [" ".join(r["prompt"][-1]["content"].split()) for r in read(small_set / name)]

    train, test, ood = users("train.parquet"), users("test.parquet"), users("test_ood.parquet")
    assert len(set(train)) == len(train) and len(set(test)) == len(test) and len(set(ood)) == len(ood)
    assert not set(train) & set(test) and not set(train) & set(ood)


def test_ood_answers_are_recomputed_and_negative_answers_kept(small_set: Path) -> None:
    for row in read(small_set / "test_ood.parquet"):
        gold = row["reward_model"]["ground_truth"]
        assert re.fullmatch(r"-?\d+", gold), gold
        question = row["prompt"][-1]["content"]
        if row["data_source"].endswith("basic_arithmetic"):
            expression = re.fullmatch(r"Calculate (.*)\.", question).group(1)
            assert builtin.safe_eval(expression) == int(gold)


def test_builtin_is_deterministic_and_seeded(tmp_path: Path) -> None:
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        assert (
            run_builtin(
                tmp_path / name, "--train-size", "24", "--test-size", "8", "--ood-size", "6", "--seed", seed
            ).returncode
            == 0
        )
    for name in ("train.parquet", "test.parquet", "test_ood.parquet", "data_card.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "train.parquet").read_bytes() != (tmp_path / "c" / "train.parquet").read_bytes()


def test_test_sets_do_not_depend_on_train_size() -> None:
    small, _ = builtin.build(0, 10, 8, 6)
    large, _ = builtin.build(0, 30, 8, 6)
    assert [e.prompt for e in small["train"]] == [e.prompt for e in large["train"][:10]]
    assert [e.prompt for e in small["test"]] == [e.prompt for e in large["test"]]
    assert [e.prompt for e in small["test_ood"]] == [e.prompt for e in large["test_ood"]]


@pytest.mark.parametrize("template", sorted(builtin.BAD_GSM_TEMPLATES))
def test_bad_templates_are_excluded(template: int) -> None:
    entry = {"answer": "3", "metadata": {"answer_cot": "1 + 2 = 3\n#### 3", "answer_value": 3}}
    assert "excluded" in builtin.check_gsm(entry, template)
    assert builtin.check_gsm(entry, 0) is None


@pytest.mark.parametrize(
    ("solution", "answer", "reason"),
    [
        ("1 + 2 = 4\n#### 4", "4", "wrong arithmetic"),
        ("1 + 2 = 3\n#### 3", "4", "final number '3' differs"),
        ("13÷2/3=19\n#### 19", "19", "wrong arithmetic"),
        ("10/1/2 = 20\n#### 20", "20", "wrong arithmetic"),
        ("6 * 0.6666666666666666 = 4.0\n#### 4", "4", "floating-point noise"),
        ("", "4", "no worked solution"),
    ],
)
def test_gsm_solutions_are_checked(solution: str, answer: str, reason: str) -> None:
    assert reason in builtin.check_gsm({"answer": answer, "metadata": {"answer_cot": solution}}, 0)


@pytest.mark.parametrize(
    "line",
    [
        "There are 60 questions x 50/100 = 30 economics questions.",  # units inside: not checked
        "The room's perimeter is 2(35+31) = 132",  # implicit product
        "so the chances are 15 / 20 = 75.0%.",  # percentage
        "15/45 = 1/3 kilometers per minute",  # fraction result
        "Sophia hides 6 x 12 = 72 eggs, 1,000 + 200 = 1,200 more.",  # 'x' and thousands separators
        "10 / 3 = 3.33 hours",  # rounded to two decimals
    ],
)
def test_correct_or_uncheckable_equations_pass(line: str) -> None:
    assert builtin.wrong_equations(line) == []


def test_safe_eval_never_executes_code() -> None:
    assert builtin.safe_eval("( 56 + -33 ) - 84") == -61
    assert builtin.safe_eval("__import__('os').getcwd()") is None
    assert builtin.safe_eval("1/0") is None


def test_ood_answers_checked_against_recomputation() -> None:
    eq = {"answer": "13", "metadata": {"equation": "56 - 98*e = -1218", "variable": "e"}}
    assert builtin.ood_answer("simple_equations", eq) == ("13", None)
    assert builtin.ood_answer("simple_equations", dict(eq, answer="12"))[1].startswith("reasoning-gym answer")
    arith = {"answer": "-4", "metadata": {"expression": "5 - 3 - 6"}}
    assert builtin.ood_answer("basic_arithmetic", arith) == ("-4", None)
    legs = {"answer": "22", "metadata": {"animals": {"spider": 2, "chicken": 3}}}
    assert builtin.ood_answer("leg_counting", legs) == ("22", None)
    assert builtin.ood_answer("leg_counting", {"answer": "5", "metadata": {"animals": {"starfish": 1}}})[0] is None
