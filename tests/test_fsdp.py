"""FSDP2 (`torch.distributed.fsdp.fully_shard`) on CPU: 2 processes, gloo. The optimizer steps on the
local shards of DTensor parameters (uneven shards included) and its state is sharded like them. The
sharded run equals one process training the unsharded model on the concatenated batch, LARS and LAMB
(whole-tensor norms summed over the shards; LAMB's global gradient norm too) included. mode="noise" is
refused for sharded parameters."""

from __future__ import annotations

import os
import tempfile
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from workers import free_port, mlp, shut_down, spawn, worker_batch

import extrap_kernels as ek

try:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - torch without FSDP2
    fully_shard = None

pytestmark = pytest.mark.skipif(
    fully_shard is None or not (dist.is_available() and dist.is_gloo_available()), reason="no FSDP2 or no gloo"
)
WORLD, ITERATIONS, BATCH = 2, 6, 8
TIMEOUT_S = 180
CASES = [  # (mode, backend, lars; "lamb": ExtrapLAMB)
    ("local", "cpu", False),
    ("past", "cpu", False),
    ("past", "foreach", False),
    ("local", "reference", True),
    ("past", "cpu", True),
    ("past", "foreach", True),
    ("past", "foreach", "lamb"),
    ("local", "reference", "lamb"),
    ("past", "cpu", "lamb"),
    ("local", "cpu", "lamb"),
]
CASES = [c for c in CASES if c[1] in ek.available_backends("cpu")]


def _model() -> torch.nn.Module:
    return mlp(17)  # 17 and 3 rows: shards of 9/8 and 2/1 rows on two ranks


def _batch(rank: int, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
    return worker_batch(rank, iteration, BATCH)


def _optimizer(params, mode: str, backend: str, lars: bool | str):
    if lars == "lamb":  # max_grad_norm 0.05 clips these gradients: the global norm must be the whole model's
        return ek.ExtrapLAMB(
            params, lr=0.01, gamma=0.005, mode=mode, weight_decay=0.01, max_grad_norm=0.05, backend=backend
        )
    # trust_coefficient 0.02 keeps the trust ratio well below 1: per-shard norms would change the result
    return ek.ExtrapSGD(
        params,
        lr=0.1,
        gamma=0.05,
        mode=mode,
        momentum=0.9,
        weight_decay=1e-3,
        lars=lars,
        trust_coefficient=0.02,
        backend=backend,
    )


def _loss(model, x, y):
    return torch.nn.functional.cross_entropy(model(x), y)


def _sharded_model(mesh) -> torch.nn.Module:
    model = _model()
    fully_shard(model[0], mesh=mesh)
    fully_shard(model[2], mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        mesh = init_device_mesh("cpu", (WORLD,))
        results = {}
        for mode, backend, lars in CASES:
            model = _sharded_model(mesh)
            opt = _optimizer(model.parameters(), mode, backend, lars)
            for it in range(ITERATIONS):
                x, y = _batch(rank, it)
                ek.train_step(model, opt, lambda: _loss(model, x, y))
            states = [opt.state[p] for p in model.parameters()]
            results[(mode, backend, lars)] = dict(
                params=[p.detach().full_tensor() for p in model.parameters()],
                local_rows=[p.to_local().shape[0] for p in model.parameters()],
                state_is_sharded=all(
                    isinstance(st[k], DTensor) and st[k].to_local().shape == p.to_local().shape
                    for st, p in zip(states, model.parameters())
                    for k in ("anchor", "momentum_buffer", "exp_avg", "exp_avg_sq")
                    if k in st
                ),
            )
        model = _sharded_model(mesh)
        opt = ek.ExtrapSGD(model.parameters(), lr=0.1, mode="noise", backend="foreach")
        before = [p.detach().full_tensor() for p in model.parameters()]
        x, y = _batch(rank, 0)
        try:
            ek.train_step(model, opt, lambda: _loss(model, x, y))
            results["noise"] = "accepted"
        except RuntimeError as error:
            results["noise"] = str(error)
        results["noise_untouched"] = all(
            torch.equal(a, p.detach().full_tensor()) for a, p in zip(before, model.parameters())
        )
        torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    finally:
        shut_down()


@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    with tempfile.TemporaryDirectory() as out:
        spawn(_worker, (free_port(), out), WORLD, TIMEOUT_S)
        return [torch.load(os.path.join(out, f"rank{r}.pt")) for r in range(WORLD)]


def _unsharded(mode: str, backend: str, lars: bool | str) -> list[torch.Tensor]:
    """One process, the whole model, the ranks' batches concatenated: FSDP2's reduce-scatter averages
    the ranks' mean gradients, which is the gradient of the mean over the concatenated batch."""
    model = _model()
    opt = _optimizer(model.parameters(), mode, backend, lars)
    for it in range(ITERATIONS):
        x, y = (torch.cat(t) for t in zip(*(_batch(r, it) for r in range(WORLD))))
        ek.train_step(model, opt, lambda: _loss(model, x, y))
    return [p.detach() for p in model.parameters()]


@pytest.mark.parametrize("mode,backend,lars", CASES)
def test_fsdp2_equals_unsharded_training(ranks, mode, backend, lars):
    expected = _unsharded(mode, backend, lars)
    eps = torch.finfo(torch.float32).eps
    for r in ranks:
        result = r[(mode, backend, lars)]
        assert result["state_is_sharded"]
        assert result["local_rows"] == ([9, 9, 2, 2] if r is ranks[0] else [8, 8, 1, 1])
        for p, q in zip(result["params"], expected):
            # the gradients sum the 2 * BATCH rows in another order: up to that many ulps of the
            # parameters' magnitude (< 4) per iteration
            torch.testing.assert_close(p, q, rtol=0, atol=ITERATIONS * 2 * BATCH * eps * 4)
    # the comparison can fail: the other mode (or no LARS) ends elsewhere
    other = _unsharded("past" if mode == "local" else "local", backend, lars if lars == "lamb" else not lars)
    assert not all(torch.allclose(p, q, atol=1e-4) for p, q in zip(ranks[0][(mode, backend, lars)]["params"], other))


def test_fsdp2_refuses_noise_mode_before_touching_anything(ranks):
    for r in ranks:
        assert "mode='noise'" in r["noise"] and "FSDP2" in r["noise"]
        assert r["noise_untouched"]
