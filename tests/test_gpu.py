"""GPU suite (marker `gpu`; skipped without CUDA): the `cuda` and `triton` backends on CUDA tensors
against the reference, found_inf skip, determinism, and a tensor over 2**31 elements."""

from __future__ import annotations

import pytest
import torch
from conftest import GPU_BACKENDS, assert_within, noise_tolerance, output_ulp, trajectory_tolerance
from test_no_master import _bytes_per_element

import extrap_kernels as ek

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not GPU_BACKENDS, reason="no CUDA device or GPU backend")]
OPTIONS = [
    dict(mode=m, momentum=mu, nesterov=n, weight_decay=1e-3, lars=lars, noise_std=0.01, seed=3)
    for m in ("past", "local", "noise")
    for mu in (0.0, 0.9)
    for n in (False, True)
    for lars in (False, True)
    if not (n and mu == 0)
]
SIZES = [0, 1, 3, 4097, 65536 + 5, 300_001]


def _run(params, exact, opt, oracle, local, steps=20, gen=None):
    for _ in range(steps):
        for _phase in range(2 if local else 1):
            for p, q in zip(params, exact):
                q.grad = torch.randn(q.shape, generator=gen, dtype=torch.float64).to(p.dtype).double()
                p.grad = q.grad.to(device=p.device, dtype=p.dtype)
            if local and _phase == 0:
                opt.extrapolate()
                oracle.extrapolate()
            else:
                opt.step()
                oracle.step()


def _captured(body) -> torch.cuda.CUDAGraph:
    """`body` captured in a CUDA graph on a side stream, as torch's recipe does (the caller has warmed it up, so
    the state exists outside the graph)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            body()
    torch.cuda.current_stream().wait_stream(stream)
    return graph


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_gpu_backend_matches_reference(backend, dtype, options):
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(n, generator=gen, dtype=torch.float64) for n in SIZES]
    params = [torch.nn.Parameter(t.to(dtype).cuda()) for t in init]
    exact = [torch.nn.Parameter(p.detach().cpu().double()) for p in params]
    opt = ek.ExtrapSGD(params, lr=0.05, backend=backend, **options)
    oracle = ek.ExtrapSGD(exact, lr=0.05, backend="reference", **options)
    _run(params, exact, opt, oracle, options["mode"] == "local", gen=gen)
    tol = trajectory_tolerance(dtype, 20, 8.0, options["momentum"], max(SIZES) if options["lars"] else 0)
    tol += noise_tolerance(0.01) if options["mode"] == "noise" else 0.0
    for p, q in zip(params, exact):
        assert_within(p.detach().cpu(), q.detach(), tol + output_ulp(dtype, q.detach()), "param")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_found_inf_and_determinism(backend):
    def trained(seed):
        torch.manual_seed(seed)
        params = [torch.nn.Parameter(torch.randn(n, device="cuda")) for n in (7, 70_000)]
        opt = ek.ExtrapSGD(params, lr=0.1, momentum=0.9, mode="noise", noise_std=0.1, seed=9, backend=backend)
        for _ in range(5):
            for p in params:
                p.grad = torch.randn_like(p)
            opt.step()
        return opt, params

    opt_a, a = trained(1)
    _, b = trained(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    before = [p.detach().clone() for p in a]
    state = {k: v.clone() for k, v in opt_a.state[a[1]].items()}
    for p in a:
        p.grad = torch.full_like(p, float("inf"))
    opt_a.step(found_inf=torch.ones(1, device="cuda"))
    assert all(torch.equal(x, y) for x, y in zip(before, a))
    assert all(torch.equal(v, opt_a.state[a[1]][k]) for k, v in state.items())


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_tensor_over_2_pow_31(backend):
    numel = 2**31 + 1024
    free, _ = torch.cuda.mem_get_info()
    if free < numel * 2 * 6:  # bf16 x, g; fp32 s, m
        pytest.skip("not enough GPU memory")
    p = torch.nn.Parameter(torch.zeros(numel, dtype=torch.bfloat16, device="cuda"))
    p.grad = torch.ones_like(p)
    opt = ek.ExtrapSGD([p], lr=0.5, gamma=0.0, momentum=0.9, backend=backend)
    opt.step()
    assert float(p[-1]) == -0.5 and float(p[0]) == -0.5 and float(p[2**31 + 3]) == -0.5


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("mode", ["past", "local", "noise"])
def test_gpu_graph_capture_equals_eager(backend, mode):
    """lr and gamma as device tensors: a whole step captured in a CUDA graph and replayed with a new lr
    gives what eager steps give, bit for bit."""

    def setup():
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(n, device="cuda")) for n in (5, 70_001)]
        lr = torch.tensor(0.1, device="cuda")
        opt = ek.ExtrapSGD(
            params,
            lr=lr,
            gamma=torch.tensor(0.05, device="cuda"),
            mode=mode,
            momentum=0.9,
            lars=True,
            noise_std=0.01,
            backend=backend,
        )
        grads = [torch.randn(4, *p.shape, device="cuda") for p in params]
        return params, lr, opt, grads

    def iteration(params, opt, grads, k):
        for p, g in zip(params, grads):
            p.grad = g[k % 4].clone() if p.grad is None else p.grad.copy_(g[k % 4])
        if mode == "local":
            opt.extrapolate()
        opt.step()

    eager_params, eager_lr, eager_opt, grads = setup()
    graph_params, graph_lr, graph_opt, _ = setup()
    for k in range(3):  # warm-up creates the state outside the graph
        iteration(eager_params, eager_opt, grads, k)
        iteration(graph_params, graph_opt, grads, k)
    staged = [torch.empty_like(g[0]) for g in grads]

    def captured_step():
        for p, s in zip(graph_params, staged):
            p.grad.copy_(s)
        if mode == "local":
            graph_opt.extrapolate()
        graph_opt.step()

    graph = _captured(captured_step)
    for k in range(3, 9):
        lr = 0.1 / (k + 1)
        eager_lr.fill_(lr)
        graph_lr.fill_(lr)
        iteration(eager_params, eager_opt, grads, k)
        for s, g in zip(staged, grads):
            s.copy_(g[k % 4])
        graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(eager_params, graph_params):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("cls", [ek.ExtrapAdamW, ek.ExtrapLAMB], ids=lambda c: c.__name__)
@pytest.mark.parametrize("mode", ["past", "local", "noise"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gpu_adaptive_matches_reference(backend, cls, mode, dtype):
    from test_adaptive import trajectory_against_reference

    trajectory_against_reference(backend, cls, mode, dtype, "cuda")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_lamb_is_deterministic_and_captures(backend):
    """LAMB's three passes (global norm, reading pass, update) give the same bits twice, and a step captured
    in a CUDA graph replays what eager steps do, with its betas as device tensors changed between replays:
    nothing in them synchronizes with or copies from the host."""

    def setup():
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(n, device="cuda")) for n in (5, 70_001, 3 * 65536 + 1)]
        betas = (
            torch.tensor(0.9, dtype=torch.float64, device="cuda"),
            torch.tensor(0.999, dtype=torch.float64, device="cuda"),
        )
        opt = ek.ExtrapLAMB(params, lr=0.01, betas=betas, weight_decay=0.01, max_grad_norm=1.0, backend=backend)
        return params, opt

    grads = [[torch.randn(n, device="cuda") for n in (5, 70_001, 3 * 65536 + 1)] for _ in range(6)]
    runs = []
    for _ in range(2):
        params, opt = setup()
        for k in range(6):
            for p, g in zip(params, grads[k]):
                p.grad = g.clone()
            opt.step()
        runs.append([p.detach().clone() for p in params])
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    eager, eager_opt = setup()
    graphed, graphed_opt = setup()
    for p, q, g in zip(eager, graphed, grads[0]):
        p.grad, q.grad = g.clone(), g.clone()
    eager_opt.step()
    graphed_opt.step()  # the state is created outside the graph
    graph = _captured(graphed_opt.step)
    for k in range(1, 6):
        for p, q, g in zip(eager, graphed, grads[k]):
            p.grad.copy_(g)
            q.grad.copy_(g)
        if k == 3:
            for opt in (eager_opt, graphed_opt):
                opt.param_groups[0]["betas"][0].fill_(0.8)
        eager_opt.step()
        graph.replay()
    assert all(torch.equal(p.detach(), q.detach()) for p, q in zip(eager, graphed))


@pytest.mark.skipif("cuda" not in GPU_BACKENDS, reason="no cuda backend")
@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_gpu_large_and_small_kernel_argument_tables_agree(base):
    """This device takes the 26 KB table (CUDA >= 12.1, compute capability >= 7.0); the 4 KB fallback,
    forced, gives the same parameters bit for bit over 200 tensors (more than either table holds)."""
    ext = ek._ext.load()
    assert ext.large_kernel_args()

    def trained(small):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(n, device="cuda")) for n in [5, 70_000, 3] * 67]
        if base == "sgd":
            opt = ek.ExtrapSGD(params, lr=0.1, momentum=0.9, backend="cuda")
        else:
            opt = ek.ExtrapAdamW(params, lr=0.01, backend="cuda")
        ext.force_small_kernel_args(small)
        try:
            for _ in range(3):
                for p in params:
                    p.grad = torch.randn_like(p)
                opt.step()
        finally:
            ext.force_small_kernel_args(False)
        return torch.cat([p.detach().flatten() for p in params])

    assert torch.equal(trained(False), trained(True))


# Every class of the adaptive family, as its Apex or Extrap name, on the GPU backends against the float64
# reference of the same class on the CPU: Adagrad, NovoGrad and MLPerf's mixed-precision LAMB had no GPU run.
GPU_CLASSES = {
    "FusedAdam": (ek.FusedAdam, dict(lr=1e-2, weight_decay=0.01)),
    "ExtrapAdam-amsgrad": (ek.ExtrapAdam, dict(lr=1e-2, amsgrad=True, gamma=0.05)),
    "FusedLAMB": (ek.FusedLAMB, dict(lr=1e-2, weight_decay=0.01)),
    "FusedAdagrad": (ek.FusedAdagrad, dict(lr=1e-2, weight_decay=0.01)),
    "ExtrapAdagrad": (ek.ExtrapAdagrad, dict(lr=1e-2, gamma=0.05)),
    "FusedNovoGrad": (ek.FusedNovoGrad, dict(lr=1e-2, weight_decay=0.01)),
    "ExtrapNovoGrad": (ek.ExtrapNovoGrad, dict(lr=1e-2, gamma=0.05, weight_decay=0.01)),
    "FusedMixedPrecisionLamb": (ek.FusedMixedPrecisionLamb, dict(lr=1e-2)),
}


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("name", list(GPU_CLASSES))
def test_gpu_every_adaptive_class_matches_reference(backend, name):
    """fp32 on the device against float64 on the CPU, on the same gradients. Each step adds at most 64 fp32
    roundings of |x| and of the step's move, and a norm's sum over numel terms (LAMB, NovoGrad) at most
    numel * eps of the move; the gradients do not depend on x, so the errors add up and do not grow."""
    cls, kwargs = GPU_CLASSES[name]
    gen = torch.Generator().manual_seed(1)
    sizes = (1, 5, 4097, 70_001)
    exact = [torch.nn.Parameter(torch.randn(n, generator=gen, dtype=torch.float64)) for n in sizes]
    ours = [torch.nn.Parameter(q.detach().float().cuda()) for q in exact]
    exact = [torch.nn.Parameter(p.detach().cpu().double()) for p in ours]
    opt, oracle = cls(ours, backend=backend, **kwargs), cls(exact, backend="reference", **kwargs)
    eps, bound = torch.finfo(torch.float32).eps, 0.0
    for step in range(8):
        before = [q.detach().clone() for q in exact]
        for p, q in zip(ours, exact):
            g = torch.randn(q.shape, generator=gen).float()
            p.grad, q.grad = g.cuda(), g.double()
        opt.step()
        oracle.step()
        moved = max(float((q.detach() - b).abs().max()) for q, b in zip(exact, before))
        x_max = max(float(q.detach().abs().max()) for q in exact)
        bound += 64 * eps * (x_max + moved) + max(sizes) * eps * moved
        for i, (p, q) in enumerate(zip(ours, exact)):
            assert_within(p.detach().cpu(), q.detach(), bound, f"step {step} x {i}")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("name", ["FusedAdam", "FusedMixedPrecisionLamb"])
def test_gpu_capturable_step_replays_as_eager(backend, name):
    """FusedAdam(capturable=True) and FusedMixedPrecisionLamb keep lr and the step count on the device: a
    step captured in a CUDA graph and replayed, with the lr changed in place by a scheduler between replays,
    gives what eager steps give, bit for bit, and the count on the device advances with each replay."""

    def setup():
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(n, device="cuda")) for n in (5, 70_001)]
        if name == "FusedAdam":
            opt = ek.FusedAdam(params, lr=1e-2, weight_decay=0.01, capturable=True, backend=backend)
        else:
            opt = ek.FusedMixedPrecisionLamb(params, lr=1e-2, backend=backend)
        return params, opt

    grads = [[torch.randn(n, device="cuda") for n in (5, 70_001)] for _ in range(8)]
    (eager, eager_opt), (graphed, graphed_opt) = setup(), setup()
    for opt, params in ((eager_opt, eager), (graphed_opt, graphed)):
        for p, g in zip(params, grads[0]):
            p.grad = g.clone()
        opt.step()  # the state is created outside the graph
    graph = _captured(graphed_opt.step)
    schedulers = [torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5) for o in (eager_opt, graphed_opt)]
    for k in range(1, 8):
        for p, q, g in zip(eager, graphed, grads[k]):
            p.grad.copy_(g)
            q.grad.copy_(g)
        eager_opt.step()
        graph.replay()
        for scheduler in schedulers:
            scheduler.step()
    torch.cuda.synchronize()
    assert all(torch.equal(p.detach(), q.detach()) for p, q in zip(eager, graphed))
    counts = [o.param_groups[0]["step"] for o in (eager_opt, graphed_opt)]
    assert float(counts[0]) == float(counts[1]) == 8


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("master_weights", [False, True])
def test_gpu_bf16_fused_adam_with_and_without_master(backend, master_weights):
    """bf16 parameters: without a master (Apex's default) the state is the fp32 moments alone; with one, an
    fp32 copy too. Both follow the float64 reference within the bf16 rounding of x per step."""
    gen = torch.Generator().manual_seed(2)
    exact = [torch.nn.Parameter(torch.randn(n, generator=gen, dtype=torch.float64)) for n in (3, 70_001)]
    ours = [torch.nn.Parameter(q.detach().to(torch.bfloat16).cuda()) for q in exact]
    exact = [torch.nn.Parameter(p.detach().cpu().double()) for p in ours]
    opt = ek.FusedAdam(ours, lr=1e-2, master_weights=master_weights, backend=backend)
    oracle = ek.FusedAdam(exact, lr=1e-2, backend="reference")
    for _ in range(5):
        for p, q in zip(ours, exact):
            g = torch.randn(q.shape, generator=gen).to(torch.bfloat16)
            p.grad, q.grad = g.cuda(), g.double()
        opt.step()
        oracle.step()
    assert _bytes_per_element(opt, ours) == 2 + (12 if master_weights else 8)  # (the bf16 parameter and its state)
    for p, q in zip(ours, exact):  # each step at most one bf16 rounding of x (no master: it compounds)
        assert_within(p.detach().cpu().double(), q.detach(), 5 * 2**-8 * (float(q.detach().abs().max()) + 0.1), "x")
