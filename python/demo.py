"""The main job for now: ExtrapSGD against torch.optim.SGD on a small problem, and the optimizer step
time of every backend on this machine.

    make demo        (or: python python/demo.py [--numel 10000000 --tensors 100])
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import extrap_kernels as ek


def small_problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(512, 20, generator=gen)
    y = torch.sin(x @ torch.randn(20, 1, generator=gen))
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    return model, x, y


def train(make_opt, steps=200, seed=0):
    model, x, y = small_problem(seed)
    opt = make_opt(model.parameters())

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    with torch.no_grad():
        return [p.detach().clone() for p in model.parameters()], float(torch.nn.functional.mse_loss(model(x), y))


def agreement(backends):
    sgd_params, sgd_loss = train(lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9))
    print(f"torch.optim.SGD(lr=0.05, momentum=0.9), 200 steps: final loss {sgd_loss:.5f}")
    print(f"{'optimizer':44s} {'backend':10s} {'max |x - x_SGD|':>16s} {'final loss':>11s}")
    for backend in backends:
        for label, kwargs in [("ExtrapSGD(gamma=0)  [= SGD]", dict(gamma=0.0)),
                              ("ExtrapSGD(mode='past', gamma=lr)", dict(mode="past")),
                              ("ExtrapSGD(mode='local', gamma=lr)", dict(mode="local"))]:
            params, loss = train(lambda ps: ek.ExtrapSGD(ps, lr=0.05, momentum=0.9, backend=backend, **kwargs))
            diff = max(float((a - b).abs().max()) for a, b in zip(params, sgd_params))
            print(f"{label:44s} {backend:10s} {diff:16.3g} {loss:11.5f}")


def step_time(make_opt, params, repeats):
    opt = make_opt(params)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()  # state allocation and first-step work outside the timing
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timings(backends, numel, tensors, repeats):
    sizes = [numel // tensors] * tensors
    params = [torch.nn.Parameter(torch.randn(n)) for n in sizes]
    print(f"\nOptimizer step, {numel / 1e6:.0f}M fp32 parameters in {tensors} tensors, momentum 0.9, "
          f"{torch.get_num_threads()} threads, median of {repeats}:")
    rows = [("torch.optim.SGD(foreach=True) [plain SGD]",
             step_time(lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, foreach=True), params, repeats))]
    for backend in backends:
        rows.append((f"ExtrapSGD(mode='past') backend={backend}",
                     step_time(lambda ps: ek.ExtrapSGD(ps, lr=0.1, momentum=0.9, backend=backend), params, repeats)))
    fused = dict(rows).get("ExtrapSGD(mode='past') backend=cpu")
    print(f"{'contender':48s} {'ms/step':>9s} {'GB/s*':>7s} {'x cpu':>7s}")
    for name, seconds in rows:
        traffic = (20 if "torch" in name else 24) * numel / seconds / 1e9  # SPEC floor bytes per element
        ratio = f"{seconds / fused:7.2f}" if fused else "      -"
        print(f"{name:48s} {seconds * 1e3:9.1f} {traffic:7.1f} {ratio}")
    print("* SPEC.md's bytes per element (24 one-phase, 20 plain SGD) times numel over the step time")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--numel", type=int, default=10_000_000)
    parser.add_argument("--tensors", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    backends = ek.available_backends("cpu")
    print(f"extrap-kernels {ek.__version__}, torch {torch.__version__}, backends on cpu: {backends}\n")
    agreement(backends)
    timings(backends, args.numel, args.tensors, args.repeats)


if __name__ == "__main__":
    main()
