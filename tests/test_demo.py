"""The demo's two tables (python/demo.py, `make demo`): the step table's rows and the state bytes per element
it counts from each optimizer's tensors, on a small parameter list; and the committed char-LSTM result it
reads, with the share of the gap recomputed from the runs."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
import demo  # noqa: E402


def test_the_step_table_counts_each_optimizers_state():
    """fp32: torch's SGD and the anchor-free past mode hold a momentum (4 B), local an anchor besides (8),
    torch's AdamW m and v (8), ExtrapAdamW's anchor-free past mode the same (8); bf16: ours add the fp32 master,
    torch's AdamW keeps bf16 moments (4); the lean ExtrapAdamW (bf16 moments, no master) 4 in both, torch's bf16
    figure with extrapolation on."""
    table = demo.step_table("cpu", repeats=3, shapes=((300, 7), (17,), (1,)))
    held = {}
    for line in table.splitlines():
        found = re.match(r"(.+?)\s+(float32|bfloat16)\s+[\d.]+\s+\S+\s+(\d+)$", line)
        if found:
            held[(found[1], found[2])] = int(found[3])
    assert held[("torch SGD (fused=True)", "float32")] == 4
    assert held[("ExtrapSGD past", "float32")] == 4
    assert held[("ExtrapSGD local", "float32")] == 8
    assert held[("torch AdamW (fused=True)", "float32")] == 8
    assert held[("ExtrapAdamW past", "float32")] == 8
    assert held[("ExtrapSGD past", "bfloat16")] == 8
    assert held[("ExtrapAdamW past", "bfloat16")] == 12
    assert held[("torch AdamW (fused=True)", "bfloat16")] == 4
    assert held[("ExtrapAdamW past, lean", "float32")] == held[("ExtrapAdamW past, lean", "bfloat16")] == 4


def test_the_results_table_reads_the_committed_runs():
    table = demo.results_table()
    assert re.search(r"SGD, batch 16 .* 100%", table) and re.search(r"SGD, batch 256 .*\s0%", table)
    assert re.search(r"ExtrapSGD past, gamma 0.1 .*\s16%", table)
    assert "on 3 of 3 seeds" in table
