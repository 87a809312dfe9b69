"""Multi-process test workers (torch.distributed on CPU, gloo): a free port, and a spawn that fails
instead of hanging when a worker raises or outlives its time."""
from __future__ import annotations

import socket
import time

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
