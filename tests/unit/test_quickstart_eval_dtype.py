"""The quickstart's evaluation dtype follows the CPU: bf16 only where the CPU computes in bf16 natively."""

from __future__ import annotations

from pipelines.quickstart import FULL, eval_dtype, eval_flags


def cpuinfo(tmp_path, flags: str):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: fpu sse2 {flags}\n\nprocessor\t: 1\n")
    return path


def test_bf16_only_with_native_bf16_instructions(tmp_path):
    assert eval_dtype(cpuinfo(tmp_path, "avx2 fma")) == "float32"  # AVX2 only: bf16 would be emulated
    assert eval_dtype(cpuinfo(tmp_path, "avx2 avx512f avx512_bf16")) == "bfloat16"
    assert eval_dtype(cpuinfo(tmp_path, "avx2 amx_bf16 amx_tile")) == "bfloat16"
    assert eval_dtype(tmp_path / "no-such-file") == "float32"  # not Linux: the safe choice


def test_eval_flags_pass_the_dtype_to_vllm():
    flags = eval_flags(FULL)
    assert f"dtype={eval_dtype()}" in flags and flags[flags.index(f"dtype={eval_dtype()}") - 1] == "--engine-arg"
