"""Every contender is checked before it is timed: its first steps must move the parameters as its oracle (the
same algorithm on the reference backend, in float64 on the CPU) moves them, on the same inputs. A contender
that computes wrong is reported invalid and not timed: a fast no-op is not a result. The real case this was
built for: torch 2.13's fused CPU SGD updates no vectorized 16-bit element (pytorch #191763).

The inputs are sized so that a correct step is visible in every dtype: x ~ 0.1 N(0, 1), whose bf16 spacing is
at most 2^-10, and gradients N(0, 1) that move x by lr |m| ~ 0.01 per step, ten spacings or more; three
tensors (a vectorized body of 4099 elements, an odd 17, a single one). After STEPS iterations the contender's
change of x must be within TOLERANCE of the oracle's, in the norm over all elements: a 16-bit x rounds each
stored value by at most one spacing, under 10% of its change (round to nearest: under 5%), so 0.25 passes every
correct step with margin, and a step that updates nothing (relative error 1) or half the elements fails."""

from __future__ import annotations

import torch

from .contenders import Contender

SIZES = (4099, 17, 1)
STEPS = 3
TOLERANCE = 0.25


def _moved(make, init: list[torch.Tensor], grads: list[torch.Tensor], device, dtype) -> torch.Tensor:
    """How far STEPS iterations of `make`'s step move parameters starting at `init` with gradients `grads`,
    as one float64 vector."""
    params = [torch.nn.Parameter(t.to(device=device, dtype=dtype, copy=True)) for t in init]
    step = make(params)
    for _ in range(STEPS):
        for p, g in zip(params, grads):
            p.grad = g.to(device=device, dtype=dtype, copy=True)
        step()
    return torch.cat([(p.detach().double().cpu() - t.double()).reshape(-1) for p, t in zip(params, init)])


def check(c: Contender, device: str, dtype: torch.dtype) -> str | None:
    """None if `c`'s first steps match its oracle's on `device` with parameters of `dtype`; else why not."""
    if c.oracle is None:
        return None
    gen = torch.Generator().manual_seed(0)
    init = [(0.1 * torch.randn(n, generator=gen)).to(dtype) for n in SIZES]  # (representable in `dtype`)
    grads = [torch.randn(n, generator=gen).to(dtype) for n in SIZES]
    ours = _moved(c.make, init, grads, device, dtype)
    expected = _moved(c.oracle, [t.double() for t in init], [g.double() for g in grads], "cpu", torch.float64)
    error = float((ours - expected).norm() / expected.norm())
    if not error <= TOLERANCE:
        unmoved = float((ours == 0).double().mean())
        return (
            f"invalid: after {STEPS} steps its change of x is {error:.2f} of its oracle's away "
            f"({unmoved:.1%} of the elements unmoved); not timed"
        )
    return None


_CHECKED: dict[tuple, str | None] = {}


def checked(c: Contender, device: str, dtype: torch.dtype) -> str | None:
    """check(), once per contender, device and dtype in a run (every workload builds its contenders anew)."""
    key = (c.name, c.mode, c.family, device, dtype)
    if key not in _CHECKED:
        _CHECKED[key] = check(c, device, dtype)
    return _CHECKED[key]
