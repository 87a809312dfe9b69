"""The main job (`make demo`): what the package gives, in two tables and under a minute on a 2-core CPU.

1. Measured here, now: the optimizer step on ResNet-50's parameter list (25.6M elements, fp32 and bf16) of
   ExtrapSGD and ExtrapAdamW against torch's fused SGD and AdamW, time per step and the bytes of optimizer
   state per parameter element, counted from the state tensors each optimizer holds. Every row is first
   checked against the same algorithm on the reference backend (benchmarks/validate.py): one that computes
   wrong is shown as such, not timed.
2. From the committed experiment (python/results/, not re-run here: each run takes minutes): the
   large-batch result on the task where the effect is largest and consistent, the char-LSTM at 16x the
   batch, over its three seeds, with the command that reproduces it.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # (the benchmarks package, beside this folder)
import extrap_kernels as ek  # noqa: E402
from benchmarks import bench, validate  # noqa: E402
from benchmarks.contenders import contenders, state_bytes_per_element  # noqa: E402
from benchmarks.workloads import resnet50  # noqa: E402

# (contender, mode) -> the label the table gives it, in table order
ROWS = {
    ("torch-sgd-fused", "sgd"): "torch SGD (fused=True)",
    ("ours", "past"): "ExtrapSGD past",
    ("ours", "local"): "ExtrapSGD local",
    ("torch-adamw-fused", "adamw"): "torch AdamW (fused=True)",
    ("ours", "adam-past"): "ExtrapAdamW past",
    ("ours", "adam-past-lean"): "ExtrapAdamW past, lean",
}
RESULTS = ROOT / "python" / "results" / "char-lstm"


def step_table(device: str, repeats: int = 10, shapes=None) -> str:
    """Table 1: each row's median step time (timed round-robin with the others of its dtype), its ratio to
    torch's fused step of its family, and its state bytes per element."""
    backend = ek.backends.resolve("auto", torch.device(device)).name
    chosen = {}
    for c in contenders(device):
        key = ("ours" if c.name == f"ours-{backend}" else c.name, c.mode)
        if key in ROWS and key not in chosen:
            chosen[key] = c
    gen = torch.Generator().manual_seed(0)
    name, shapes = ("ResNet-50's parameters", resnet50().shapes) if shapes is None else ("the parameters", shapes)
    lines = [
        f"Optimizer step on {name} ({sum(torch.Size(s).numel() for s in shapes) / 1e6:.1f}M elements), "
        f"{device}, backend {backend}, {torch.get_num_threads()} threads",
        f"{'optimizer':26s} {'dtype':9s} {'ms/step':>8s} {'vs torch fused':>14s} {'state B/el':>10s}",
    ]
    notes = []
    for dtype in (torch.float32, torch.bfloat16):
        steps, memory, invalid = {}, {}, {}
        for key, c in chosen.items():
            if reason := validate.checked(c, device, dtype):
                invalid[key] = reason
                continue
            params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(device=device, dtype=dtype)) for s in shapes]
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen).mul_(1e-3).to(device=device, dtype=dtype)
            steps[key] = c.make(params)
            steps[key]()
            memory[key] = state_bytes_per_element(steps[key], params)
        seconds = bench.round_robin(steps, device, repeats, budget=2.0)
        for key, label in ROWS.items():
            if key in invalid:
                lines.append(f"{label:26s} {str(dtype)[6:]:9s} INVALID: computes wrong, not timed")
                notes.append(f"{label}, {str(dtype)[6:]}: {invalid[key]}")
                continue
            baseline = seconds.get(("torch-adamw-fused", "adamw") if "adam" in key[1] else ("torch-sgd-fused", "sgd"))
            ratio = f"{seconds[key] / baseline:.2f}x" if baseline else "-"
            lines.append(f"{label:26s} {str(dtype)[6:]:9s} {seconds[key] * 1e3:8.1f} {ratio:>14s} {memory[key]:10.0f}")
    lines.append("state B/el: bytes of optimizer state per parameter element, the parameter itself not counted")
    lines.append("lean: bf16 moments (exp_avg_dtype) and no fp32 master (master_weights=False), rounded stochastically")
    lines += notes
    if any("torch SGD" in note for note in notes):
        lines.append(
            "(torch's fused CPU SGD leaves 16-bit elements unchanged on this torch, pytorch #191763: the "
            "working fused 16-bit SGD here is ours)"
        )
    return "\n".join(lines)


def _finals(path: Path, config: str) -> list[float]:
    """The final metric of each seed's run of `config` in a committed results.json."""
    return [run[-1]["metric"] for run in json.loads(path.read_text())[config]]


def results_table() -> str:
    """Table 2: the char-LSTM's final validation bits/char per seed (lower is better) and the share of the
    large-batch gap each optimizer closes, read from the committed runs."""
    rows = [
        ("SGD, batch 16", _finals(RESULTS / "results.json", "SGD small batch")),
        ("SGD, batch 256", _finals(RESULTS / "results.json", "SGD")),
        ("LARS, batch 256", _finals(RESULTS / "results.json", "LARS")),
        ("ExtrapSGD past, gamma 0.1", _finals(RESULTS / "gamma-0.1" / "results.json", "EXTRAP-SGD past")),
    ]
    small, large = statistics.mean(rows[0][1]), statistics.mean(rows[1][1])
    lines = [
        "Large batch, committed runs (python/results/char-lstm): 1-layer LSTM on pydoc text, batch 16 vs 256,",
        "linear lr scaling with warm-up, 20 epochs; final validation bits/char, lower is better",
        f"{'optimizer':26s} {'seed 0':>7s} {'seed 1':>7s} {'seed 2':>7s} {'mean':>7s} {'gap closed':>10s}",
    ]
    for label, values in rows:
        mean = statistics.mean(values)
        gap = round((mean - large) / (small - large), 4) + 0.0  # (+ 0.0: no "-0%")
        lines.append(f"{label:26s} " + " ".join(f"{v:7.4f}" for v in values) + f" {mean:7.4f} {gap:10.0%}")
    better = sum(e < s for e, s in zip(rows[3][1], rows[1][1]))
    lines += [
        f"ExtrapSGD past is below batch-256 SGD on {better} of {len(rows[1][1])} seeds; the rest of the gap stays "
        "open, and nothing else tried closed more (python/results/README.md).",
        "Reproduce: python python/experiment.py --task char-lstm --small 16 --large 256 --epochs 20 --seeds 0 1 2 "
        "--gamma 0.1 --configs 'EXTRAP-SGD past' --out python/results/char-lstm/gamma-0.1",
    ]
    return "\n".join(lines)


def main(argv=None):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"extrap-kernels {ek.__version__}, torch {torch.__version__}\n")
    print(step_table(device))
    print()
    print(results_table())


if __name__ == "__main__":
    main()
