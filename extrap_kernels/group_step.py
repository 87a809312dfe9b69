"""Apex's step count, for the drop-ins FusedAdam and FusedLAMB (SPEC "Apex drop-in semantics"): one count
per param group, `group["step"]`, advanced by every step() whether or not each parameter had a gradient,
and read by the bias corrections of every parameter of the group. (The Extrap* classes count per
parameter, as torch.optim does.)

The kernels read, and advance, per-parameter counts (state["step"]). GroupSteps keeps them equal to the
group's count before each launch, with no per-parameter host work in a step where nothing lags:
- a parameter's count starts at its group's when its state is created: a parameter whose first gradient
  comes late, or one loaded from an Apex checkpoint, which holds no per-parameter count;
- a group that stepped while one of its parameters had no gradient lags: before its next launch its
  parameters' counts are set to the group's.
`group["step"]` is a number, as Apex's (a skipped AMP step, found_inf set, is read on the host and not
counted), or with capturable=True a float32 device tensor, advanced on the device (no host sync).
"""

from __future__ import annotations

import torch
from torch import Tensor


def new_count(group: dict, device: torch.device) -> Tensor:
    """A parameter's count as its state is created: its group's so far."""
    count = group.get("step", 0)
    if torch.is_tensor(count):
        return count.detach().to(device=device, dtype=torch.float32, copy=True).reshape(())
    return torch.tensor(float(count), dtype=torch.float32, device=device)


def loaded_count(group: dict, state: dict, capturable: bool):
    """The group's count after a checkpoint loads: Apex's `group["step"]` where the checkpoint has one,
    else (a torch.optim checkpoint) the largest per-parameter count; a number, or with `capturable` a
    device tensor on the group's first parameter's device."""
    count = group.get("step")
    if count is None:
        counts = [float(state[p]["step"]) for p in group["params"] if "step" in state.get(p, {})]
        count = max(counts, default=0.0)
    if capturable:
        device = group["params"][0].device if group["params"] else None
        return torch.as_tensor(count, dtype=torch.float32).to(device).reshape(()).clone()
    return int(float(count))


class GroupSteps:
    """Which groups lag (their parameters' counts are behind the group's), by position in param_groups."""

    def __init__(self) -> None:
        self.lagging: set[int] = set()

    def lag_all(self, groups: list[dict]) -> None:
        """After a checkpoint loads: every group's counts are set to the group's before its next launch."""
        self.lagging = set(range(len(groups)))

    def before(self, opt, found_inf: Tensor | None, capturable: bool) -> bool:
        """Brings the lagging groups' counts to their group's; returns whether this step is skipped
        (found_inf read on the host; a capturable count is advanced on the device instead). A count of the
        other kind (the option switched, a checkpoint) is converted first."""
        for number, group in enumerate(opt.param_groups):
            if group["params"] and torch.is_tensor(group.get("step")) != capturable:
                group["step"] = loaded_count(group, opt.state, capturable)
                self.lagging.add(number)
        for number in sorted(self.lagging):
            if number >= len(opt.param_groups):
                continue
            group = opt.param_groups[number]
            count = group.get("step", 0)
            for p in group["params"]:
                step = opt.state[p].get("step") if p in opt.state else None
                if step is not None:
                    step.copy_(count) if torch.is_tensor(count) else step.fill_(float(count))
        self.lagging.clear()
        return not capturable and found_inf is not None and bool(found_inf.item())

    def after(self, opt, partial_groups: frozenset[int], skipped: bool, found_inf: Tensor | None) -> None:
        """Advances every non-empty group's count, as Apex's step() does; the groups stepped with a parameter
        that had no gradient (`partial_groups`) lag from now on."""
        for number, group in enumerate(opt.param_groups):
            if not group["params"]:
                continue
            count = group.get("step", 0)
            if torch.is_tensor(count):
                count.add_(1.0 if found_inf is None else found_inf.to(count.device).reshape(()).eq(0).float())
            elif not skipped:
                group["step"] = count + 1
            if number in partial_groups:
                self.lagging.add(number)
