"""When CI rebuilds the GPU kit (tests/e2e/kit_inputs.py): the kit's inputs, and only those, change the digest."""

from __future__ import annotations

import shutil

from e2e import kit_inputs
from trainer_harness import REPO


def test_only_what_the_kit_is_built_from_changes_the_digest(tmp_path, monkeypatch):
    for name in kit_inputs.INPUTS:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    monkeypatch.setattr(kit_inputs, "REPO", tmp_path)
    pyproject = tmp_path / "pyproject.toml"
    base = kit_inputs.digest()

    # An extra (installed by setup.sh on the CPU path only) and test settings: the kit is the same.
    text = pyproject.read_text()
    pyproject.write_text(text.replace('test = ["pytest>=8"', 'test = ["pytest>=8", "pytest-xdist"'))
    pyproject.write_text(pyproject.read_text().replace("timeout = 600", "timeout = 900"))
    assert pyproject.read_text() != text
    assert kit_inputs.digest() == base

    # The project's metadata goes into the kit's own wheel: its entry points change the digest.
    pyproject.write_text(text.replace('psft_cpu = "recipe.', 'psft_cpu2 = "recipe.'))
    assert kit_inputs.digest() != base
    pyproject.write_text(text)
    (tmp_path / "scripts/gpu_kit.sh").write_text((tmp_path / "scripts/gpu_kit.sh").read_text() + "\n# changed\n")
    assert kit_inputs.digest() != base
