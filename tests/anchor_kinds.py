"""What both anchor-free past updates (the SGD family's, test_anchor_free.py, and the Adam family's,
test_anchor_free_adam.py) must do with checkpoints of the other kind: the seeded parameters and gradients
their tests train on, and the two conversions, each run against the optimizer the test module builds."""

from __future__ import annotations

import copy

import torch

SIZES = (1, 33, 1000)


def seeded_params(dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(n, generator=gen, dtype=torch.float64).to(dtype)) for n in SIZES]


def seeded_grads(params, step):
    gen = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)


def check_stored_checkpoint_loads_exactly(make, train, how: str, kept: tuple[str, ...]) -> None:
    """A stored-anchor state run anchor-free (the group's store_anchor set to False after loading, or a
    checkpoint from before the option, whose groups take the default) converts to x <- s with a record of 0,
    which recovers s exactly: the next step equals the stored run's bit for bit, x and the `kept` state.
    `make(params, store_anchor)` builds the optimizer, `train(opt, params, steps, start)` steps it."""
    stored = seeded_params()
    stored_opt = make(stored, True)
    train(stored_opt, stored, 5, 0)
    lean = [torch.nn.Parameter(p.detach().clone()) for p in stored]
    lean_opt = make(lean, False)
    saved = copy.deepcopy(stored_opt.state_dict())
    if how == "checkpoint_without_the_option":
        del saved["param_groups"][0]["store_anchor"]
    lean_opt.load_state_dict(saved)
    if how == "option_switched_off":  # load_state_dict restores the saved groups' options, this one too
        lean_opt.param_groups[0]["store_anchor"] = False
    train(stored_opt, stored, 1, 5)
    train(lean_opt, lean, 1, 5)
    for p, q in zip(lean, stored):
        assert "anchor" not in lean_opt.state[p]
        assert torch.equal(p, q)
        for key in kept:
            assert torch.equal(lean_opt.state[p][key], stored_opt.state[q][key]), key


def check_anchor_free_checkpoint_loads_stored(make, train, record: str, roundings_per_step: int) -> None:
    """Loaded with store_anchor=True, the anchor is recovered once from the `record` ("last_gamma",
    "recovery"), and the run goes on as the anchor-free one does: 5 steps on, within 6 steps of their
    trajectory bound (`roundings_per_step` roundings of eps/2 of the largest magnitude each): the conversion
    is one step's recovery, and each of the 5 steps adds at most one step's separation."""
    lean = seeded_params()
    lean_opt = make(lean, False)
    train(lean_opt, lean, 5, 0)
    stored = [torch.nn.Parameter(p.detach().clone()) for p in lean]
    stored_opt = make(stored, True)
    stored_opt.load_state_dict(copy.deepcopy(lean_opt.state_dict()))
    stored_opt.param_groups[0]["store_anchor"] = True  # (the loaded group says False)
    train(lean_opt, lean, 5, 5)
    train(stored_opt, stored, 5, 5)
    magnitude = max(float(t.abs().max()) for p in stored for t in (p.detach(), stored_opt.state[p]["anchor"]))
    eps = torch.finfo(torch.float32).eps
    for p, q in zip(lean, stored):
        assert record not in stored_opt.state[q] and "anchor" in stored_opt.state[q]
        bound = 6 * roundings_per_step * eps / 2 * magnitude
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=bound)
