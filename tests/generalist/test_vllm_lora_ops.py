"""The embedded server's grouped LoRA ops (generalist/_vllm_cpu_launch.py) against vLLM's own.

Run in the real vLLM environment (``gsco generalist prepare`` made it; scripts/test.sh
prepares it first): the launcher is imported there, which replaces vLLM's CPU
reference ops, and both are called on the same tensors. The served adapters of
tests/hub/test_adapters.py go through the replaced ops end to end.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from generalist import EmbeddedServer

LAUNCH = Path(__file__).resolve().parents[2] / "generalist" / "_vllm_cpu_launch.py"

_SCRIPT = r"""
import importlib.util, json, sys
import torch
import vllm.lora.ops.torch_ops.lora_ops as ops
import vllm.lora.punica_wrapper.punica_cpu as cpu

reference = (ops.bgmv_shrink, ops.bgmv_expand, ops.bgmv_expand_slice, ops.sgmv_shrink)
spec = importlib.util.spec_from_file_location("launch", sys.argv[1])
launch = importlib.util.module_from_spec(spec)
spec.loader.exec_module(launch)
grouped = (ops.bgmv_shrink, ops.bgmv_expand, ops.bgmv_expand_slice)
report = {
    "patched": launch._PATCHED,
    "replaced": [g is not r for g, r in zip(grouped, reference)],
    "cpu_wrapper_uses_them": [cpu.bgmv_shrink is grouped[0], cpu.bgmv_expand is grouped[1],
                              cpu.bgmv_expand_slice is grouped[2]],
    "cases": [],
}
torch.manual_seed(0)
cases = [[0] * 40, [1] * 20 + [-1] * 20, [2, 0, -1, 3] * 10, [0]]
for dtype in (torch.float32, torch.bfloat16):
    for indices in cases:
        n, idx = len(indices), torch.tensor(indices)
        x = torch.randn(n, 64, dtype=dtype)
        a = torch.randn(4, 1, 8, 64, dtype=dtype)  # [adapters, 1, rank, in]
        b = torch.randn(4, 1, 96, 8, dtype=dtype)  # [adapters, 1, out, rank]
        h = torch.randn(n, 8, dtype=dtype)
        diffs = []
        for add in (True, False):
            want, got = torch.zeros(n, 8, dtype=dtype), torch.zeros(n, 8, dtype=dtype)
            reference[0](x, a, want, idx, 0.5); grouped[0](x, a, got, idx, 0.5)
            diffs.append(float((want - got).abs().max()))
            start = torch.randn(n, 100, dtype=dtype)
            want, got = start.clone(), start.clone()
            reference[1](h, b, want, idx, add); grouped[1](h, b, got, idx, add)
            diffs.append(float((want - got).abs().max()))
            start = torch.randn(n, 300, dtype=dtype)
            want, got = start.clone(), start.clone()
            reference[2](h, b, want, idx, 96, 96, add); grouped[2](h, b, got, idx, 96, 96, add)
            diffs.append(float((want - got).abs().max()))
        # The prefill op (per-sequence indices) reaches the grouped op through the module.
        seqs, lengths = torch.tensor([0, -1]), torch.tensor([n // 2, n - n // 2])
        want, got = torch.zeros(n, 8, dtype=dtype), torch.zeros(n, 8, dtype=dtype)
        exploded = torch.repeat_interleave(seqs, lengths)
        for i in range(n):  # the definition: row i times its adapter's matrix, one at a time
            want[i] = 0.5 * (x[i] @ a[exploded[i], 0].T)
        reference[3](x, a, got, None, lengths, seqs, 2, n, n, 0.5)
        diffs.append(float((want - got).abs().max()))
        report["cases"].append({"dtype": str(dtype), "indices": n, "max_abs_diff": max(diffs)})
# A shape the grouped form does not cover (one index for many rows) goes to vLLM's op.
x, a = torch.randn(3, 64), torch.randn(4, 1, 8, 64)
want, got = torch.zeros(3, 8), torch.zeros(3, 8)
try:
    reference[0](x, a, want, torch.tensor([1]), 1.0)
    expected = "ok"
except Exception as exc:
    expected = type(exc).__name__
try:
    grouped[0](x, a, got, torch.tensor([1]), 1.0)
    seen = "ok"
except Exception as exc:
    seen = type(exc).__name__
report["fallback"] = [expected, seen, float((want - got).abs().max())]
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def report() -> dict:
    server = EmbeddedServer()
    server.prepare()
    done = subprocess.run(
        [str(server.python), "-c", _SCRIPT, str(LAUNCH)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_launcher_replaces_the_ops_the_cpu_backend_calls(report: dict) -> None:
    assert report["patched"] is True
    assert report["replaced"] == [True, True, True]
    assert report["cpu_wrapper_uses_them"] == [True, True, True]


def test_grouped_ops_give_vllms_answers_for_every_mix_of_adapters(report: dict) -> None:
    assert len(report["cases"]) == 8
    for case in report["cases"]:
        # Random inputs of scale ~10-30: float32 rounding of a reordered sum, and
        # one bfloat16 step at most where the reference rounds the products apart.
        limit = 1e-3 if case["dtype"] == "torch.float32" else 0.05
        assert case["max_abs_diff"] <= limit, case


def test_a_shape_the_grouped_form_does_not_cover_behaves_as_vllm(report: dict) -> None:
    expected, seen, difference = report["fallback"]
    assert seen == expected
    assert difference == 0.0
