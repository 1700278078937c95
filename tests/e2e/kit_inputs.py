"""When the GPU-kit tier (tests/e2e/test_gpu_kit.py, marker ``kit``) must run: when the files the kit is
built from differ from those of the last passing kit run.

The digest of INPUTS is recorded in RECORD (committed) by a pytest session in which every kit test ran
and passed on a kit built from this tree (tests/e2e/conftest.py); commit the updated RECORD with the
change. ``.ci/run`` runs the kit tier when ``python tests/e2e/kit_inputs.py --check`` exits 1: on a
clean clone with no base ref to diff against, a forgotten RECORD update only costs a kit run, never a
missed one.

    python tests/e2e/kit_inputs.py            # print the digest of the inputs now
    python tests/e2e/kit_inputs.py --check    # exit 0 if RECORD holds it, 1 if not (the kit must run)
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[2]
INPUTS = ("scripts/gpu_kit.sh", "scripts/gpu_kit_strip.py", "pyproject.toml")
RECORD = Path(__file__).with_name("gpu_kit.inputs.sha256")
# What of pyproject.toml reaches the kit: the kit installs the project's own wheel with --no-deps, so its
# metadata (name, version, dependencies, entry points, packages) matters, and the extras (installed only
# by scripts/setup.sh on the CPU path), ruff's and pytest's settings do not.
PYPROJECT_NOT_IN_KIT = (("project", "optional-dependencies"), ("tool", "ruff"), ("tool", "pytest"))


def kit_part(name: str) -> bytes:
    """The bytes of an input that the kit depends on (all of it, except pyproject.toml's other tables)."""
    data = (REPO / name).read_bytes()
    if name != "pyproject.toml":
        return data
    table = tomllib.loads(data.decode())
    for section, key in PYPROJECT_NOT_IN_KIT:
        table.get(section, {}).pop(key, None)
    return json.dumps(table, sort_keys=True).encode()


def digest() -> str:
    h = hashlib.sha256()
    for name in INPUTS:
        data = kit_part(name)
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def recorded() -> str | None:
    return RECORD.read_text().split()[0] if RECORD.is_file() and RECORD.read_text().strip() else None


def record() -> str:
    value = digest()
    RECORD.write_text(f"{value}  {' '.join(INPUTS)}\n")
    return value


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        now, then = digest(), recorded()
        if now == then:
            print(f"[kit] inputs unchanged since the last passing kit run ({now[:12]})")
            return 0
        print(f"[kit] inputs changed since the last passing kit run ({(then or 'none')[:12]} -> {now[:12]})")
        return 1
    if argv:
        print(__doc__, file=sys.stderr)
        return 2
    print(digest())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
