"""Cost measurements, each a module run from the repository root: ``python -m benchmarks.<name>``.

``harness.py`` holds what the trainer benchmarks share (the trainer, the first batch, worker peak
memory, the interleaved-rounds runner); docs/benchmarks.md keeps their outputs.
"""
