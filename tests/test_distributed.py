"""Data-parallel EXTRAP-SGD (and the adaptive bases, ExtrapAdamW and ExtrapLAMB) on CPU: 2 processes,
gloo. The DDP run equals a single-process emulation of
the same per-worker batches; each iteration makes exactly one gradient all-reduce (counted by a DDP
communication hook); a rank that raises fails the test instead of hanging it."""

from __future__ import annotations

import os
import tempfile
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel as DDP
from workers import free_port, mlp, shut_down, spawn, worker_batch

import extrap_kernels as ek

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="no gloo")
WORLD, ITERATIONS, BATCH = 2, 6, 8
TIMEOUT_S = 120


def _model() -> torch.nn.Module:
    return mlp(16)


def _batch(rank: int, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
    return worker_batch(rank, iteration, BATCH)


def _optimizer(params, mode: str, backend: str, base: str = "sgd"):
    if base == "adamw":
        return ek.ExtrapAdamW(params, lr=0.01, gamma=0.005, mode=mode, weight_decay=1e-3, backend=backend)
    if base == "lamb":
        return ek.ExtrapLAMB(params, lr=0.01, gamma=0.005, mode=mode, backend=backend)
    return ek.ExtrapSGD(params, lr=0.1, gamma=0.05, mode=mode, momentum=0.9, weight_decay=1e-3, backend=backend)


def _worker(rank: int, port: int, out: str, mode: str, backend: str, fail_rank: int, base: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        model = DDP(_model())
        calls = []

        def counting_allreduce(state, bucket):
            calls.append(1)
            return default_hooks.allreduce_hook(state, bucket)

        model.register_comm_hook(None, counting_allreduce)
        opt = _optimizer(model.parameters(), mode, backend, base)
        per_iteration = []
        for it in range(ITERATIONS):
            if rank == fail_rank and it == 2:
                raise RuntimeError(f"rank {rank} fails on purpose")
            x, y = _batch(rank, it)
            before = len(calls)
            ek.train_step(model, opt, lambda: torch.nn.functional.cross_entropy(model(x), y))
            per_iteration.append(len(calls) - before)
        torch.save(
            dict(params=[p.detach() for p in model.module.parameters()], allreduces=per_iteration),
            os.path.join(out, f"rank{rank}.pt"),
        )
    finally:
        shut_down()


def _spawn(mode: str, backend: str, out: str, fail_rank: int = -1, base: str = "sgd") -> None:
    spawn(_worker, (free_port(), out, mode, backend, fail_rank, base), WORLD, TIMEOUT_S)


def _emulation(mode: str, backend: str, base: str = "sgd") -> list[torch.Tensor]:
    """One process, one model copy per worker: each extrapolates with its own gradient; the update
    gradient is the average over workers (what the all-reduce computes)."""
    replicas = [_model() for _ in range(WORLD)]
    opts = [_optimizer(m.parameters(), mode, backend, base) for m in replicas]

    def grads_at(rank, model, it):
        model.zero_grad(set_to_none=True)
        x, y = _batch(rank, it)
        torch.nn.functional.cross_entropy(model(x), y).backward()

    for it in range(ITERATIONS):
        if mode == "local":
            for rank, (m, o) in enumerate(zip(replicas, opts)):
                grads_at(rank, m, it)
                o.extrapolate()
        for rank, m in enumerate(replicas):
            grads_at(rank, m, it)
        for ps in zip(*(m.parameters() for m in replicas)):
            mean = torch.stack([p.grad for p in ps]).sum(0) / WORLD
            for p in ps:
                p.grad = mean.clone()
        for o in opts:
            o.step()
    return [p.detach() for p in replicas[0].parameters()]


CASES = [
    (mode, backend, "sgd")
    for backend in ("cpu", "foreach")
    if backend in ek.available_backends("cpu")
    for mode in ("local", "past")
] + [("local", "foreach", "adamw"), ("local", "foreach", "lamb")]


@pytest.mark.parametrize("mode, backend, base", CASES)
def test_ddp_equals_single_process_emulation(mode, backend, base):
    with tempfile.TemporaryDirectory() as out:
        _spawn(mode, backend, out, base=base)
        ranks = [torch.load(os.path.join(out, f"rank{r}.pt")) for r in range(WORLD)]
    expected = _emulation(mode, backend, base)
    eps = torch.finfo(torch.float32).eps
    for r in ranks:
        assert r["allreduces"] == [1] * ITERATIONS  # one gradient all-reduce per iteration, either mode
        for p, q in zip(r["params"], expected):
            # the all-reduce and the emulation sum the same two numbers; only the order of the mean's
            # rounding may differ: a few ulps per iteration at the parameters' magnitude (< 4)
            torch.testing.assert_close(p, q, rtol=0, atol=ITERATIONS * 8 * eps * 4)
    assert all(torch.equal(a, b) for a, b in zip(ranks[0]["params"], ranks[1]["params"]))
    # the test can fail: extrapolation with the local gradient differs from that with the mean one
    if mode == "local":
        other = _emulation("past", backend, base)
        assert not all(torch.allclose(p, q, atol=1e-4) for p, q in zip(ranks[0]["params"], other))


def test_a_failing_rank_does_not_hang():
    with tempfile.TemporaryDirectory() as out:
        start = time.monotonic()
        # the failing rank's error, or its peer's lost connection, whichever the spawn sees first
        with pytest.raises(Exception, match="fails on purpose|Connection closed by peer"):
            _spawn("local", "foreach", out, fail_rank=1)
        assert time.monotonic() - start < TIMEOUT_S


# ZeroRedundancyOptimizer builds one optimizer per rank over that rank's shard of the parameters, and
# broadcasts each shard after the step: past mode is unsharded training's; mode "local" would take the
# second gradient where only this rank's shard is extrapolated, and is refused.


def _zero_worker(rank: int, port: int, out: str, mode: str, backend: str) -> None:
    from torch.distributed.optim import ZeroRedundancyOptimizer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        model = DDP(_model())
        opt = ZeroRedundancyOptimizer(
            model.parameters(),
            ek.ExtrapSGD,
            lr=0.1,
            gamma=0.05,
            mode=mode,
            momentum=0.9,
            weight_decay=1e-3,
            backend=backend,
        )
        result = {}
        for it in range(ITERATIONS):
            x, y = _batch(rank, it)

            def closure():
                model.zero_grad(set_to_none=True)
                loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                return loss

            try:
                opt.step(closure)
            except RuntimeError as err:
                result["error"] = str(err)
                break
        result["params"] = [p.detach() for p in model.module.parameters()]
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    finally:
        shut_down()


@pytest.mark.parametrize("backend", [b for b in ("cpu", "foreach") if b in ek.available_backends("cpu")])
def test_zero_runs_past_mode_as_unsharded_training_and_refuses_local(backend):
    for mode in ("past", "local"):
        with tempfile.TemporaryDirectory() as out:
            spawn(_zero_worker, (free_port(), out, mode, backend), WORLD, TIMEOUT_S)
            ranks = [torch.load(os.path.join(out, f"rank{r}.pt")) for r in range(WORLD)]
        if mode == "local":
            for r in ranks:
                assert "ZeroRedundancyOptimizer" in r["error"] and "use mode='past'" in r["error"]
            continue
        expected = _emulation("past", backend)
        eps = torch.finfo(torch.float32).eps
        for r in ranks:
            assert "error" not in r
            for p, q in zip(r["params"], expected):
                torch.testing.assert_close(p, q, rtol=0, atol=ITERATIONS * 8 * eps * 4)
