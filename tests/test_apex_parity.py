"""The Apex drop-in semantics of SPEC.md ("Apex drop-in semantics"), written from Apex's documented behaviour
and torch's fused optimizers, point by point: what a user who changes only the import sees.

Gradients after an AMP step: torch's fused optimizers (and so GradScaler's users) find p.grad unscaled
after `scaler.step(opt)`; our kernels write g / grad_scale back as they read it, on every backend, and a
skipped step (found_inf) leaves the gradients as they were. Then Apex's per-group step counts and its
checkpoints, capturable lr and counts, and the memory per 16-bit element of each drop-in against Apex's."""

from __future__ import annotations

import pytest
import torch
from conftest import CPU_BACKENDS

import extrap_kernels as ek

ALL = CPU_BACKENDS + ["reference"]
SCALE = 1024.0  # a power of two, as GradScaler's: g * SCALE / SCALE is exact in every dtype here


def _sgd_past(params, backend):
    return ek.ExtrapSGD(params, lr=0.1, momentum=0.9, backend=backend)


def _sgd_local(params, backend):
    return ek.ExtrapSGD(params, lr=0.1, momentum=0.9, mode="local", backend=backend)


def _sgd_noise(params, backend):
    return ek.ExtrapSGD(params, lr=0.1, momentum=0.9, mode="noise", noise_std=1e-3, backend=backend)


def _sgd_lars(params, backend):
    return ek.ExtrapSGD(params, lr=0.1, momentum=0.9, lars=True, weight_decay=1e-4, backend=backend)


def _adamw(params, backend):
    return ek.ExtrapAdamW(params, lr=1e-3, weight_decay=1e-2, backend=backend)


def _fused_sgd(params, backend):
    return ek.FusedSGD(params, lr=0.1, momentum=0.9, backend=backend)


def _fused_adam(params, backend):
    return ek.FusedAdam(params, lr=1e-3, backend=backend)


def _fused_lamb(params, backend):
    # max_grad_norm small enough that the clipping acts: the gradients written back are unscaled, not clipped
    return ek.FusedLAMB(params, lr=1e-3, max_grad_norm=0.1, backend=backend)


def _adagrad(params, backend):
    return ek.ExtrapAdagrad(params, lr=0.01, weight_decay=1e-2, backend=backend)


def _fused_adagrad(params, backend):
    return ek.FusedAdagrad(params, lr=0.01, backend=backend)


def _fused_mixed_precision_lamb(params, backend):
    reduced = params[0].dtype if params[0].dtype != torch.float32 else None  # (an fp32 master for 16 bits)
    return ek.FusedMixedPrecisionLamb(
        params, lr=1e-3, max_grad_norm=0.1, reduced_precision_dtype=reduced, backend=backend
    )


OPTIMIZERS = {
    "sgd-past": _sgd_past,
    "sgd-local": _sgd_local,
    "sgd-noise": _sgd_noise,
    "sgd-lars": _sgd_lars,
    "adamw": _adamw,
    "fused-sgd": _fused_sgd,
    "fused-adam": _fused_adam,
    "fused-lamb": _fused_lamb,
    "adagrad": _adagrad,
    "fused-adagrad": _fused_adagrad,
    "fused-mixed-precision-lamb": _fused_mixed_precision_lamb,
}


def _params(dtype):
    gen = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(n, generator=gen).to(dtype)) for n in (1, 33, 4099)]


def _grads(params, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=gen).to(p.dtype) for p in params]


def _step(opt, params, grads, **amp):
    """One iteration with these (scaled) gradients: in local mode the extrapolation and the step both take
    them, as two closures would."""
    for p, g in zip(params, grads):
        p.grad = g.clone()
    if opt.param_groups[0].get("mode") == "local":
        opt.extrapolate(**amp)
        for p, g in zip(params, grads):
            p.grad = g.clone()
    opt.step(**amp)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_an_amp_step_leaves_the_gradients_unscaled(backend, name, dtype):
    params = _params(dtype)
    opt = OPTIMIZERS[name](params, backend)
    grads = _grads(params, 1)
    amp = dict(grad_scale=torch.tensor([SCALE]), found_inf=torch.tensor([0.0]))
    _step(opt, params, [g * SCALE for g in grads], **amp)
    for p, g in zip(params, grads):
        assert torch.equal(p.grad, g)
    # (control: without grad_scale the gradients are the optimizer's to read, and stay as they came)
    _step(opt, params, [g * SCALE for g in grads])
    for p, g in zip(params, grads):
        assert torch.equal(p.grad, g * SCALE)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("name", ["sgd-past", "sgd-local", "adamw", "fused-lamb"])
def test_a_skipped_amp_step_leaves_the_gradients_scaled(backend, name):
    params = _params(torch.float32)
    opt = OPTIMIZERS[name](params, backend)
    _step(opt, params, _grads(params, 1))
    scaled = [g * SCALE for g in _grads(params, 2)]
    _step(opt, params, scaled, grad_scale=torch.tensor([SCALE]), found_inf=torch.tensor([1.0]))
    for p, g in zip(params, scaled):
        assert torch.equal(p.grad, g)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("name", ["sgd-past", "fused-adam", "fused-lamb"])
def test_grad_scaler_users_read_the_true_gradients(backend, name):
    """What a training loop that logs gradient norms after `scaler.step(opt)` sees: the unscaled gradients,
    as with torch.optim.SGD(fused=True)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    x = torch.randn(16, 6)
    model(x).pow(2).mean().backward()
    true = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    opt = OPTIMIZERS[name](list(model.parameters()), backend)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    scaler.scale(model(x).pow(2).mean()).backward()
    scaler.step(opt)
    scaler.update()
    for p, g in zip(model.parameters(), true):
        torch.testing.assert_close(p.grad, g, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("backend", [b for b in ("cpu", "cuda", "foreach") if b in CPU_BACKENDS])
@pytest.mark.parametrize("name", ["sgd-past", "fused-sgd", "adamw"])
def test_gradients_unscaled_across_the_chunks_of_a_large_tensor(backend, name):
    """A tensor of several of the CPU launcher's 64K-element chunks (written back chunk by chunk, while in
    cache) and of the CUDA launcher's (one block each), with a ragged end."""
    params = [torch.nn.Parameter(torch.randn(3 * 65536 + 5)), torch.nn.Parameter(torch.randn(7))]
    opt = OPTIMIZERS[name](params, backend)
    grads = _grads(params, 3)
    _step(opt, params, [g * SCALE for g in grads], grad_scale=torch.tensor([SCALE]))
    for p, g in zip(params, grads):
        assert torch.equal(p.grad, g)


# Step counts. Apex's FusedAdam and FusedLAMB keep one count per group, group["step"], advanced by every
# step(); every parameter's bias corrections read it, so a parameter whose first gradient comes at step 5
# is corrected for t = 5, and an Apex checkpoint (no per-parameter count) resumes at its group's count.


def apex_adam(p, g, m, v, t, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, adam_w_mode=True):
    """Apex's FusedAdam update of one tensor at group count t, in float64 (its documented math: L2 decay
    into the gradient, or AdamW's decoupled decay; bias corrections 1 - beta^t). Returns p, m, v."""
    p, g, m, v = (t_.double() for t_ in (p, g, m, v))
    b1, b2 = betas
    if not adam_w_mode:
        g = g + weight_decay * p
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    update = (m / (1 - b1**t)) / (v.sqrt() / (1 - b2**t) ** 0.5 + eps)
    if adam_w_mode:
        update = update + weight_decay * p
    return p - lr * update, m, v


@pytest.mark.parametrize("backend", ALL)
def test_a_late_first_gradient_is_corrected_for_the_groups_count(backend):
    gen = torch.Generator().manual_seed(0)
    early, late = torch.nn.Parameter(torch.randn(5, generator=gen)), torch.nn.Parameter(torch.randn(3, generator=gen))
    start = late.detach().clone()
    opt = ek.FusedAdam([early, late], lr=1e-2, weight_decay=1e-2, backend=backend)
    for step in range(1, 6):
        early.grad = torch.randn(5, generator=gen)
        late.grad = torch.randn(3, generator=gen) if step == 5 else None
        opt.step()
    assert opt.param_groups[0]["step"] == 5
    want, _, _ = apex_adam(start, late.grad, torch.zeros(3), torch.zeros(3), 5, weight_decay=1e-2)
    torch.testing.assert_close(late.detach().double(), want, rtol=1e-6, atol=1e-7)
    # (control: torch.optim's per-parameter count, t = 1, is another update)
    per_parameter, _, _ = apex_adam(start, late.grad, torch.zeros(3), torch.zeros(3), 1, weight_decay=1e-2)
    assert not torch.allclose(want, per_parameter, rtol=1e-3, atol=0)


@pytest.mark.parametrize("backend", ALL)
def test_an_apex_checkpoint_resumes_at_its_groups_count(backend):
    gen = torch.Generator().manual_seed(1)
    p = torch.nn.Parameter(torch.randn(7, generator=gen))
    m, v = torch.randn(7, generator=gen) * 1e-2, torch.rand(7, generator=gen) * 1e-4
    apex_checkpoint = {  # Apex's FusedAdam.state_dict(): the count in the group, none per parameter
        "state": {0: {"exp_avg": m.clone(), "exp_avg_sq": v.clone()}},
        "param_groups": [
            dict(lr=1e-2, bias_correction=True, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, step=1000, params=[0])
        ],
    }
    opt = ek.FusedAdam([p], lr=1e-2, backend=backend)
    opt.load_state_dict(apex_checkpoint)
    start = p.detach().clone()
    p.grad = torch.randn(7, generator=gen)
    opt.step()
    want, want_m, want_v = apex_adam(start, p.grad, m, v, 1001)
    torch.testing.assert_close(p.detach().double(), want, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(opt.state[p]["exp_avg"].double(), want_m, rtol=1e-6, atol=1e-9)
    assert opt.param_groups[0]["step"] == 1001


@pytest.mark.parametrize("backend", ALL)
def test_a_torch_adam_checkpoint_resumes_in_step_with_torch(backend):
    torch.manual_seed(2)
    ours_p, torch_p = torch.nn.Parameter(torch.randn(9)), None
    torch_p = torch.nn.Parameter(ours_p.detach().clone())
    reference = torch.optim.Adam([torch_p], lr=1e-2, weight_decay=1e-3)
    for _ in range(3):
        torch_p.grad = torch.randn(9)
        reference.step()
    ours_p.data.copy_(torch_p.detach())
    opt = ek.FusedAdam([ours_p], lr=1e-2, weight_decay=1e-3, adam_w_mode=False, backend=backend)
    opt.load_state_dict(reference.state_dict())
    assert opt.param_groups[0]["step"] == 3
    g = torch.randn(9)
    torch_p.grad, ours_p.grad = g.clone(), g.clone()
    reference.step()
    opt.step()
    torch.testing.assert_close(ours_p.detach(), torch_p.detach(), rtol=1e-6, atol=1e-7)
    assert opt.param_groups[0]["step"] == 4


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("cls", [ek.FusedAdam, ek.FusedLAMB])
def test_group_counts_resume_bit_exactly_from_state_dict(backend, cls):
    gen = torch.Generator().manual_seed(3)
    a = [torch.nn.Parameter(torch.randn(6, generator=gen)), torch.nn.Parameter(torch.randn(4, generator=gen))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    grads = [[torch.randn(6, generator=gen), torch.randn(4, generator=gen) if k >= 3 else None] for k in range(6)]
    first = cls(a, lr=1e-2, backend=backend)
    for k in range(2):  # (the second parameter lags: no gradient yet)
        for p, g in zip(a, grads[k]):
            p.grad = g
        first.step()
    second = cls(b, lr=1e-2, backend=backend)
    for p, q in zip(a, b):
        q.data.copy_(p.detach())
    second.load_state_dict(first.state_dict())
    for k in range(2, 6):
        for opt, params in ((first, a), (second, b)):
            for p, g in zip(params, grads[k]):
                p.grad = None if g is None else g.clone()
            opt.step()
    for p, q in zip(a, b):
        assert torch.equal(p, q)
    assert first.param_groups[0]["step"] == second.param_groups[0]["step"] == 6


@pytest.mark.parametrize("backend", ALL)
def test_every_step_counts_but_a_skipped_one(backend):
    p = torch.nn.Parameter(torch.randn(4))
    opt = ek.FusedLAMB([p], lr=1e-2, backend=backend)
    opt.step()  # no gradient at all: Apex still counts the group's step
    p.grad = torch.randn(4)
    opt.step()
    opt.step(grad_scale=torch.tensor([2.0]), found_inf=torch.tensor([1.0]))  # skipped: not counted
    assert opt.param_groups[0]["step"] == 2
    assert float(opt.state[p]["step"]) == 2


@pytest.mark.parametrize("backend", ALL)
def test_capturable_keeps_the_count_on_the_device_with_the_same_steps(backend):
    gen = torch.Generator().manual_seed(4)
    plain, captured = [torch.nn.Parameter(torch.randn(5, generator=gen)) for _ in range(2)]
    captured.data.copy_(plain.detach())
    opts = [
        ek.FusedAdam([plain], lr=1e-2, backend=backend),
        ek.FusedAdam([captured], lr=1e-2, capturable=True, backend=backend),
    ]
    for _ in range(3):
        g = torch.randn(5, generator=gen)
        for opt, p in zip(opts, (plain, captured)):
            p.grad = g.clone()
            opt.step(found_inf=torch.tensor([0.0]))
        opts[1].step(found_inf=torch.tensor([1.0]))  # skipped, on the device
    count = opts[1].param_groups[0]["step"]
    assert torch.is_tensor(count) and float(count) == 3 and opts[0].param_groups[0]["step"] == 3
    assert torch.equal(plain, captured)


@pytest.mark.parametrize("backend", ALL)
def test_capturable_keeps_lr_on_the_device_and_follows_the_scheduler(backend):
    gen = torch.Generator().manual_seed(5)
    plain, captured = [torch.nn.Parameter(torch.randn(6, generator=gen)) for _ in range(2)]
    captured.data.copy_(plain.detach())
    opts = [
        ek.FusedAdam([plain], lr=1e-2, backend=backend),
        ek.FusedAdam([captured], lr=1e-2, capturable=True, backend=backend),
    ]
    lr = opts[1].param_groups[0]["lr"]
    assert torch.is_tensor(lr) and lr.device == captured.device and lr.dtype == torch.float32
    schedulers = [torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5) for opt in opts]
    for _ in range(5):
        g = torch.randn(6, generator=gen)
        for opt, p, scheduler in zip(opts, (plain, captured), schedulers):
            p.grad = g.clone()
            opt.step()
            scheduler.step()
    assert opts[1].param_groups[0]["lr"] is lr and opts[0].param_groups[0]["lr"] == 1e-2 * 0.25
    assert torch.equal(lr, torch.tensor(1e-2 * 0.25))  # (in place, as the float32 of the plain lr)
    torch.testing.assert_close(plain, captured, rtol=1e-6, atol=0)


# ---- memory per element: the drop-ins against Apex -----------------------------------------------------------
# Apex's state for a 16-bit parameter, read from its optimizers' source (apex/optimizers/fused_*.py), in bytes per
# element with the parameter itself: FusedAdam keeps fp32 exp_avg and exp_avg_sq (zeros_like(p).float()) beside
# the 16-bit parameter, 2 + 8; FusedLAMB keeps them in the parameter's dtype (zeros_like(p)), 2 + 4; FusedSGD
# steps the fp32 masters that amp's O2 makes (the 16-bit model, the fp32 master and its fp32 momentum: 2 + 4 + 4),
# and without amp a 16-bit parameter and its 16-bit momentum (2 + 2); FusedAdagrad its sum in the parameter's
# dtype (zeros_like(p)), 2 + 2; FusedMixedPrecisionLamb its moments in the parameter's dtype (2 + 4), or with
# reduced_precision_dtype an fp32 master (held outside its state) and fp32 moments, 2 + 4 + 8.
APEX_BYTES = {
    "fused-mixed-precision-lamb": 6,
    "fused-mixed-precision-lamb-reduced": 14,
    "fused-adagrad": 4,
    "fused-adam": 10,
    "fused-lamb": 6,
    "fused-sgd-amp-o2": 10,
    "fused-sgd-plain": 4,
}
# Ours, where they differ, and why (README's drop-in table): FusedLAMB keeps fp32 moments, since 16-bit moments
# (SPEC's exp_avg_dtype) are not built yet; FusedAdagrad an fp32 sum, since a 16-bit sum of squares saturates.
OURS_BYTES = {**APEX_BYTES, "fused-lamb": 10, "fused-adagrad": 6, "fused-mixed-precision-lamb": 10}
DROP_INS = {
    "fused-mixed-precision-lamb": lambda ps, be: ek.FusedMixedPrecisionLamb(ps, backend=be),
    "fused-mixed-precision-lamb-reduced": lambda ps, be: ek.FusedMixedPrecisionLamb(
        ps, reduced_precision_dtype=ps[0].dtype, backend=be
    ),
    "fused-adagrad": lambda ps, be: ek.FusedAdagrad(ps, lr=1e-2, backend=be),
    "fused-adam": lambda ps, be: ek.FusedAdam(ps, lr=1e-3, backend=be),  # (Apex's default, master_weights=False)
    "fused-lamb": lambda ps, be: ek.FusedLAMB(ps, lr=1e-3, backend=be),
    "fused-sgd-amp-o2": lambda ps, be: ek.FusedSGD(ps, lr=0.1, momentum=0.9, backend=be),  # (an fp32 master)
    "fused-sgd-plain": lambda ps, be: ek.FusedSGD(ps, lr=0.1, momentum=0.9, master_weights=False, backend=be),
}


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("name", DROP_INS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_memory_per_element_against_apex(backend, name, dtype):
    """The bytes a drop-in holds per 16-bit parameter element after its first steps, the parameter included and
    0-dim counts excluded, are Apex's (or the documented difference)."""
    params = [torch.nn.Parameter(torch.randn(n).to(dtype)) for n in (1, 33, 1000)]
    opt = DROP_INS[name](params, backend)
    for _ in range(2):
        for p in params:
            p.grad = torch.randn(p.shape).to(dtype)
        opt.step()
    held = sum(
        p.numel() * p.element_size() + sum(t.numel() * t.element_size() for t in opt.state[p].values() if t.dim() > 0)
        for p in params
    )
    assert held / sum(p.numel() for p in params) == OURS_BYTES[name]
