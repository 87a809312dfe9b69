"""The large-batch experiment: for a task, a small-batch SGD baseline and, at a >= 16x larger batch,
SGD, LARS and EXTRAP-SGD in each mode, over several seeds; a results table (mean +- std of the final
test metric) and plots, written with the exact commands under --out. `--family adaptive` runs the same
for AdamW (the baseline, small and large), LAMB, EXTRAP-AdamW and EXTRAP-LAMB.

    python python/experiment.py --task digits --small 32 --large 512 --epochs 30 --seeds 0 1 2
    python python/experiment.py --family adaptive --task transformer --small 16 --large 256 -- --lr 1e-3
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train  # noqa: E402
from plot import final_metrics, plot  # noqa: E402

CONFIGS = {  # name -> (batch: "small" or "large", harness arguments)
    "SGD small batch": ("small", ["--optimizer", "sgd"]),
    "SGD": ("large", ["--optimizer", "sgd"]),
    "LARS": ("large", ["--optimizer", "lars"]),
    "EXTRAP-SGD local": ("large", ["--optimizer", "extrap-sgd", "--mode", "local"]),
    "EXTRAP-SGD past": ("large", ["--optimizer", "extrap-sgd", "--mode", "past"]),
    "EXTRAP-SGD noise": ("large", ["--optimizer", "extrap-sgd", "--mode", "noise"]),
}
ADAPTIVE_CONFIGS = {  # the first two: the baseline at the small and the large batch (the gap)
    "AdamW small batch": ("small", ["--optimizer", "adamw"]),
    "AdamW": ("large", ["--optimizer", "adamw"]),
    "LAMB": ("large", ["--optimizer", "lamb"]),
    "EXTRAP-AdamW local": ("large", ["--optimizer", "extrap-adamw", "--mode", "local"]),
    "EXTRAP-AdamW past": ("large", ["--optimizer", "extrap-adamw", "--mode", "past"]),
    "EXTRAP-LAMB local": ("large", ["--optimizer", "extrap-lamb", "--mode", "local"]),
    "EXTRAP-LAMB past": ("large", ["--optimizer", "extrap-lamb", "--mode", "past"]),
}
FAMILIES = {"sgd": CONFIGS, "adaptive": ADAPTIVE_CONFIGS}


def default_out(task: str) -> Path:
    """Where an experiment writes unless told: untracked, and apart for each task."""
    return Path("out") / "experiments" / task


def commands(args) -> list[tuple[str, int, list[str]]]:
    out = []
    for name in args.configs:
        batch, extra = {**CONFIGS, **ADAPTIVE_CONFIGS}[name]
        size = args.small if batch == "small" else args.large
        for seed in args.seeds:
            argv = [
                "--task",
                args.task,
                "--batch-size",
                str(size),
                "--base-batch-size",
                str(args.small),
                "--epochs",
                str(args.epochs),
                "--seed",
                str(seed),
                "--out",
                str(Path(args.out) / "runs"),
                "--quiet",
                *extra,
                *args.extra,
            ]
            if args.gamma is not None and any(a.startswith("extrap-") for a in extra):
                argv += ["--gamma", str(args.gamma)]
            out.append((name, seed, argv))
    return out


def finished(argv: list[str]) -> dict | None:
    """The log of an earlier run with exactly these arguments (so an interrupted experiment resumes)."""
    args = train.parser().parse_args(argv)
    log = Path(args.out) / f"{args.label or train.label_of(args)}.json"
    if not log.is_file():
        return None
    result = json.loads(log.read_text())
    defaults = vars(train.parser().parse_args([]))  # for options added after the log was written
    same = lambda k, v: k in ("out", "quiet") or result["args"].get(k, defaults[k]) == v  # noqa: E731
    if not all(same(k, v) for k, v in vars(args).items()) or not result["history"]:
        return None
    print(f"  reusing {log}", flush=True)
    return result


def summarize(results: dict[str, list[dict]]) -> str:
    first = next(iter(results.values()))[0]
    better = "higher" if first["higher_is_better"] else "lower"
    lines = [
        f"| optimizer | batch | final {first['metric']} ({better} is better), mean ± std | "
        f"best epoch mean | seeds | diverged | seconds/run | gap closed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    finished = {name: final_metrics(runs) for name, runs in results.items()}  # diverged runs counted apart
    means = {name: statistics.mean(f) if f else math.nan for name, f in finished.items()}
    small_name, large_name = list(results)[:2]  # the baseline at the small and at the large batch
    small, large = means.get(small_name, math.nan), means.get(large_name, math.nan)
    for name, runs in results.items():
        pick = max if first["higher_is_better"] else min
        best = [
            pick(h["metric"] for h in r["history"] if math.isfinite(h["metric"]))
            for r in runs
            if any(math.isfinite(h["metric"]) for h in r["history"])
        ]
        mean = f"{means[name]:.4f}" if finished[name] else "-"
        std = f" ± {statistics.stdev(finished[name]):.4f}" if len(finished[name]) > 1 else ""
        lines.append(
            f"| {name} | {runs[0]['args']['batch_size']} | {mean}{std} | "
            f"{statistics.mean(best) if best else math.nan:.4f} | {len(runs)} | "
            f"{len(runs) - len(finished[name])} | "
            f"{statistics.mean(r['history'][-1]['seconds'] for r in runs):.1f} | "
            f"{_gap_closed(means[name], small, large)} |"
        )
    return "\n".join(lines)


def _gap_closed(value: float, small: float, large: float) -> str:
    """How much of the large-batch gap (the baseline at the large batch vs at the small one) a configuration
    closed: 0% is the large-batch baseline, 100% the small-batch metric, negative is worse than the former."""
    if not all(math.isfinite(v) for v in (value, small, large)) or small == large:
        return "-"
    return f"{round(100 * (value - large) / (small - large))}%"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="digits")
    p.add_argument("--small", type=int, default=32)
    p.add_argument("--large", type=int, default=512)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--gamma", type=float, default=None)
    p.add_argument("--family", choices=list(FAMILIES), default="sgd")
    p.add_argument(
        "--configs",
        nargs="+",
        default=None,
        choices=list(CONFIGS) + list(ADAPTIVE_CONFIGS),
        help="default: every configuration of --family, its baseline first",
    )
    p.add_argument(
        "--out",
        default=None,
        help="default out/experiments/<task> (untracked): committed results "
        "are written there only when asked, e.g. --out python/results/<task>",
    )
    p.add_argument("extra", nargs="*", help="more harness arguments after --, e.g. -- --lr 0.1")
    args = p.parse_args(argv)
    args.out = args.out or str(default_out(args.task) if args.family == "sgd" else default_out(args.task) / "adaptive")
    args.configs = args.configs or list(FAMILIES[args.family])
    results: dict[str, list[dict]] = {}
    ran = []
    for name, seed, argv_ in commands(args):
        print(f"[{name} seed {seed}] python python/train.py {shlex.join(argv_)}", flush=True)
        results.setdefault(name, []).append(finished(argv_) or train.run(train.parser().parse_args(argv_)))
        ran.append("python python/train.py " + shlex.join(argv_))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = summarize(results)
    title = (
        f"{args.task}: batch {args.small} vs {args.large} ({args.large // args.small}x), "
        f"{args.epochs} epochs, seeds {args.seeds}"
    )
    plot(results, out / "curves.png", title)
    invocation = "python python/experiment.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    (out / "results.md").write_text(
        f"# {title}\n\n{table}\n\nReproduce: `{invocation}`\n\nRuns:\n\n" + "\n".join(f"    {c}" for c in ran) + "\n"
    )
    (out / "results.json").write_text(json.dumps({k: [r["history"] for r in v] for k, v in results.items()}))
    print(table)
    print(f"wrote {out / 'results.md'} and {out / 'curves.png'}")


if __name__ == "__main__":
    main()
