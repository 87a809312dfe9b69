"""Compares training runs from their JSON logs (python/train.py): train loss and test metric against epoch
and against wall time, averaged over the seeds of each configuration.

    python python/plot.py python/results/char-lstm/runs/*.json --out curves.png
"""
from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot(results: dict[str, list[dict]], path: Path, title: str) -> None:
    """Train loss and test metric against epoch and against wall time, mean over seeds."""
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
    for name, runs in results.items():
        epochs = min(len(r["history"]) for r in runs)
        mean = lambda key: [statistics.mean(r["history"][e][key] for r in runs) for e in range(epochs)]  # noqa: E731
        x = list(range(1, epochs + 1))
        style = "--" if "small" in name else "-"
        axes[0].plot(x, mean("train_loss"), style, label=name)
        axes[1].plot(x, mean("metric"), style, label=name)
        axes[2].plot(mean("seconds"), mean("metric"), style, label=name)
    metric = next(iter(results.values()))[0]["metric"]
    for ax, (xl, yl) in zip(axes, [("epoch", "train loss"), ("epoch", metric), ("wall seconds", metric)]):
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    low, high = metric_range(results)
    for ax in axes[1:]:  # a diverging run would flatten every other curve: it leaves the frame instead
        ax.set_ylim(low, high)
    axes[1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def metric_range(results: dict[str, list[dict]]) -> tuple[float, float]:
    """Axis limits of the test metric spanning every seed's curve of the runs that ended within 50% of the
    best final value (runs that diverged or blew up are drawn, but may leave the frame)."""
    higher = next(iter(results.values()))[0]["higher_is_better"]
    finals = {name: [r["history"][-1]["metric"] for r in runs] for name, runs in results.items()}
    finite = [f for fs in finals.values() for f in fs if math.isfinite(f)]
    best = max(finite) if higher else min(finite)
    near = (lambda f: f >= best / 1.5) if higher else (lambda f: f <= best * 1.5)
    kept = [h["metric"] for name, runs in results.items() for r in runs for h in r["history"]
            if all(math.isfinite(f) and near(f) for f in finals[name]) and math.isfinite(h["metric"])]
    low, high = min(kept), max(kept)
    margin = 0.05 * (high - low or 1.0)
    return low - margin, high + margin


def group_by_config(logs: list[dict]) -> dict[str, list[dict]]:
    """Runs whose labels differ only in the seed (the "-s<seed>" suffix) are one configuration."""
    groups: dict[str, list[dict]] = {}
    for log in logs:
        groups.setdefault(re.sub(r"-s\d+$", "", log["label"]), []).append(log)
    return groups


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logs", nargs="+", help="JSON logs written by python/train.py")
    p.add_argument("--out", default="curves.png")
    p.add_argument("--title", default="")
    args = p.parse_args(argv)
    logs = [json.loads(Path(f).read_text()) for f in args.logs]
    plot(group_by_config(logs), Path(args.out), args.title)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
