"""Multi-process test workers (torch.distributed on CPU, gloo): a free port, a spawn that fails instead
of hanging when a worker raises or outlives its time, and the small model and per-worker batches the
data-parallel tests train."""

from __future__ import annotations

import gc
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shut_down() -> None:
    """Ends a worker's process group. The training loop's cyclic garbage (autograd graphs, the comm
    hooks' futures) is collected first: collected later, at a moment the allocator picks, it released
    gloo objects after their process group was gone, and the worker aborted ("terminate called without
    an active exception") in about one run of five."""
    gc.collect()
    dist.destroy_process_group()


def spawn(worker, args: tuple, nprocs: int, timeout_s: float) -> None:
    """Runs worker(rank, *args) in nprocs processes; re-raises a worker's error, and kills them all if
    they are still running after timeout_s."""
    ctx = mp.start_processes(worker, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            raise TimeoutError(f"workers still running after {timeout_s} s")


def mlp(hidden: int) -> torch.nn.Module:
    """5 -> hidden -> 3, the same initial weights in every process."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 3))


def worker_batch(rank: int, iteration: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Worker `rank`'s classification batch at `iteration`, reproducible in any process."""
    gen = torch.Generator().manual_seed(1000 * iteration + rank)
    return torch.randn(size, 5, generator=gen), torch.randint(0, 3, (size,), generator=gen)
