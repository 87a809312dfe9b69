"""pytest-benchmark micro-benchmarks of the CPU backend (and its foreach baseline): one optimizer step on
1M fp32 parameters in 10 tensors. Not part of `make test`; run with `make bench-micro`, or with
`--benchmark-disable` as a smoke test (CI does that: each runs once, nothing is timed or asserted on time)."""

from __future__ import annotations

import pytest
import torch

import extrap_kernels as ek

BACKENDS = [b for b in ("cpu", "foreach") if b in ek.available_backends("cpu")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["past", "local"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_step(benchmark, backend, mode, dtype):
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(100_000, generator=gen).to(dtype)) for _ in range(10)]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(dtype)
    opt = ek.ExtrapSGD(params, lr=0.01, momentum=0.9, mode=mode, backend=backend)

    def iteration():
        if mode == "local":
            opt.extrapolate()
        opt.step()

    iteration()
    before = params[0].detach().clone()
    benchmark(iteration)
    assert not torch.equal(before, params[0])  # the step did move the parameters
