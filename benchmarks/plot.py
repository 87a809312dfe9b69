"""The plot of a results file: fraction of the bandwidth floor against parameter count, one line per
contender and mode, one panel per dtype; and, where the file has the overhead workloads, the host time
per step against the tensor count.   python -m benchmarks.plot benchmarks/results/X.json"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot(path: Path) -> Path | None:
    """Writes the PNG beside the JSON and returns its path; None where the file has no measured row (a run
    whose --seconds left it no workload), so that the run still ends with its table and JSON."""
    data = json.loads(Path(path).read_text())
    overhead = [r for r in data["rows"] if r["error"] is None and r.get("overhead")]
    rows = [r for r in data["rows"] if r["error"] is None and not r.get("overhead")]
    dtypes = sorted({r["dtype"] for r in rows}, reverse=True)
    panels = len(dtypes) + bool(overhead)
    if panels == 0:
        return None
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 5), squeeze=False)
    if overhead:
        _host_time(axes[0][-1], overhead, data["meta"]["device"])
    for ax, dtype in zip(axes[0], dtypes):
        lines = sorted({(r["contender"], r["mode"]) for r in rows if r["dtype"] == dtype})
        for contender, mode in lines:
            points = sorted(
                (r["numel"], r["floor_fraction"], r["workload"])
                for r in rows
                if r["dtype"] == dtype and r["contender"] == contender and r["mode"] == mode
            )
            flat = [(n, f) for n, f, w in points if w.startswith("flat")]
            style = "-" if contender.startswith("ours") else "--"
            (line,) = ax.plot(
                [n for n, _ in flat], [f for _, f in flat], style, marker="o", label=f"{contender} ({mode})"
            )
            models = [(n, f) for n, f, w in points if not w.startswith("flat")]
            ax.scatter([n for n, _ in models], [f for _, f in models], marker="*", s=90, color=line.get_color())
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("parameters (lines: flat sets; stars: ResNet-50, GPT-2 small)")
        ax.set_title(f"{data['meta']['device']}\n{dtype} params, momentum 0.9")
        ax.grid(True, which="both", alpha=0.3)
    if dtypes:
        axes[0][0].set_ylabel("fraction of the SPEC bandwidth floor (1 = at the floor)")
        axes[0][len(dtypes) - 1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    out = Path(path).with_suffix(".png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _host_time(ax, rows: list[dict], device: str) -> None:
    """Host time per step against the tensor count (one-element tensors and the tiny model lists)."""
    for contender, mode in sorted({(r["contender"], r["mode"]) for r in rows}):
        points = sorted(
            (r["tensors"], r["median_ms"])
            for r in rows
            if r["contender"] == contender and r["mode"] == mode and r["workload"].startswith("tensors")
        )
        style = "-" if contender.startswith("ours") else "--"
        ax.plot([n for n, _ in points], [t for _, t in points], style, marker="o", label=f"{contender} ({mode})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("one-element tensors")
    ax.set_ylabel("host time per step (ms)")
    ax.set_title(f"{device}\nhost time per step (tiny tensors)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(plot(Path(arg)))
