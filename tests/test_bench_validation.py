"""The benchmark checks every contender before it times it (benchmarks/validate.py): each of ours, and the
hand-written loop, moves the parameters as its oracle does in fp32 and bf16; a contender that updates nothing,
half of the elements, or at twice the learning rate is found invalid; and the harness then shows it as invalid
in the table, untimed, beside the rows it did time."""

from __future__ import annotations

import math
import sys
from dataclasses import replace

import pytest
import torch

from benchmarks import bench, validate
from benchmarks.contenders import (
    LR,
    MOMENTUM,
    Contender,
    contenders,
    memory_bytes,
    optimizer_of,
    state_bytes_per_element,
)
from benchmarks.workloads import Workload

CPU_CONTENDERS = [c for c in contenders("cpu", overhead=True) if c.oracle is not None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "c", [c for c in CPU_CONTENDERS if not c.name.startswith("torch")], ids=lambda c: f"{c.name}-{c.mode}"
)
def test_our_contenders_are_valid(c, dtype):
    assert validate.check(c, "cpu", dtype) is None


def _sgd(scale: float = 1.0, every: int = 1):
    """torch.optim.SGD's step, at `scale` times the contenders' lr, on one element of `every`."""

    def make(params):
        views = [p.view(-1)[::every] for p in params]
        buffers = [torch.zeros_like(v) for v in views]

        @torch.no_grad()
        def step():
            for p, v, b in zip(params, views, buffers):
                b.mul_(MOMENTUM).add_(p.grad.view(-1)[::every])
                v.add_(b, alpha=-LR * scale)

        return step

    return make


def _noop(params):
    return lambda: None


TORCH_SGD = next(c for c in CPU_CONTENDERS if c.name == "torch-sgd-foreach")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_wrong_steps_are_invalid_and_the_control_is_valid(dtype):
    assert validate.check(replace(TORCH_SGD, make=_sgd()), "cpu", dtype) is None  # (the control: SGD written out)
    for wrong in (_noop, _sgd(every=2), _sgd(scale=2.0)):
        assert validate.check(replace(TORCH_SGD, make=wrong), "cpu", dtype).startswith("invalid")


def test_an_invalid_contender_is_shown_untimed(capsys):
    broken = Contender("broken-sgd", "sgd", _noop, oracle=TORCH_SGD.oracle)
    chosen = [replace(TORCH_SGD, baseline="torch-fused"), broken]
    work = Workload("tiny", ((1000,), (17,)))
    progress = type("Progress", (), {"set_postfix_str": lambda self, s: None, "update": lambda self, n: None})()
    rows, _ = bench.run_workload(work, torch.float32, "cpu", chosen, 3, {}, 0.1, progress)
    timed, untimed = rows
    assert timed["error"] is None and timed["median_ms"] > 0
    assert untimed["error"].startswith("invalid") and math.isnan(untimed["median_ms"])
    bench.report("cpu", {}, rows, [])
    out = capsys.readouterr().out
    assert "broken-sgd" in out and "INVALID: computes wrong, not timed" in out


def test_deepspeed_cpu_adam_is_an_optional_contender(monkeypatch):
    """Where deepspeed is missing (or its op does not build) the contender is left out with the reason, and the
    others run; where it runs here it is in the table, validated as every other."""
    from benchmarks import contenders as module

    monkeypatch.delattr(module.deepspeed_cpu_adam, "reason", raising=False)
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # (import deepspeed now raises ImportError)
    monkeypatch.setitem(sys.modules, "deepspeed.ops.adam", None)
    assert module.deepspeed_cpu_adam().startswith("DeepSpeedCPUAdam left out: ModuleNotFoundError")
    names = {c.name for c in module.contenders("cpu")}
    assert "deepspeed-cpu-adam" not in names and "torch-adamw-fused" in names
    monkeypatch.setattr(module.deepspeed_cpu_adam, "reason", None)  # (as where it builds)
    ds = [c for c in module.contenders("cpu") if c.name == "deepspeed-cpu-adam"]
    assert len(ds) == 1 and ds[0].oracle is not None and ds[0].family == "adam"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("c", CPU_CONTENDERS, ids=lambda c: f"{c.name}-{c.mode}")
def test_the_tables_memory_is_the_state_the_optimizer_holds(c, dtype):
    """The table's bytes per element (contenders.memory_bytes: the parameter and the optimizer's state) less the
    parameter equal the state tensors the contender holds after a step, counted (per-tensor values, as the LAMB
    ratio's recovery weights, are a few bytes in 40000 elements: below the 0.01 allowed)."""
    params = [torch.nn.Parameter(torch.randn(n).to(dtype)) for n in (30000, 10000)]
    for p in params:
        p.grad = torch.randn(p.shape).to(dtype)
    step = c.make(params)
    if optimizer_of(step) is None:
        pytest.skip("the hand-written loop holds its state in a closure")
    step()
    claimed = memory_bytes(c.mode, dtype, master=c.name.startswith("ours")) - params[0].element_size()
    assert abs(state_bytes_per_element(step, params) - claimed) < 0.01, (state_bytes_per_element(step, params), claimed)
