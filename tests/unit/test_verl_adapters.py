"""The verl adapters: the tested-version check and the logits probe behind token accuracy."""

from __future__ import annotations

import pytest
import torch

from recipe.psft.losses import TokenLoss
from recipe.psft.token_metrics import ARGMAX_HIT, PROBE_ENTROPY
from recipe.psft.verl_adapters import (
    TESTED_VERL_VERSION,
    UntestedVerlError,
    check_verl_version,
    installed_verl_version,
)
from recipe.psft.verl_adapters.engine import WithLogitsProbe


def test_installed_verl_is_the_tested_version():
    assert installed_verl_version() == TESTED_VERL_VERSION
    check_verl_version(TESTED_VERL_VERSION, allow_untested=False)
    check_verl_version(f"{TESTED_VERL_VERSION}.post1", allow_untested=False)


@pytest.mark.parametrize("other", ["0.9.0", "0.10.0", "1.0.0rc1", "not-a-version"])
def test_other_verl_versions_are_refused_with_what_to_do(other):
    with pytest.raises(UntestedVerlError) as err:
        check_verl_version(other, allow_untested=False)
    message = str(err.value)
    assert f"verl {other} is installed" in message
    assert f"verl[verl-core]=={TESTED_VERL_VERSION}" in message and "PSFT_ALLOW_UNTESTED_VERL=1" in message


def test_untested_verl_only_warns_when_allowed(monkeypatch):
    with pytest.warns(UserWarning, match="proceeding because PSFT_ALLOW_UNTESTED_VERL=1"):
        check_verl_version("0.10.0", allow_untested=True)
    monkeypatch.setenv("PSFT_ALLOW_UNTESTED_VERL", "1")
    with pytest.warns(UserWarning, match="tested with verl"):
        check_verl_version("0.10.0")
    monkeypatch.setenv("PSFT_ALLOW_UNTESTED_VERL", "0")
    with pytest.raises(UntestedVerlError):
        check_verl_version("0.10.0")


def test_missing_verl_says_how_to_install():
    with pytest.raises(UntestedVerlError, match=r"verl is not installed: install .*verl\[verl-core\]==0.9.1"):
        check_verl_version(None)


def test_logits_probe_marks_argmax_hits_and_passes_loss_calls_through():
    # Two packed sequences of 3 tokens; the engine passes logits as (1, total_nnz, vocab).
    input_ids = torch.tensor([1, 2, 3, 0, 4, 4])
    data = {"input_ids": torch.nested.nested_tensor_from_jagged(input_ids, torch.tensor([0, 3, 6]))}
    predicted = torch.tensor([2, 0, 9, 4, 4, 1])  # next tokens (rolled ids): 2 3 0 4 4 1
    logits = torch.nn.functional.one_hot(predicted, num_classes=10).float().unsqueeze(0)
    probe = WithLogitsProbe(TokenLoss("sft"))
    hits = probe(student_logits=logits, data=data)[ARGMAX_HIT]
    assert hits.tolist() == [[1.0, 0.0, 0.0, 1.0, 1.0, 1.0]]
    # With the batch's loss mask, only tokens that predict a demonstration token are probed.
    loss_mask = torch.nested.nested_tensor_from_jagged(torch.tensor([0, 0, 1, 0, 1, 1]), torch.tensor([0, 3, 6]))
    probed = probe(student_logits=logits, data={**data, "loss_mask": loss_mask})
    assert probed[ARGMAX_HIT].tolist() == [[0.0, 0.0, 0.0, 1.0, 1.0, 0.0]]
    assert probed[PROBE_ENTROPY][0, [1, 3, 4]].gt(0).all() and not probed[PROBE_ENTROPY][0, [0, 2, 5]].any()

    log_probs = torch.tensor([-1.0, -2.0, -3.0, -0.5, -0.5, -0.5])
    offsets = torch.tensor([0, 3, 6])
    model_output = {
        "log_probs": torch.nested.nested_tensor_from_jagged(log_probs, offsets),
        ARGMAX_HIT: torch.nested.nested_tensor_from_jagged(hits.squeeze(0), offsets),
    }
    batch = {
        "loss_mask": torch.nested.nested_tensor_from_jagged(torch.tensor([0, 1, 1, 0, 1, 1]), offsets),
        "dp_size": 1,
        "batch_num_tokens": 4,
    }
    loss, metrics = probe(model_output=model_output, data=batch, dp_group=None)
    expected_loss, expected_metrics = TokenLoss("sft")(model_output=model_output, data=batch)
    assert loss.item() == pytest.approx(expected_loss.item()) and metrics == expected_metrics
    # Tokens scored: positions 0, 1, 3, 4 (the mask shifted by one); hits there: 1, 0, 1, 1.
    assert metrics["token_acc"] == pytest.approx(3 / 4)
