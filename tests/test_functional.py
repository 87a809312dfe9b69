"""The public functional API (extrap_kernels.functional) against the optimizer classes: the same steps on
the same backend, so the same bits, with the state held by the caller; and its refusals."""

import pytest
import torch

import extrap_kernels as ek
from extrap_kernels import functional

BACKENDS = ["reference", "foreach"] + (["cpu"] if "cpu" in ek.available_backends() else [])
STEPS = 4


def _problem(seed: int, dtype=torch.float32):
    torch.manual_seed(seed)
    shapes = [(0,), (1,), (7,), (3, 5), (130,)]
    params = [torch.randn(s, dtype=dtype) for s in shapes]
    grads = [[torch.randn(s, dtype=dtype) for s in shapes] for _ in range(2 * STEPS)]
    return params, grads


def _class_run(make, params, grads, local: bool):
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    opt = make(ps)
    for step in range(STEPS):
        for p, g in zip(ps, grads[2 * step]):
            p.grad = g.clone()
        if local:
            opt.extrapolate()
            for p, g in zip(ps, grads[2 * step + 1]):
                p.grad = g.clone()
        opt.step()
    return [p.detach() for p in ps]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["past", "past-stored", "local", "noise", None])
def test_sgd_is_extrap_sgd(backend, mode):
    params, grads = _problem(0)
    store = mode == "past-stored"
    mode_ = "past" if store else mode
    options = dict(lr=0.1, momentum=0.9, weight_decay=0.01, noise_std=0.05, seed=3)
    if mode is None:
        expected = _class_run(
            lambda ps: ek.FusedSGD(
                ps, backend=backend, **{k: v for k, v in options.items() if k not in ("noise_std", "seed")}
            ),
            params,
            grads,
            False,
        )
    else:
        expected = _class_run(
            lambda ps: ek.ExtrapSGD(ps, gamma=0.05, mode=mode_, store_anchor=store, backend=backend, **options),
            params,
            grads,
            mode == "local",
        )
    xs = [p.clone() for p in params]
    momenta = [torch.zeros_like(p) for p in params]
    steps = [torch.tensor(0.0) for _ in params]
    anchor_free = mode == "past"
    anchors = None if anchor_free or mode is None else [p.clone() for p in params]
    last_gammas = [torch.tensor(0.0) for _ in params] if anchor_free else None
    gamma = 0.0 if mode is None else 0.05
    for step in range(STEPS):
        if mode == "local":
            functional.sgd(
                xs,
                grads[2 * step],
                momenta,
                steps,
                anchors,
                gamma=gamma,
                mode="local",
                extrapolate=True,
                backend=backend,
                **options,
            )
            functional.sgd(
                xs, grads[2 * step + 1], momenta, steps, anchors, gamma=gamma, mode="local", backend=backend, **options
            )
        else:
            functional.sgd(
                xs,
                grads[2 * step],
                momenta,
                steps,
                anchors,
                last_gammas,
                gamma=gamma,
                mode=mode_,
                backend=backend,
                **options,
            )
    for x, e in zip(xs, expected):
        assert torch.equal(x, e)
    assert all(float(s) == STEPS for s in steps)
    assert float(momenta[-1].abs().sum()) > 0  # (a control: the state the caller holds is what moved)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("base", ["adamw", "lamb"])
@pytest.mark.parametrize("mode", ["past", "local"])
def test_adaptive_is_the_class(backend, base, mode):
    params, grads = _problem(1)
    options = dict(lr=0.01, gamma=0.02, mode=mode, backend=backend)
    if base == "adamw":
        make = lambda ps: ek.ExtrapAdamW(ps, **options)  # noqa: E731
    else:
        make = lambda ps: ek.ExtrapLAMB(ps, max_grad_norm=0.5, **options)  # noqa: E731
    expected = _class_run(make, params, grads, mode == "local")
    xs = [p.clone() for p in params]
    m, v = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    steps, anchors = [torch.tensor(0.0) for _ in params], [p.clone() for p in params]
    recoveries = None
    if mode == "past":  # (the classes' default: the anchor-free past update)
        anchors, recoveries = None, [p.new_zeros(2) for p in params]

    def step(g, **kw):
        common = dict(options, recoveries=recoveries, **kw)
        if base == "adamw":
            functional.adam(xs, g, m, v, None, steps, anchors, weight_decay=0.01, decoupled_weight_decay=True, **common)
        else:
            functional.lamb(xs, g, m, v, steps, anchors, max_grad_norm=0.5, **common)

    for i in range(STEPS):
        if mode == "local":
            step(grads[2 * i], extrapolate=True)
            step(grads[2 * i + 1])
        else:
            step(grads[2 * i])
    for x, e in zip(xs, expected):
        assert torch.equal(x, e)


def test_refusals_write_nothing():
    params, grads = _problem(2)
    xs = [p.clone() for p in params]
    momenta, steps = [torch.zeros_like(p) for p in params], [torch.tensor(0.0) for _ in params]
    with pytest.raises(ValueError, match="anchor-free past update"):
        functional.sgd(xs, grads[0], momenta, steps, lr=0.1, momentum=0.9, nesterov=True)
    # (past, neither anchors nor recoveries)
    with pytest.raises(ValueError, match="recoveries for Adam, AdamW and LAMB"):
        functional.adam(xs, grads[0], momenta, [torch.zeros_like(p) for p in params], None, steps, lr=0.1)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        functional.sgd(xs, grads[0], momenta, steps, lr=-1.0, momentum=0.9, mode=None)
    with pytest.raises(ValueError, match="momentum_buffers"):
        functional.sgd(xs, grads[0], None, steps, lr=0.1, momentum=0.9, mode=None)
    with pytest.raises(ValueError, match="extrapolate=True belongs to mode='local'"):
        functional.sgd(
            xs, grads[0], momenta, steps, [p.clone() for p in params], lr=0.1, momentum=0.9, extrapolate=True
        )
    bad = [g.double() for g in grads[0]]
    with pytest.raises(TypeError, match="mismatched dtypes"):
        functional.sgd(xs, bad, momenta, steps, lr=0.1, momentum=0.9, mode=None)
    halves = [p.bfloat16() for p in params]
    with pytest.raises(ValueError, match="need anchors"):
        functional.sgd(
            halves,
            [g.bfloat16() for g in grads[0]],
            [torch.zeros_like(p) for p in params],
            steps,
            lr=0.1,
            momentum=0.9,
            mode="local",
        )
    assert all(torch.equal(x, p) for x, p in zip(xs, params)) and all(float(s) == 0 for s in steps)


@pytest.mark.parametrize("backend", BACKENDS)
def test_leaf_parameters_step_outside_no_grad(backend):
    """Parameters that require grad step in place without the caller's torch.no_grad(), on every backend,
    as under the classes' step()."""
    params = [torch.randn(5, requires_grad=True), torch.randn(3, 2, requires_grad=True)]
    before = [p.detach().clone() for p in params]
    grads = [torch.randn_like(p) for p in params]
    momenta = [torch.zeros_like(p) for p in params]
    functional.sgd(
        params,
        grads,
        momenta,
        [torch.zeros(()) for _ in params],
        last_gammas=[torch.zeros(()) for _ in params],
        lr=0.1,
        momentum=0.9,
        backend=backend,
    )
    assert all(not torch.equal(p.detach(), b) for p, b in zip(params, before))
    assert all(p.requires_grad and p.grad_fn is None for p in params)
