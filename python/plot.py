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
    frame = metric_range(results)
    for ax in axes[1:]:  # a diverging run would flatten every other curve: it leaves the frame instead
        if frame is not None:
            ax.set_ylim(*frame)
    axes[1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def final_metrics(runs: list[dict]) -> list[float]:
    """The last test metric of each run that finished (a diverged run ends with nan and is left out)."""
    return [r["history"][-1]["metric"] for r in runs if math.isfinite(r["history"][-1]["metric"])]


def metric_range(results: dict[str, list[dict]]) -> tuple[float, float] | None:
    """Axis limits of the test metric spanning the curves of the configurations whose mean final value is
    within 50% of the best one (configurations that diverged or blew up are drawn but may leave the frame).
    None (matplotlib's own limits) when no run has a finite metric."""
    higher = next(iter(results.values()))[0]["higher_is_better"]
    finals = {name: final_metrics(runs) for name, runs in results.items()}
    means = {name: statistics.mean(fs) for name, fs in finals.items() if fs and len(fs) == len(results[name])}
    curves = {
        name: [h["metric"] for r in runs for h in r["history"] if math.isfinite(h["metric"])]
        for name, runs in results.items()
    }
    if not any(curves.values()):
        return None
    kept = list(curves)
    if means:
        best = max(means.values()) if higher else min(means.values())
        near = (lambda m: m >= best / 1.5) if higher else (lambda m: m <= best * 1.5)
        kept = [name for name, m in means.items() if near(m)]
    values = [v for name in kept for v in curves[name]]
    low, high = min(values), max(values)
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
