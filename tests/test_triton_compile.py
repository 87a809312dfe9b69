"""The Triton kernel compiles for sm_80 and sm_90 in every specialization of the cover in
tests/triton_aot.py, without a GPU (issue 13: compile-only errors are caught on every CI run), and its
hot specializations move their arrays in 128-bit accesses (the PTX check there, with its control)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[1]


def test_every_specialization_compiles_for_sm80_and_sm90():
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "triton_aot.py"), "--arch", "80,90"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    counts = re.search(r"compiled (\d+) of (\d+) specializations", result.stdout)
    assert counts and counts[1] == counts[2] and int(counts[2]) >= 60, result.stdout
    hot = re.findall(r"^PTX sm_(\d+) phase\d-\w+: 128-bit loads", result.stdout, re.M)
    assert sorted(set(hot)) == ["80", "90"] and len(hot) == 2 * 9, result.stdout  # 5 phases x fp32/bf16, less one
    # (the controls: the SGD family's and the adaptive kernel's unaligned past phase, per arch)
    assert result.stdout.count("(control): 128-bit loads/stores (0, 0)") == 4, result.stdout
    adaptive = re.findall(r"^PTX sm_(\d+) adaptive\d-\w+: 128-bit loads", result.stdout, re.M)
    assert len(adaptive) == 2 * 9, result.stdout  # 4 adaptive phases x fp32/bf16, and the anchor-free fp32
    sixteen = re.findall(r"^PTX sm_(\d+) moments16-adaptive\d-fp32: 128-bit loads", result.stdout, re.M)
    assert len(sixteen) == 2 * 3, result.stdout  # the update phases over bf16 moments: past, local's, anchor-free
    # Adagrad's (v alone) and NovoGrad's (m alone) fp32 phases, whose arrays are checked exactly
    for base in ("adagrad", "novograd"):
        lines = re.findall(rf"^PTX sm_(\d+) {base}\d-fp32: 128-bit loads", result.stdout, re.M)
        assert len(lines) == 2 * 4, result.stdout
