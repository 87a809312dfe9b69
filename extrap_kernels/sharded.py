"""Parameters sharded by FSDP2 (`torch.distributed.fsdp.fully_shard`): DTensors whose local shards the
optimizer steps on.

Every phase of SPEC is elementwise, so each rank runs the ordinary kernels on its local shard of the
parameter, gradient, anchor and momentum. The state is created as DTensors like the parameters (what
torch.optim does, so sharded checkpoints keep working) and only their local tensors reach the kernels.
Two things are not elementwise:
- LARS needs whole-tensor norms: the local squared norms are summed over the mesh dimension the tensor
  is sharded on (one all-reduce per bucket).
- mode "noise" keys its noise by element index; a shard would repeat its neighbours' noise, so sharded
  parameters refuse it.
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor

try:
    from torch.distributed.tensor import DTensor, Replicate, Shard
except ImportError:  # torch built without distributed
    DTensor = Replicate = Shard = None


def is_dtensor(t: Tensor | None) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def local(t: Tensor) -> Tensor:
    """The tensor the kernels write: a DTensor's local shard (same storage), else the tensor itself."""
    return t.to_local() if is_dtensor(t) else t


def as_real(t: Tensor) -> Tensor:
    """A complex tensor's real view (same storage: every phase is elementwise, as torch.optim treats
    complex parameters); any other tensor itself."""
    return torch.view_as_real(t) if t.is_complex() else t


def kernel_view(t: Tensor) -> Tensor:
    """The tensor the kernels write: the real view of a DTensor's local shard or of the tensor itself."""
    return as_real(local(t))


def shard_group(params: list[Tensor], names: list[str]):
    """The process group over which whole-tensor norms of these DTensors are summed: the group of the one
    mesh dimension they are sharded on (None when no tensor is sharded). All must share mesh and layout."""
    sharded = [(p, n) for p, n in zip(params, names) if is_dtensor(p)]
    if not sharded:
        return None
    if len(sharded) != len(params):
        raise RuntimeError(f"{names[0]}: DTensor and plain parameters in one group; put them in separate param groups")
    first, first_name = sharded[0]
    for p, name in sharded:
        if p.device_mesh != first.device_mesh or p.placements != first.placements:
            raise RuntimeError(
                f"{name}: LARS needs the parameters of one group on one device mesh with one "
                f"placement; {first_name} has {first.placements}, this one {p.placements}"
            )
        for placement in p.placements:
            if not isinstance(placement, (Shard, Replicate)):
                raise RuntimeError(f"{name}: placement {placement} is not supported (Shard or Replicate)")
    dims = [d for d, placement in enumerate(first.placements) if isinstance(placement, Shard)]
    if len(dims) > 1:
        raise RuntimeError(f"{first_name}: LARS on a tensor sharded over {len(dims)} mesh dimensions is not supported")
    return first.device_mesh.get_group(dims[0]) if dims else None


def sharding_wrapper() -> str | None:
    """The optimizer wrapper building the optimizer now being constructed over one rank's shard of the
    parameters (torch's ZeroRedundancyOptimizer builds one per rank), found on the call stack; else None.
    Mode "local" cannot run under one: each rank would extrapolate only its shard."""
    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        kind = type(owner)
        if kind.__name__ == "ZeroRedundancyOptimizer" and kind.__module__.startswith("torch.distributed.optim"):
            return kind.__name__
        frame = frame.f_back
    return None
