#!/usr/bin/env python3
"""Compare training runs from their verl file logs; see ``pipelines/plots.py`` (``--help``)."""

import sys

from pipelines.plots import main

if __name__ == "__main__":
    sys.exit(0 if main() else 1)
