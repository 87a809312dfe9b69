"""Whether a step's parameters, gradients and state tensors are the very objects a cached plan was made from
(plan.Plan.matches): compared by identity, element by element. The compiled extension does it in C (csrc/identity.h),
a pointer comparison per element; without it, the same comparisons run here in Python, a few times slower."""

from __future__ import annotations

import functools
import operator
from itertools import chain, repeat
from typing import Callable, NamedTuple

from . import _ext


def same_objects(now: list, then: tuple) -> bool:
    """`now` holds exactly the objects of `then`, in order."""
    return len(now) == len(then) and all(map(operator.is_, now, then))


def same_presence(grads: list, present: tuple) -> bool:
    """`grads` has a gradient (is not None) exactly where `present` is True."""
    return tuple(map(operator.is_not, grads, repeat(None))) == present


def same_values(dicts: list, values: tuple) -> bool:
    """The values of `dicts`, dict after dict in their own order, are exactly the objects of `values`."""
    return sum(map(len, dicts)) == len(values) and all(
        map(operator.is_, chain.from_iterable(map(dict.values, dicts)), values)
    )


class Comparisons(NamedTuple):
    same_objects: Callable[[list, tuple], bool]
    same_presence: Callable[[list, tuple], bool]
    same_values: Callable[[list, tuple], bool]


PYTHON = Comparisons(same_objects, same_presence, same_values)


@functools.lru_cache(maxsize=None)
def comparisons() -> Comparisons:
    """The extension's comparisons where it is built, else these."""
    ext = _ext.load()
    if ext is None or not hasattr(ext, "same_values"):
        return PYTHON
    return Comparisons(ext.same_objects, ext.same_presence, ext.same_values)
