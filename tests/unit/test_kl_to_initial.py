"""Forgetting as a number (evaluation.kl_to_initial): the exact forward KL from the initial model to a
checkpoint, on a tiny random model with real transformers forward passes on the CPU, checked against a
hand computation; and its column in evaluation.over_training's log."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from time_limits import limit

from evaluation import kl_to_initial as kl
from evaluation import over_training
from psft_assets.toy_rows import make_rows, write_parquet


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict[str, Path]:
    """The suite's tiny model, a copy with every weight perturbed, and held-out demonstrations in the SFT layout."""
    import torch
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("kl")
    initial = shutil.copytree(tiny_model, root / "initial", ignore=shutil.ignore_patterns(".psft_fingerprint.json"))
    perturbed = root / "perturbed"
    shutil.copytree(initial, perturbed)
    model = AutoModelForCausalLM.from_pretrained(str(initial), dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    model.save_pretrained(perturbed)
    data = write_parquet(make_rows(6, seed=7), root / "heldout.parquet")
    return {"root": root, "initial": initial, "perturbed": perturbed, "data": data}


def hand_kl(initial: Path, other: Path, data: Path) -> tuple[float, int]:
    """KL(p0 || q) per demonstration token, by hand: whole-sequence logits of both models, torch's kl_div
    at every position whose next token is a demonstration token, summed, divided by their count."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recipe.psft.dataset import DemonstrationDataset

    tok = AutoTokenizer.from_pretrained(str(initial))
    rows = DemonstrationDataset(str(data), tok, {"max_length": 4096, "truncation": "right"})
    p0 = AutoModelForCausalLM.from_pretrained(str(initial), dtype=torch.float32).eval()
    q = AutoModelForCausalLM.from_pretrained(str(other), dtype=torch.float32).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(len(rows)):
            ids, mask = rows[i]["input_ids"][None], rows[i]["loss_mask"]
            lp0 = F.log_softmax(p0(ids).logits[0, :-1].double(), -1)
            lq = F.log_softmax(q(ids).logits[0, :-1].double(), -1)
            per_position = F.kl_div(lq, lp0, log_target=True, reduction="none").sum(-1)  # sum p0 (log p0 - log q)
            keep = mask[1:].bool()
            total += float(per_position[keep].sum())
            count += int(keep.sum())
    return total / count, count


def test_kl_to_itself_is_zero_and_to_a_perturbed_copy_matches_by_hand(models: dict[str, Path], capsys):
    out = models["root"] / "kl.jsonl"
    argv = ["--initial", str(models["initial"]), "--model", str(models["initial"]), "--model", str(models["perturbed"])]
    argv += ["--data", str(models["data"]), "--output", str(out), "--device", "cpu"]
    code = kl.main(argv)
    assert code == 0
    results = {r["step"]: r for r in kl.read_results(out)}
    assert results[1][kl.KL_KEY] == 0.0  # the same model: identical logits, exactly zero
    expected, tokens = hand_kl(models["initial"], models["perturbed"], models["data"])
    assert results[2]["tokens"] == tokens and tokens > 50
    assert results[2][kl.KL_KEY] == pytest.approx(expected, rel=1e-4) and expected > 1e-3
    assert out.with_suffix(".png").stat().st_size > 1000
    # A rerun with the same weights, data and settings reuses the results (no model is loaded).
    capsys.readouterr()
    started = time.monotonic()
    assert kl.main(argv) == 0
    assert "[kl] step" not in capsys.readouterr().err and time.monotonic() - started < limit(20)


def test_bad_input_is_refused_before_any_model_runs(models: dict[str, Path], tmp_path: Path, capsys):
    base = ["--initial", str(models["initial"]), "--model", str(models["perturbed"]), "--output", str(tmp_path / "o")]
    assert kl.main(base + ["--data", str(tmp_path / "missing.parquet")]) == 2
    assert "missing.parquet: no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "q"}) + "\n")
    assert kl.main(base + ["--data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "row 1" in err and "demonstration" in err
    assert kl.main(["--initial", str(models["initial"]), "--data", str(models["data"])]) == 2
    assert "give --checkpoints DIR or --model DIR" in capsys.readouterr().err


def test_over_training_log_has_the_kl_column(models: dict[str, Path], tmp_path: Path):
    """Two checkpoints (the initial model and the perturbed one) whose evaluations are already complete:
    evaluation.over_training starts no engine, adds kl/to_initial per step and draws it beside accuracy."""
    ckpt = tmp_path / "ckpt"
    for step, source in ((1, models["initial"]), (2, models["perturbed"])):
        shutil.copytree(source, ckpt / f"global_step_{step}" / "huggingface")
        summary = ckpt / "eval" / "test" / f"global_step_{step}" / "summary.json"
        summary.parent.mkdir(parents=True)
        section = {"problems": 4, "avg@1": 0.5 - step / 10, "avg@1_stderr": 0.1}
        summary.write_text(json.dumps({"n": 1, "complete": True, "overall": section, "by_data_source": {}}))
    (ckpt / "latest_checkpointed_iteration.txt").write_text("2")
    test_file = tmp_path / "test.jsonl"
    test_file.write_text("{}\n")
    log = tmp_path / "acc.jsonl"
    argv = [str(ckpt), "--test_file", str(test_file), "--log", str(log), "--kl-initial", str(models["initial"])]
    assert over_training.main(argv + ["--kl-data", str(models["data"]), "--kl-device", "cpu"]) == 0
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]
    assert lines[0]["data"][kl.KL_KEY] == 0.0 and lines[1]["data"][kl.KL_KEY] > 1e-3
    assert lines[1]["data"]["eval/all/avg@1"] == pytest.approx(0.3)
    assert log.with_name("acc.kl.png").stat().st_size > 1000
    assert (ckpt / "eval" / "kl_to_initial" / "heldout.jsonl").is_file()
    assert over_training.main(argv) == 2  # --kl-initial without --kl-data
