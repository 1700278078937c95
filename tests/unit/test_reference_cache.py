"""The reference log-prob cache: round trip, identity checks, per-row lookup in the engine's layout."""

from __future__ import annotations

import torch

from recipe.psft import reference


def make_cache() -> reference.ReferenceLogProbs:
    rows = [torch.tensor([-1.0, -2.0]), torch.tensor([-0.5, -0.25, -0.125]), torch.tensor([-3.0])]
    return reference.ReferenceLogProbs.from_rows(rows)


def test_round_trip_and_rows_in_the_engines_nested_layout(tmp_path):
    identity = {"model": {"config.json": "abc"}, "data": {"rows": 3, "sha256": "d"}}
    path = reference.cache_file(tmp_path, identity)
    reference.save(path, make_cache(), identity)
    loaded = reference.load(path, identity)
    assert loaded is not None and len(loaded) == 3
    picked = loaded.rows([2, 0])
    assert picked.is_nested and [t.tolist() for t in picked.unbind()] == [[-3.0], [-1.0, -2.0]]
    assert not list(path.parent.glob("*.tmp"))  # written atomically


def test_another_identity_misses(tmp_path):
    identity = {"model": {"config.json": "abc"}, "data": {"rows": 3, "sha256": "d"}}
    path = reference.cache_file(tmp_path, identity)
    reference.save(path, make_cache(), identity)
    other = {**identity, "data": {"rows": 3, "sha256": "e"}}
    assert reference.cache_file(tmp_path, other) != path
    assert reference.load(path, other) is None  # same file, other data: never reused
    assert reference.load(tmp_path / "missing.safetensors", identity) is None


def test_model_fingerprint_follows_the_weights_not_the_folder(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    (a / "config.json").write_text('{"vocab_size": 8}')
    (a / "model.safetensors").write_bytes(b"\x00" * 4096)
    b = tmp_path / "b"
    b.mkdir()
    for file in a.iterdir():
        (b / file.name).write_bytes(file.read_bytes())
    assert reference.model_fingerprint(a) == reference.model_fingerprint(b)  # a copy is the same model
    (b / "model.safetensors").write_bytes(b"\x01" + b"\x00" * 4095)
    assert reference.model_fingerprint(a) != reference.model_fingerprint(b)


def test_data_fingerprint_follows_tokens_and_loss_masks():
    def rows(mask_last: int) -> list[dict]:
        return [
            {"input_ids": torch.tensor([1, 2, 3]), "loss_mask": torch.tensor([0, 1, 1])},
            {"input_ids": torch.tensor([4, 5]), "loss_mask": torch.tensor([0, mask_last])},
        ]

    assert reference.data_fingerprint(rows(1)) == reference.data_fingerprint(rows(1))
    assert reference.data_fingerprint(rows(1)) != reference.data_fingerprint(rows(0))
