"""DeepSpeed's engine with our optimizers (where deepspeed is installed; CI's machine has none, so this
skips there): `deepspeed.initialize(optimizer=ExtrapSGD(...))` on two CPU ranks over gloo, ZeRO stages 0, 1 and
2, trains in past mode as unsharded data-parallel training does (tests/test_distributed.py's single-process
emulation), and refuses mode "local", whose second gradient the engine never takes. ZeRO hands the optimizer
flat fp32 partitions of the parameters, which the elementwise past update does not mind; DeepSpeed asks to be
told that the optimizer is not one of its own (zero_allow_untested_optimizer)."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
from test_distributed import ITERATIONS, TIMEOUT_S, WORLD, _batch, _emulation, _model, _optimizer
from workers import free_port, shut_down, spawn

pytest.importorskip("deepspeed")


def _worker(rank: int, port: int, out: str, stage: int, backend: str, mode: str = "past") -> None:
    import deepspeed

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank)
    )
    deepspeed.init_distributed(dist_backend="gloo")
    try:
        model = _model()
        config = {
            "train_micro_batch_size_per_gpu": _batch(0, 0)[0].shape[0],
            "gradient_accumulation_steps": 1,
            "zero_optimization": {"stage": stage},
            "zero_allow_untested_optimizer": True,
        }
        engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=_optimizer(model.parameters(), mode, backend), config=config
        )
        result = {}
        for it in range(ITERATIONS):
            x, y = _batch(rank, it)
            engine.backward(torch.nn.functional.cross_entropy(engine(x), y))
            try:
                engine.step()  # (no closure: the engine calls the optimizer's step() bare)
            except RuntimeError as err:
                result["error"] = str(err)
                break
        result["params"] = [p.detach() for p in model.parameters()]
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    finally:
        shut_down()


@pytest.mark.parametrize("stage", [0, 1, 2])
@pytest.mark.parametrize("backend", ["cpu", "foreach"])
def test_deepspeed_past_mode_is_unsharded_training(stage, backend):
    with tempfile.TemporaryDirectory() as out:
        spawn(_worker, (free_port(), out, stage, backend), WORLD, TIMEOUT_S)
        ranks = [torch.load(os.path.join(out, f"rank{r}.pt")) for r in range(WORLD)]
    expected = _emulation("past", backend)
    eps = torch.finfo(torch.float32).eps
    for r in ranks:
        assert "error" not in r
        for p, q in zip(r["params"], expected):
            torch.testing.assert_close(p, q, rtol=0, atol=ITERATIONS * 8 * eps * 4)


@pytest.mark.parametrize("stage", [0, 1])
def test_deepspeed_refuses_local_mode_naming_past(stage):
    """The engine steps the optimizer without a closure, where mode "local" has no second gradient: the first
    step raises, saying to use mode='past', and nothing was updated (never a silently wrong step)."""
    with tempfile.TemporaryDirectory() as out:
        spawn(_worker, (free_port(), out, stage, "foreach", "local"), WORLD, TIMEOUT_S)
        ranks = [torch.load(os.path.join(out, f"rank{r}.pt")) for r in range(WORLD)]
    initial = [p.detach() for p in _model().parameters()]
    for r in ranks:
        assert "needs mode='past'" in r["error"]
        assert all(torch.equal(p, q) for p, q in zip(r["params"], initial))
