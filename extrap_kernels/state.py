"""The optimizer state each base keeps per parameter: its keys, the bucket lists they fill, and how it is
created and converted. An optimizer class holds one of these (`FusedOptimizer.STATE`), which its public
hooks `state_lists` and `init_state` hand the plan: what a base keeps is written once, here, whatever the
class's iteration (extrapolating or Apex's).

The keys are torch.optim's (momentum_buffer, exp_avg, exp_avg_sq, max_exp_avg_sq, sum, step), so its
checkpoints load, plus the anchor ("anchor") and the anchor-free past mode's "last_gamma" (the SGD family) or
"recovery" (the Adam family: recovery.py).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

from . import compensation, recovery
from .bucket import SIXTEEN_BIT, Phase, moment_dtype_for, state_dtype
from .hyper import AdagradHyper, AdamHyper, Hyper, LambHyper, NovoGradHyper, SGDHyper


def _zeros_like(p: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.zeros_like(p, dtype=dtype, memory_format=torch.contiguous_format)


def _copy_of(p: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.empty_like(p, dtype=dtype, memory_format=torch.contiguous_format).copy_(p)


def _compensate(state: dict, p: Tensor, group: dict) -> Tensor:
    """master_weights="compensated" (compensation.py): x's fp32 value is x over its "param_remainder". Entering it,
    an fp32 anchor or master in the state (a checkpoint, or the option switched) becomes x's value exactly (x its
    high half, the remainder its low; an anchor-free record restarts at 0, the anchor being x); leaving it, the
    remainder is dropped. Returns x's fp32 value where it was compensated (the anchor the other kind takes), else
    x."""
    if compensation.compensated(group, p.dtype):
        if "anchor" in state and state["anchor"].dtype == torch.float32:
            high, low = compensation.split(state.pop("anchor"))
            p.copy_(high)
            state[compensation.KEY] = low
            for key in ("last_gamma", recovery.KEY):
                if key in state:
                    state[key].zero_()
        elif compensation.KEY not in state:
            state[compensation.KEY] = _zeros_like(p, torch.int16)
        return p
    if compensation.KEY in state:
        return compensation.join(p, state.pop(compensation.KEY))
    return p


class BaseState:
    """What every base keeps: the step count, and the anchor where the class keeps one."""

    def __init__(self, hyper: type[Hyper]):
        self.hyper = hyper  # the base's hyperparameter record (hyper.py)

    @property
    def base(self) -> str:
        return self.hyper.base

    # the state keys held in fp32 (fp64) whatever the master: the adaptive bases' moments (or in the 16-bit
    # exp_avg_dtype of an Adam-family group: bucket.moment_dtype_for)
    FULL_PRECISION: frozenset[str] = frozenset()

    def state_lists(self, group: dict, phase: Phase) -> dict[str, str]:
        """The bucket's per-parameter state lists besides anchors and steps: bucket field -> state key."""
        raise NotImplementedError

    def dtype_of(self, key: str, p: Tensor, group: dict) -> torch.dtype:
        """The dtype state `key` of `p` is held in (a loaded checkpoint is converted to it): the step count
        float32; the anchor and the SGD family's momentum the state dtype, or with master_weights=False the
        parameter's own."""
        if key == "step":
            return torch.float32
        if key == compensation.KEY:  # (bits, not a value)
            return torch.int16
        if key in ("last_gamma", recovery.KEY):
            return state_dtype(p.dtype.to_real())
        if key in self.FULL_PRECISION:
            return moment_dtype_for(p.dtype, group.get("exp_avg_dtype"))
        return state_dtype(p.dtype) if group.get("master_weights", True) else p.dtype

    def init_state(self, state: dict, p: Tensor, group: dict, phase: Phase, anchored: bool) -> dict:
        """The state `phase` needs for `p`, created in `state` where missing (`anchored`: the class keeps an
        anchor for `p`)."""
        raise NotImplementedError


class SGDState(BaseState):
    """The SGD family's: the momentum buffer (momentum > 0); the anchor, or in the anchor-free past mode the
    gamma x was last extrapolated with."""

    def state_lists(self, group: dict, phase: Phase) -> dict[str, str]:
        lists = {}
        if group["momentum"] != 0:
            lists["momenta"] = "momentum_buffer"
        if phase == Phase.UPDATE_PAST_ANCHOR_FREE:
            lists["last_gammas"] = "last_gamma"
        return lists

    def init_state(self, state: dict, p: Tensor, group: dict, phase: Phase, anchored: bool) -> dict:
        """The anchor is stored or recomputed as the group says (ExtrapSGD's store_anchor); a state of the
        other kind is converted, so that checkpoints load either way: a stored anchor s becomes x (x <- s and
        last_gamma = 0 recompute s exactly; x is rewritten by the step anyway), and a recomputed one becomes
        s = x + last_gamma * m."""
        if "step" not in state:  # a loaded torch.optim.SGD state has a momentum buffer but no step
            first = 1.0 if "momentum_buffer" in state else 0.0
            state["step"] = torch.tensor(first, dtype=torch.float32, device=p.device)
        source = _compensate(state, p, group)
        # fp32 (fp64) state; with master_weights=False a 16-bit parameter keeps its own dtype, and a state of
        # the other kind (a checkpoint, or the option switched) is converted
        sdtype = state_dtype(p.dtype) if group.get("master_weights", True) else p.dtype
        for key in ("anchor", "momentum_buffer"):  # (any other dtype is corrupt state, refused by the checks)
            if key in state and state[key].dtype != sdtype and state[key].dtype in (p.dtype, state_dtype(p.dtype)):
                state[key] = state[key].to(sdtype)
        if group["momentum"] != 0 and "momentum_buffer" not in state:
            state["momentum_buffer"] = _zeros_like(p, sdtype)
        if phase == Phase.UPDATE_PAST_ANCHOR_FREE:
            if "anchor" in state:
                p.copy_(state.pop("anchor"))
                state.pop("last_gamma", None)
            if "last_gamma" not in state:
                state["last_gamma"] = torch.zeros((), dtype=state_dtype(p.dtype.to_real()), device=p.device)
            return state
        if anchored and "anchor" not in state:
            anchor = _copy_of(source, sdtype)
            if "last_gamma" in state and "momentum_buffer" in state:
                anchor.add_(state["momentum_buffer"] * state["last_gamma"])
            state["anchor"] = anchor
        state.pop("last_gamma", None)
        return state


class AdaptiveState(BaseState):
    """The adaptive bases': the moments exp_avg and exp_avg_sq (max_exp_avg_sq with amsgrad), with
    torch.optim.Adam's names (its checkpoints load), and the anchor."""

    FULL_PRECISION = frozenset(("exp_avg", "exp_avg_sq", "max_exp_avg_sq"))

    def state_lists(self, group: dict, phase: Phase) -> dict[str, str]:
        lists = {"momenta": "exp_avg", "second_moments": "exp_avg_sq"}
        if group.get("amsgrad", False):
            lists["max_second_moments"] = "max_exp_avg_sq"
        if phase == Phase.UPDATE_PAST_ANCHOR_FREE:
            lists["last_gammas"] = recovery.KEY
        return lists

    def init_state(self, state: dict, p: Tensor, group: dict, phase: Phase, anchored: bool) -> dict:
        """The moments are fp32 (fp64) whatever the master; the anchor is the fp32 master of a 16-bit parameter,
        or with master_weights=False a copy in the parameter's dtype (a stored anchor of the other kind is
        converted; none is kept where the class keeps none, x being its own). The anchor-free past update keeps
        the recovery weights instead (recovery.py), and a state of the other kind is converted, so that
        checkpoints load either way: a stored anchor s becomes x (x <- s, weights 0), recovery weights become the
        anchor they recover."""
        if "step" not in state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32, device=p.device)
        source = _compensate(state, p, group)
        sdtype = state_dtype(p.dtype)
        for key in self.state_lists(group, phase).values():
            if key not in state:
                # (the weights are a plain tensor, as the step: every FSDP2 shard keeps its tensor's two)
                weights = torch.zeros(2, dtype=sdtype, device=p.device)
                state[key] = _zeros_like(p, self.dtype_of(key, p, group)) if key != recovery.KEY else weights
        for key in self.FULL_PRECISION & state.keys():  # (exp_avg_dtype switched: the moments converted, to nearest)
            mdtype = self.dtype_of(key, p, group)
            if state[key].dtype != mdtype and state[key].dtype in (sdtype, *SIXTEEN_BIT):
                state[key] = state[key].to(mdtype)
        if phase == Phase.UPDATE_PAST_ANCHOR_FREE:
            if "anchor" in state:
                p.copy_(state.pop("anchor"))
                state[recovery.KEY].zero_()
            return state
        if recovery.KEY in state:  # (anchored: the past and noise modes, and local's snapshot between steps)
            weights = state.pop(recovery.KEY)
            if anchored and "anchor" not in state:
                second = state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]
                hyper = self.hyper.from_group(group, gamma=0.0)
                anchor = recovery.recovered(source, state["exp_avg"], second, weights, int(state["step"]), hyper)
                state["anchor"] = anchor.to(sdtype)
        adtype = self.dtype_of("anchor", p, group)
        if not anchored:
            state.pop("anchor", None)  # (x is the iterate: a master from a checkpoint rounds to it)
        elif "anchor" not in state:
            state["anchor"] = _copy_of(source, adtype)
        elif state["anchor"].dtype != adtype and state["anchor"].dtype in (p.dtype, sdtype):
            state["anchor"] = state["anchor"].to(adtype)
        return state


class AdagradState(AdaptiveState):
    """Adagrad's: the running sum of g'^2 ("sum", torch.optim.Adagrad's name), started at the group's
    initial_accumulator_value, and no first moment."""

    FULL_PRECISION = frozenset(("sum",))

    def state_lists(self, group: dict, phase: Phase) -> dict[str, str]:
        return {"second_moments": "sum"}

    def init_state(self, state: dict, p: Tensor, group: dict, phase: Phase, anchored: bool) -> dict:
        if "sum" not in state:
            state["sum"] = _zeros_like(p, state_dtype(p.dtype)).fill_(group.get("initial_accumulator_value", 0.0))
        return super().init_state(state, p, group, phase, anchored)


class NovoGradState(AdaptiveState):
    """NovoGrad's: the first moment "exp_avg" and, under Apex's name "exp_avg_sq", each tensor's running
    gradient norm, one element of the state dtype (Apex keeps them in a group-level list, its fp16 and fp32
    parameters' apart). Before the first step it is 0 with init_zero, else -1: the first norm is taken as it
    is (reference_novograd.blend)."""

    FULL_PRECISION = frozenset(("exp_avg", "exp_avg_sq"))

    def state_lists(self, group: dict, phase: Phase) -> dict[str, str]:
        return {"momenta": "exp_avg", "grad_norms": "exp_avg_sq"}

    def init_state(self, state: dict, p: Tensor, group: dict, phase: Phase, anchored: bool) -> dict:
        if "exp_avg_sq" not in state:
            unset = 0.0 if group.get("init_zero", False) else -1.0
            state["exp_avg_sq"] = torch.tensor(unset, dtype=state_dtype(p.dtype.to_real()), device=p.device)
        return super().init_state(state, p, group, phase, anchored)


SGD_STATE = SGDState(SGDHyper)
ADAM_STATE = AdaptiveState(AdamHyper)
LAMB_STATE = AdaptiveState(LambHyper)
ADAGRAD_STATE = AdagradState(AdagradHyper)
NOVOGRAD_STATE = NovoGradState(NovoGradHyper)


class TrackedState(defaultdict):
    """The optimizer's `state` (torch.optim's defaultdict(dict)), counting in `generation` every change of which
    dict a parameter maps to: an entry set, replaced or deleted. A cached plan then compares one number and the
    identities of the state tensors in its parameters' dicts (plan.Plan.matches) instead of looking every
    parameter up, a Python hash call each. torch.optim's load_state_dict builds a plain defaultdict, which the
    optimizer wraps again (FusedOptimizer.__setstate__); a state replaced by something else is checked by
    lookup, as before."""

    def __init__(self, items=()):
        super().__init__(dict, items)
        self.generation = 0

    def __reduce__(self):  # (pickle, deepcopy: the items, set again)
        return (TrackedState, (), None, None, iter(self.items()))

    def _changed(self) -> None:
        self.generation += 1

    def __setitem__(self, key, value) -> None:  # (also how defaultdict creates a missing entry)
        self._changed()
        super().__setitem__(key, value)

    def __delitem__(self, key) -> None:
        self._changed()
        super().__delitem__(key)

    def pop(self, *args):
        self._changed()
        return super().pop(*args)

    def popitem(self):
        self._changed()
        return super().popitem()

    def clear(self) -> None:
        self._changed()
        super().clear()

    def update(self, *args, **kwargs) -> None:
        self._changed()
        super().update(*args, **kwargs)

    def setdefault(self, key, default=None):
        if key not in self:
            self._changed()
        return super().setdefault(key, default)
