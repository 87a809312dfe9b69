"""The identity comparisons a cached plan is checked with (extrap_kernels/identity.py): the extension's, in C
(csrc/identity.h), and the Python fallback give the same answer on every case, and each case that differs is
told apart (a comparison that always answered True, or False, fails here)."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from extrap_kernels import identity


def _implementations():
    compiled = identity.comparisons()
    marks = [pytest.mark.skip(reason="the extension is not built")] if compiled is identity.PYTHON else []
    return [pytest.param(identity.PYTHON, id="python"), pytest.param(compiled, id="compiled", marks=marks)]


over = pytest.mark.parametrize("compare", _implementations())
a, b, c = torch.zeros(1), torch.zeros(1), torch.zeros(1)  # (equal values, distinct objects)


@over
@pytest.mark.parametrize(
    "now, then, same",
    [
        ([], (), True),
        ([a, b], (a, b), True),
        ([a, b], (b, a), False),
        ([a, b], (a,), False),
        ([a], (a, b), False),
        ([a, c], (a, b), False),
    ],
)
def test_same_objects(compare, now, then, same):
    assert compare.same_objects(now, then) is same


@over
@pytest.mark.parametrize(
    "grads, present, same",
    [
        ([], (), True),
        ([a, None, b], (True, False, True), True),
        ([a, a, b], (True, False, True), False),
        ([None, None, b], (True, False, True), False),
        ([a, None], (True, False, True), False),
    ],
)
def test_same_presence(compare, grads, present, same):
    assert compare.same_presence(grads, present) is same


@over
@pytest.mark.parametrize(
    "dicts, values, same",
    [
        ([], (), True),
        ([{}, {}], (), True),
        ([{"m": a, "v": b}, {"m": c}], (a, b, c), True),
        ([OrderedDict(m=a), {"m": b}], (a, b), True),  # (torch.optim's state may hold dict subclasses)
        ([{"m": a, "v": c}, {"m": c}], (a, b, c), False),  # a value replaced
        ([{"m": a, "v": b}, {}], (a, b, c), False),  # a value deleted
        ([{"m": a, "v": b}, {"m": c, "s": a}], (a, b, c), False),  # a value added
        ([{"v": b, "m": a}, {"m": c}], (a, b, c), False),  # the same values, another order
        ([{"m": a}, {"v": b, "m": c}], (a, b, c), True),  # (which dict holds a value is the lists' to say)
    ],
)
def test_same_values(compare, dicts, values, same):
    assert compare.same_values(dicts, values) is same
