"""Writes to the parameters between steps are honoured (SPEC "Apex drop-in semantics", extrap_kernels/writes.py):
a parameter written since the optimizer last wrote it (its version counter moved: model.load_state_dict, an
EMA swap, a clamp) is the new iterate, and the next step starts from it, in every class and mode that keeps an
anchor or a master, on every backend. The control is a write the counters cannot see (through `.data`), which
the step undoes: the assertions below fail where the write is not honoured."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from conftest import CPU_BACKENDS

import extrap_kernels as ek
from extrap_kernels.state import TrackedState

ALL = CPU_BACKENDS + ["reference"]
WRITTEN = 5.0

# (name, constructor, dtype): every kind of stored iterate the step would otherwise start from
CASES = [
    ("fused-sgd-master", lambda ps, be: ek.FusedSGD(ps, lr=0.01, momentum=0.9, backend=be), torch.bfloat16),
    ("fused-adam-master", lambda ps, be: ek.FusedAdam(ps, lr=0.01, master_weights=True, backend=be), torch.bfloat16),
    ("fused-lamb-master", lambda ps, be: ek.FusedLAMB(ps, lr=0.01, master_weights=True, backend=be), torch.bfloat16),
    ("sgd-past-anchor-free", lambda ps, be: ek.ExtrapSGD(ps, lr=0.01, momentum=0.9, backend=be), torch.float32),
    (
        "sgd-past-stored",
        lambda ps, be: ek.ExtrapSGD(ps, lr=0.01, momentum=0.9, store_anchor=True, backend=be),
        torch.float32,
    ),
    ("sgd-noise", lambda ps, be: ek.ExtrapSGD(ps, lr=0.01, mode="noise", noise_std=0.01, backend=be), torch.float32),
    ("sgd-past-bf16", lambda ps, be: ek.ExtrapSGD(ps, lr=0.01, momentum=0.9, backend=be), torch.bfloat16),
    ("adamw-past-anchor-free", lambda ps, be: ek.ExtrapAdamW(ps, lr=0.01, backend=be), torch.float32),
    ("adamw-past-stored", lambda ps, be: ek.ExtrapAdamW(ps, lr=0.01, store_anchor=True, backend=be), torch.float32),
    (
        "adamw-past-no-master-stored",
        lambda ps, be: ek.ExtrapAdamW(ps, lr=0.01, master_weights=False, store_anchor=True, backend=be),
        torch.bfloat16,
    ),
    (
        "adamw-past-no-master-anchor-free",
        lambda ps, be: ek.ExtrapAdamW(ps, lr=0.01, master_weights=False, backend=be),
        torch.bfloat16,
    ),
    ("lamb-noise", lambda ps, be: ek.ExtrapLAMB(ps, lr=0.01, mode="noise", backend=be), torch.float32),
]


def _params(dtype):
    gen = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(n, generator=gen).to(dtype)) for n in (1, 33, 1000)]


def _step(opt, params, seed):
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = (0.1 * torch.randn(p.shape, generator=gen)).to(p.dtype)
    opt.step()


def _written_then_stepped(case, backend, write):
    _, make, dtype = case
    params = _params(dtype)
    opt = make(params, backend)
    for seed in range(3):
        _step(opt, params, seed)
    with torch.no_grad():
        for p in params:
            write(p)
    _step(opt, params, 3)
    return params


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_written_parameter_is_the_new_iterate(case, backend):
    """After p.fill_(5) one step moves x by lr-sized amounts from 5 (within 0.25: LAMB scales its step by |x|;
    the extrapolation and the noise included). The control, a write through .data that the counters do not see,
    ends elsewhere: a stored anchor undoes it (x back near its old values, |x| ~ 1), and the anchor-free past
    mode shifts it by its recorded gamma times the last direction."""
    params = _written_then_stepped(case, backend, lambda p: p.fill_(WRITTEN))
    for p in params:
        assert bool(((p.detach().float() - WRITTEN).abs() < 0.25).all()), p
    unseen = _written_then_stepped(case, backend, lambda p: p.data.fill_(WRITTEN))
    assert not all(torch.equal(p, q) for p, q in zip(params, unseen))
    if not case[0].endswith("anchor-free"):  # (x is its iterate there, but for the recorded gamma's shift)
        assert any(bool(((p.detach().float() - WRITTEN).abs() > 1.0).any()) for p in unseen)


@pytest.mark.parametrize("backend", ALL)
def test_model_load_state_dict_and_an_ema_swap(backend):
    """The two writes the issue names, on a bf16 model with fp32 masters (FusedAdam master_weights=True): the
    loaded weights are stepped from, not overwritten by the master; an EMA swapped in for evaluation and swapped
    back leaves training where it was (the masters re-taken from the restored bf16 values)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 4).to(torch.bfloat16)
    opt = ek.FusedAdam(model.parameters(), lr=1e-3, master_weights=True, backend=backend)
    batch = torch.randn(8, 16, dtype=torch.bfloat16)
    for _ in range(2):
        model(batch).square().mean().backward()
        opt.step()
        opt.zero_grad()
    other = torch.nn.Linear(16, 4).to(torch.bfloat16)
    model.load_state_dict(other.state_dict())
    model(batch).square().mean().backward()
    opt.step()
    for p, q in zip(model.parameters(), other.parameters()):
        assert bool(((p.detach().float() - q.detach().float()).abs() <= 2e-3 + 1e-2 * q.detach().float().abs()).all())
        # x is the master's rounding (one bf16 ulp: Triton's interpreter truncates where GPUs round to nearest)
        apart = (opt.state[p]["anchor"] - p.detach().float()).abs()
        assert bool((apart <= torch.finfo(torch.bfloat16).eps * p.detach().float().abs()).all())
    training = copy.deepcopy(model.state_dict())
    ema = {k: v * 0.5 for k, v in training.items()}
    model.load_state_dict(ema)  # evaluate the EMA...
    model.load_state_dict(training)  # ...and swap back
    opt.zero_grad()
    model(batch).square().mean().backward()
    opt.step()
    for p, saved in zip(model.parameters(), training.values()):
        assert bool(((p.detach().float() - saved.float()).abs() <= 2e-3 + 1e-2 * saved.float().abs()).all())


@pytest.mark.parametrize("backend", ALL)
def test_the_optimizers_own_writes_are_not_mistaken_for_a_users(backend):
    """Steps alone (every mode, a local iteration included) equal the same steps with the check's record
    cleared each time, which then sees nothing: nothing the optimizer writes itself re-takes an anchor."""
    for make in (
        lambda ps: ek.ExtrapSGD(ps, lr=0.01, momentum=0.9, mode="local", backend=backend),
        lambda ps: ek.ExtrapAdamW(ps, lr=0.01, mode="past", backend=backend),
        lambda ps: ek.FusedSGD(ps, lr=0.01, momentum=0.9, backend=backend),
    ):
        runs = []
        for forget in (False, True):
            params = _params(torch.bfloat16)
            opt = make(params)
            for seed in range(4):
                if forget:
                    opt._versions.forget()
                if opt.param_groups[0].get("mode") == "local":
                    _step_grads = torch.Generator().manual_seed(seed)
                    for p in params:
                        p.grad = (0.1 * torch.randn(p.shape, generator=_step_grads)).to(p.dtype)
                    opt.extrapolate()
                _step(opt, params, 100 + seed)
            runs.append([p.detach().clone() for p in params])
        assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_the_tracked_state_survives_pickling_and_loading():
    """The optimizer's state stays a TrackedState through deepcopy, pickle and load_state_dict, and a replaced
    or deleted entry plans the step anew."""
    params = _params(torch.float32)
    opt = ek.ExtrapSGD(params, lr=0.01, momentum=0.9, store_anchor=True)
    _step(opt, params, 0)
    for other in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert isinstance(other.state, TrackedState) and len(other.state) == 3
    fresh = ek.ExtrapSGD(params, lr=0.01, momentum=0.9, store_anchor=True)
    fresh.load_state_dict(opt.state_dict())
    assert isinstance(fresh.state, TrackedState)
    plan = opt._plans[None]
    opt.state[params[1]] = {}  # a replaced entry: its state is made anew
    _step(opt, params, 1)
    assert opt._plans[None] is not plan and "anchor" in opt.state[params[1]]
    plan = opt._plans[None]
    del opt.state[params[2]]
    _step(opt, params, 2)
    assert opt._plans[None] is not plan and "momentum_buffer" in opt.state[params[2]]
