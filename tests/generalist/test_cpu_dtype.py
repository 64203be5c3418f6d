"""The embedded generalist's dtype follows the CPU: bfloat16 only where it is native."""

from __future__ import annotations

import pytest

from generalist import cpu_dtype
from generalist.errors import ServeError

AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
AMX = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 avx512f amx_bf16 amx_tile\n"
AVX512_BF16 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"


def test_float32_without_native_bf16_and_bfloat16_with_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GSCO_GENERALIST_DTYPE", raising=False)
    assert cpu_dtype(AVX2_ONLY) == "float32"  # bfloat16 would be emulated: 3-5x slower
    assert cpu_dtype(AMX) == "bfloat16"
    assert cpu_dtype(AVX512_BF16) == "bfloat16"
    assert cpu_dtype("") == "float32"  # unreadable counts as no BF16


def test_the_environment_overrides_and_a_bad_value_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GSCO_GENERALIST_DTYPE", "bfloat16")
    assert cpu_dtype(AVX2_ONLY) == "bfloat16"
    monkeypatch.setenv("GSCO_GENERALIST_DTYPE", "int4")
    with pytest.raises(ServeError, match="float32, bfloat16 or float16"):
        cpu_dtype(AMX)
