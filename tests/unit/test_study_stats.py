"""The toy-world study's two-level statistics, the rule that writes its readings, and pretraining's
determinism (same settings and seed on one machine -> bit-identical weights)."""

from __future__ import annotations

import math

import pytest

from pipelines.study import stats


def test_two_level_spreads_by_hand():
    values = {0: {0: 1.0, 1: 3.0}, 1: {0: 5.0, 1: 7.0}, 2: {0: 2.0, 1: 4.0}}
    s = stats.two_level(values)
    # per-pretrain means 2, 6, 3; grand mean 11/3; between sd = sd(2, 6, 3); within: every pair differs by 2
    assert s.mean == pytest.approx(11 / 3)
    between = math.sqrt(((2 - 11 / 3) ** 2 + (6 - 11 / 3) ** 2 + (3 - 11 / 3) ** 2) / 2)
    assert s.sd_between == pytest.approx(between)
    assert s.sd_within == pytest.approx(math.sqrt(3 * 2 / 3))  # squared residuals 1 each, 6 of them, 3 dof
    assert s.se == pytest.approx(between / math.sqrt(3))
    assert (s.pretrains, s.seeds) == (3, 6)


def test_one_pretrained_model_falls_back_to_the_seed_spread():
    s = stats.two_level({0: {0: 1.0, 1: 2.0, 2: 3.0}})
    assert s.sd_between == 0.0 and s.sd_within == pytest.approx(1.0)
    assert s.se == pytest.approx(1 / math.sqrt(3))


def test_paired_difference_removes_the_pretrained_models_offset():
    # b is a plus a per-pretrain offset and a constant 0.5: the paired difference has no spread at all
    a = {0: {0: 0.1, 1: 0.3}, 1: {0: 0.9, 1: 0.7}, 2: {0: 0.4, 1: 0.2}}
    b = {p: {s: v + 0.5 for s, v in by.items()} for p, by in a.items()}
    d = stats.paired_difference(a, b)
    assert d.mean == pytest.approx(-0.5) and d.se == pytest.approx(0.0, abs=1e-12)
    assert stats.is_real(d)
    with pytest.raises(ValueError, match="share no"):
        stats.paired_difference({0: {0: 1.0}}, {1: {0: 1.0}})


def test_verdict_follows_the_two_standard_error_rule():
    def spread(mean, se):
        return stats.Spread(mean, se, 0.0, 0.0, 3, 9)

    assert "no difference within the spread" in stats.verdict(spread(0.019, 0.01), "A", "B", "gain")
    assert "A is higher than B" in stats.verdict(spread(0.021, 0.01), "A", "B", "gain")
    assert "A is lower than B" in stats.verdict(spread(-0.03, 0.01), "A", "B", "gain")
    assert "no difference" in stats.verdict(spread(0.0, 0.0), "A", "B", "gain")


@pytest.mark.parametrize(
    ("gap", "tr", "lr", "expected"),
    [
        (0.3, 0.3, 0.0, "the gap comes from the trust region"),
        (0.3, 0.0, 0.3, "the gap comes from the learning rate and update count, not the trust region"),
        (0.3, 0.1, 0.2, "both parts contribute (learning rate and update count: 67% of the gap)"),
        (0.0, 0.3, -0.3, "no gap within the spread: the trust region and the learning rate each move it"),
        (0.01, 0.01, 0.0, "no gap within the spread"),
        (0.3, 0.15, 0.15, "the gap is real but neither part alone exceeds its spread"),
    ],
)
def test_attribution_sentences(gap, tr, lr, expected):
    se = {0.3: 0.05, 0.15: 0.1, 0.1: 0.01, 0.2: 0.01}

    def spread(mean):
        return stats.Spread(mean, se.get(abs(mean), 0.02), 0.0, 0.0, 3, 9)

    assert expected in stats.attribute(spread(gap), spread(tr), spread(lr), "gain")


def test_pretraining_is_bit_identical_on_one_machine(tmp_path, monkeypatch):
    """Pretrain a tiny model twice from scratch (two cache folders): the weights must be equal bit for bit."""
    import torch
    from safetensors.torch import load_file

    from pipelines.study.model import ModelSize
    from pipelines.study.pretrain import PretrainConfig, pretrain

    size = ModelSize(hidden=32, layers=1, heads=2, intermediate=64)
    cfg = PretrainConfig(steps=10, batch_size=8, warmup=2, eval_per_family=1)
    weights = []
    for run in ("a", "b"):
        monkeypatch.setenv("PSFT_CACHE", str(tmp_path / run))
        folder = pretrain(size, cfg, log=lambda line: None)
        weights.append(load_file(str(folder / "model.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name
    # and the run changed the weights (the test would pass trivially on an untrained model otherwise)
    from pipelines.study.model import CharTokenizer, build_model

    init = build_model(size, CharTokenizer(), seed=cfg.seed).state_dict()
    assert any(not torch.equal(init[n], weights[0][n]) for n in weights[0] if n in init)


def test_a_negligible_difference_is_not_read_as_real_however_consistent():
    tiny = stats.Spread(-0.001, 0.0001, 0.0, 0.0, 3, 9)
    assert not stats.is_real(tiny)
    assert "no difference within the spread" in stats.verdict(tiny, "A", "B", "entropy")
