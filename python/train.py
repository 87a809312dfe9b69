"""The training harness: one task, one optimizer, one batch size, one seed per call.

    python python/train.py --task digits --optimizer extrap-sgd --mode local --batch-size 512 --epochs 30
    torchrun --nproc-per-node 2 python/train.py ...      # data-parallel (DDP; gloo on CPU, nccl on GPU)
    torchrun --nproc-per-node 2 python/train.py --parallel fsdp2 ...   # sharded (FSDP2 fully_shard)

The learning rate follows the linear scaling rule, lr = --lr * batch / --base-batch-size, reached by a
linear warm-up from --lr over --warmup-epochs, then decays (cosine, step at 50%/75%, or constant).
EXTRAP-SGD's gamma defaults to the current lr. Writes <out>/<label>.json (arguments and per-epoch log)
and <out>/<label>.csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tasks import TASKS, evaluate  # noqa: E402

import extrap_kernels as ek  # noqa: E402

OPTIMIZERS = ("sgd", "lars", "extrap-sgd", "fused-sgd", "adamw", "lamb", "extrap-adamw", "extrap-lamb")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(TASKS), default="digits")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd")
    p.add_argument("--mode", choices=("local", "past", "noise"), default="local", help="extrap-* only")
    p.add_argument("--gamma", type=float, default=None, help="extrapolation rate (default: the current lr)")
    p.add_argument("--noise-std", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=32, help="global batch (all workers together)")
    p.add_argument("--base-batch-size", type=int, default=32, help="the batch --lr is meant for")
    p.add_argument("--lr", type=float, default=0.05, help="learning rate at --base-batch-size")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--nesterov", action="store_true")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--trust-coefficient", type=float, default=0.02, help="lars: LARC-clipped trust ratio")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--warmup-epochs", type=float, default=None, help="default: 5 when lr is scaled up, else 0")
    p.add_argument("--schedule", choices=("cosine", "step", "constant"), default="cosine")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto", help="extrap_kernels backend (every optimizer but sgd and adamw)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--parallel",
        choices=("ddp", "fsdp2"),
        default="ddp",
        help="with several workers: DDP (replicated), or FSDP2 (parameters and state sharded)",
    )
    p.add_argument("--data-dir", default=None, help="cifar10: the cifar-10-batches-py folder")
    p.add_argument("--out", default="out/runs")
    p.add_argument("--label", default=None, help="file name of the logs (default: from the arguments)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def build_optimizer(args, params):
    if args.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=args.lr, momentum=args.momentum, nesterov=args.nesterov, weight_decay=args.weight_decay
        )
    if args.optimizer == "fused-sgd":
        return ek.FusedSGD(
            params,
            lr=args.lr,
            momentum=args.momentum,
            nesterov=args.nesterov,
            weight_decay=args.weight_decay,
            backend=args.backend,
        )
    common = dict(
        lr=args.lr, momentum=args.momentum, nesterov=args.nesterov, weight_decay=args.weight_decay, backend=args.backend
    )
    if args.optimizer == "lars":  # LARS = ExtrapSGD without extrapolation, trust ratio per tensor
        return ek.ExtrapSGD(
            params, gamma=0.0, lars=True, lars_clip=True, trust_coefficient=args.trust_coefficient, **common
        )
    if args.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    if args.optimizer == "lamb":  # Apex FusedLAMB's defaults (max_grad_norm 1)
        return ek.FusedLAMB(params, lr=args.lr, weight_decay=args.weight_decay, backend=args.backend)
    extrap = dict(
        lr=args.lr,
        weight_decay=args.weight_decay,
        gamma=args.gamma,
        mode=args.mode,
        noise_std=args.noise_std,
        seed=args.seed,
        backend=args.backend,
    )
    if args.optimizer == "extrap-adamw":
        return ek.ExtrapAdamW(params, **extrap)
    if args.optimizer == "extrap-lamb":
        return ek.ExtrapLAMB(params, **extrap)
    return ek.ExtrapSGD(params, gamma=args.gamma, mode=args.mode, noise_std=args.noise_std, seed=args.seed, **common)


def wrap(model: torch.nn.Module, parallel: str, device: torch.device) -> torch.nn.Module:
    """DDP, or FSDP2 with the whole model as one sharded group (FSDP2 has no no_sync: mode "local" there
    extrapolates with the reduce-scattered gradient, see README)."""
    if parallel == "ddp":
        return torch.nn.parallel.DistributedDataParallel(model)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    return fully_shard(model, mesh=init_device_mesh(device.type, (dist.get_world_size(),)))


def lr_factor(args, iteration: int, per_epoch: int) -> float:
    """Multiplier of --lr at `iteration`: linear warm-up to batch/base, then the decay schedule."""
    peak = args.batch_size / args.base_batch_size
    warmup = args.warmup_epochs if args.warmup_epochs is not None else (5.0 if peak > 1 else 0.0)
    epoch = iteration / per_epoch
    if epoch < warmup:
        return 1.0 + (peak - 1.0) * epoch / warmup
    progress = (epoch - warmup) / max(args.epochs - warmup, 1e-9)
    if args.schedule == "cosine":
        return peak * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    if args.schedule == "step":
        return peak * (0.1 ** (int(progress >= 0.5) + int(progress >= 0.75)))
    return peak


def label_of(args) -> str:
    extrap = args.optimizer.startswith("extrap-")
    name = args.optimizer + (f"-{args.mode}" if extrap else "")
    gamma = f"-g{args.gamma:g}" if args.gamma is not None and extrap else ""
    return f"{args.task}-{name}{gamma}-b{args.batch_size}-s{args.seed}"


def run(args) -> dict:
    """Trains; returns {"args", "history"} (also written as JSON and CSV on rank 0)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = torch.device(args.device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} does not split over {world} workers")
    task = TASKS[args.task](args)
    torch.manual_seed(args.seed)
    model = task.model().to(device)
    net = wrap(model, args.parallel, device) if world > 1 else model
    optimizer = build_optimizer(args, model.parameters())
    per_epoch = len(task.train[1]) // args.batch_size
    if per_epoch == 0:
        raise SystemExit(f"--batch-size {args.batch_size} exceeds the {len(task.train[1])} training examples")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(args, it, per_epoch))
    x_all, y_all = task.train
    local = args.batch_size // world
    history, start = [], time.perf_counter()
    bar = tqdm(total=args.epochs * per_epoch, disable=args.quiet or rank != 0, desc=label_of(args), unit="it")
    for epoch in range(args.epochs):
        order = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(args.seed * 10_000 + epoch))
        losses = []
        for i in range(per_epoch):
            idx = order[i * args.batch_size + rank * local : i * args.batch_size + (rank + 1) * local]
            xb, yb = x_all[idx].to(device), y_all[idx].to(device)
            loss = ek.train_step(net, optimizer, lambda: task.loss(net(xb), yb))
            scheduler.step()
            losses.append(loss)
            bar.update()
        train_loss = float(torch.stack(losses).mean())
        if not math.isfinite(train_loss):
            history.append(
                dict(
                    epoch=epoch + 1,
                    train_loss=train_loss,
                    metric=float("nan"),
                    seconds=time.perf_counter() - start,
                    lr=scheduler.get_last_lr()[0],
                )
            )
            break  # diverged
        history.append(
            dict(
                epoch=epoch + 1,
                train_loss=train_loss,
                metric=evaluate(task, model, device),
                seconds=time.perf_counter() - start,
                lr=scheduler.get_last_lr()[0],
            )
        )
        bar.set_postfix(loss=f"{train_loss:.3f}", metric=f"{history[-1]['metric']:.4f}")
    bar.close()
    result = dict(
        args=vars(args),
        label=args.label or label_of(args),
        metric=task.metric,
        higher_is_better=task.higher_is_better,
        world_size=world,
        history=history,
    )
    if rank == 0 and args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{result['label']}.json").write_text(json.dumps(result, indent=1))
        with open(out / f"{result['label']}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(history)
    return result


if __name__ == "__main__":
    run(parser().parse_args())
