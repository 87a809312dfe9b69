"""Writes to the parameters between steps are honoured (SPEC "Apex drop-in semantics"): a parameter whose
version counter moved since this optimizer last wrote it (model.load_state_dict, an EMA swap, a clamp) is the
new iterate. Before the step its stored anchor or fp32 master is re-taken from it (s = x), and an anchor-free
one, recomputed as x + last_gamma * m, forgets its last gamma; otherwise the step would start from the old
iterate and undo the write.

The kernels of the extension and of Triton write through raw pointers and leave the counters alone; torch ops
(the foreach and reference backends) count their own writes, so the versions are read again after those. The
cost of a step: one read of each stepped parameter's counter, a lookup of what was recorded and a list
comparison, all C-level loops.
"""

from __future__ import annotations

import operator

import torch
from torch import Tensor

VERSION = operator.attrgetter("_version")


class Versions:
    """The version counter of each parameter (by identity) when this optimizer last wrote it. A plan keeps the
    list of its parameters' recorded versions (`plan.recorded`, with the generation of the record it was read
    at), so that a step whose kernels move no counter reads the counters and compares two lists, nothing more."""

    def __init__(self) -> None:
        self.written: dict[int, int] = {}
        self.generation = 0  # advanced by every record that changes something

    def forget(self) -> None:
        """Drops every record: the next step takes the parameters as the optimizer's own."""
        self.written.clear()
        self.generation += 1

    def _recorded(self, plan) -> list:
        if plan.recorded is None or plan.recorded[0] != self.generation:
            plan.recorded = (self.generation, list(map(self.written.get, plan.stepped_ids)))
        return plan.recorded[1]

    def moved(self, plan) -> tuple[list[Tensor], list[int]]:
        """The parameters of `plan` written by someone else since the optimizer last wrote them (none the first
        time), and every parameter's version now."""
        now = list(map(VERSION, plan.stepped))
        then = self._recorded(plan)
        if now == then:
            return [], now
        return [p for p, a, b in zip(plan.stepped, now, then) if b is not None and a != b], now

    def record(self, plan, versions: list[int]) -> None:
        """The versions `plan`'s parameters have after the optimizer wrote them."""
        if versions != self._recorded(plan):
            self.written.update(zip(plan.stepped_ids, versions))
            self.generation += 1
            plan.recorded = (self.generation, versions)


@torch.no_grad()
def retake(state: dict, params: list[Tensor]) -> None:
    """Each written parameter is its own iterate: its anchor (or master) re-taken from it, an anchor-free one's
    last gamma (or the Adam family's recovery weights) set to 0 (then the recovered anchor is x). In place: the
    cached plan's tensors stay the ones it holds."""
    for p in params:
        entry = state.get(p)
        if not entry:
            continue
        if "anchor" in entry:
            entry["anchor"].copy_(p)
        for key in ("last_gamma", "recovery", "param_remainder"):  # (0: the anchor is x itself, x its fp32 value)
            if key in entry:
                entry[key].zero_()
