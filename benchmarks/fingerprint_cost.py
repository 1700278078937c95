"""What the weights fingerprint costs: a model folder with one weight file of random bytes (1 GiB by
default), hashed the first time (read + sha256) and then from the cache beside the model.

    python -m benchmarks.fingerprint_cost [--gib 1] [--dir /tmp]

Prints seconds and MiB/s for the first (uncached) call and the cached call. The first call's figure
depends on the disk and on whether the file is in the page cache (it was just written, so usually is):
it is the sha256 cost; a cold read from disk adds the disk's read time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from evaluation.identity import CACHE_NAME, model_fingerprint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gib", type=float, default=1.0)
    p.add_argument("--dir", default=None, help="where the temporary model folder goes")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="fingerprint_cost_", dir=args.dir))
    try:
        (root / "config.json").write_text("{}")
        size = int(args.gib * (1 << 30))
        with open(root / "model.safetensors", "wb") as f:
            left = size
            while left:
                chunk = os.urandom(min(left, 64 << 20))
                f.write(chunk)
                left -= len(chunk)
        first = time.perf_counter()
        fp = model_fingerprint(root)
        first = time.perf_counter() - first
        cached = time.perf_counter()
        again = model_fingerprint(root)
        cached = time.perf_counter() - cached
        assert fp == again and (root / CACHE_NAME).is_file()
        mib = size / (1 << 20)
        print(f"weight file: {mib:.0f} MiB of random bytes")
        print(f"first call (read + sha256): {first:.2f} s ({mib / first:.0f} MiB/s)")
        print(f"cached call (stat only):    {cached * 1000:.2f} ms")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
