"""Sampling presets of ``evaluation.eval --preset``: temperature, top-p, max new tokens and k (samples per
problem) pinned per benchmark.

* ``paper`` (arXiv 2508.17784, v2): temperature 0.7, top-p 0.95, 10,240 new tokens; Avg@32 on AIME and AMC,
  Avg@8 on every other benchmark (MMLU-Pro included: the paper gives no other k for it); IFEval generated
  with 4,096 new tokens.
* ``r1`` (DeepSeek-R1's reported setting): temperature 0.6, top-p 0.95, 32,768 new tokens, k as ``paper``.
* ``greedy``: temperature 0, top-p 1, 2,048 new tokens, k = 1 (a quick deterministic check).

The benchmark is read from the test file's ``data_source`` values (``prepare_data.py`` writes the
benchmark's name there; a file without the column uses its stem): a name containing ``aime`` or ``amc``
is AIME/AMC (so the original's ``aime-2024`` files count too), ``ifeval`` is IFEval. Explicit
``--temperature``/``--top_p``/``--max_tokens``/``--n`` always win over the preset.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from recipe.psft.rows import DataError

# Without --preset: the paper's sampling, and n from the file (how often it repeats a problem), as before.
DEFAULT_TEMPERATURE, DEFAULT_TOP_P, DEFAULT_MAX_TOKENS = 0.7, 0.95, 10240
LONG_K = re.compile(r"aime|amc", re.IGNORECASE)


@dataclass(frozen=True)
class Preset:
    temperature: float
    top_p: float
    max_tokens: int
    k: int  # samples per problem on most benchmarks
    k_aime_amc: int  # on AIME and AMC
    max_tokens_ifeval: int | None = None  # IFEval's own generation length, when the preset has one

    def values_for(self, source: str) -> tuple[int, int]:
        """(max new tokens, k) for one benchmark (data_source)."""
        k = self.k_aime_amc if LONG_K.search(source) else self.k
        long_ifeval = source == "ifeval" and self.max_tokens_ifeval is not None
        return (self.max_tokens_ifeval if long_ifeval else self.max_tokens), k


PRESETS: dict[str, Preset] = {
    "paper": Preset(0.7, 0.95, 10240, k=8, k_aime_amc=32, max_tokens_ifeval=4096),
    "r1": Preset(0.6, 0.95, 32768, k=8, k_aime_amc=32),
    "greedy": Preset(0.0, 1.0, 2048, k=1, k_aime_amc=1),
}


@dataclass(frozen=True)
class Effective:
    """The values a run uses, and where each came from ("flag", "preset <name>" or "default"/"file")."""

    temperature: float
    top_p: float
    max_tokens: int
    n: int | None  # None: the file's repeat count decides (no preset, no --n)
    origin: dict[str, str]


def resolve(
    preset: str | None,
    sources: set[str],
    temperature: float | None,
    top_p: float | None,
    max_tokens: int | None,
    n: int | None,
) -> Effective:
    """Explicit values (not None) win; then the preset's value for the file's benchmark; then the defaults.

    A file mixing benchmarks whose preset values differ (e.g. AIME and MATH-500 under ``paper``) is an
    error unless the differing values are given explicitly.
    """
    origin: dict[str, str] = {}
    if preset is None:
        chosen = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens, "n": n}
        defaults = {"temperature": DEFAULT_TEMPERATURE, "top_p": DEFAULT_TOP_P, "max_tokens": DEFAULT_MAX_TOKENS}
        for key, value in list(chosen.items()):
            origin[key] = "flag" if value is not None else ("file" if key == "n" else "default")
            if value is None and key != "n":
                chosen[key] = defaults[key]
        return Effective(chosen["temperature"], chosen["top_p"], chosen["max_tokens"], chosen["n"], origin)
    if preset not in PRESETS:
        raise DataError(f"--preset {preset!r}: choose from {sorted(PRESETS)}")
    spec = PRESETS[preset]
    per_source = {s: spec.values_for(s) for s in sorted(sources)}
    values = {"temperature": spec.temperature, "top_p": spec.top_p}
    for position, key in enumerate(("max_tokens", "n")):
        found = sorted({v[position] for v in per_source.values()})
        if len(found) > 1 and {"max_tokens": max_tokens, "n": n}[key] is None:
            detail = ", ".join(f"{s}: {v[position]}" for s, v in per_source.items())
            flag = "--max-tokens" if key == "max_tokens" else "--n"
            raise DataError(
                f"--preset {preset}: the test file mixes benchmarks with different {key} ({detail}); "
                f"evaluate them as separate files or give {flag}"
            )
        values[key] = found[0] if found else (spec.max_tokens if key == "max_tokens" else spec.k)
    given = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens, "n": n}
    for key, value in given.items():
        origin[key] = "flag" if value is not None else f"preset {preset}"
        if value is not None:
            values[key] = value
    return Effective(values["temperature"], values["top_p"], values["max_tokens"], values["n"], origin)
