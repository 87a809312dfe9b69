"""One command for a lent GPU: build the CUDA extension there, run the GPU tests and the whole suite, the
benchmarks (the full table with the overhead workloads) and one profile of the hot kernels (ncu, where it
is installed), and put everything to commit into one folder: the results JSON/TXT/PNG named by device,
each step's log and a summary.

    python -m benchmarks.gpu_report --out "$OUT"                      # on the GPU machine, everything
    python -m benchmarks.gpu_report --out "$OUT" --steps build,tests  # a part (a device call runs 10 min)
    python -m benchmarks.gpu_report --dry-run                         # anywhere: what it would run

A device call runs at most 10 minutes and a machine stays warm 30 s after one: where everything does not
fit one call, run `--steps build,tests` and then `--steps build,bench,profile` (the second build reuses
ninja's objects when the machine is still warm).

`make gpu-report` runs it (GPU_REPORT_ARGS for the arguments); CI runs the dry run.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

PY = sys.executable
# The hot kernels, profiled once: one-phase past and the plain fused SGD step on 64M fp32 and bf16.
PROFILE = """
import torch, extrap_kernels as ek
for dtype in (torch.float32, torch.bfloat16):
    p = torch.nn.Parameter(torch.randn(64 * 2**20, device='cuda', dtype=dtype))
    p.grad = torch.randn_like(p)
    for opt in (ek.ExtrapSGD([p], lr=0.01, momentum=0.9), ek.FusedSGD([p], lr=0.01, momentum=0.9)):
        opt.step(); opt.step()
    torch.cuda.synchronize()
"""


def device_slug() -> str:
    import torch

    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no-gpu"
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def steps(out: Path) -> dict[str, tuple[list[str] | None, int, str]]:
    """name -> (command, seconds allowed, what it is for); a None command is skipped with its reason."""
    slug = device_slug() if not os.environ.get("GPU_REPORT_DRY") else "<device>"
    ncu = shutil.which("ncu")
    return {
        "build": ([PY, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", "."], 600,
                  "the CUDA extension (setup.py builds csrc/cuda where torch has CUDA and a GPU is visible)"),
        "tests": ([PY, "-m", "pytest", "tests", "-q", "-rs", "-p", "no:cacheprovider"], 900,
                  "the whole suite, tests/test_gpu.py included (hypothesis profile 'dev': 10 examples each)"),
        "bench": ([PY, "-m", "benchmarks.bench", "--out", str(out / f"{slug}.json")], 900,
                  "the full benchmark table with the overhead workloads: JSON, TXT (this log) and PNG"),
        "profile": (([ncu, "--kernel-name", "regex:phase_kernel", "--launch-count", "4", "--section",
                      "SpeedOfLight", "--section", "MemoryWorkloadAnalysis", PY, "-c", PROFILE], 600,
                     "Nsight Compute on the hot kernels (past and fused SGD, 64M fp32 and bf16)")
                    if ncu else (None, 0, "ncu is not installed here: no kernel profile")),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out/gpu-report", help="the folder for everything to commit")
    parser.add_argument("--steps", default="build,tests,bench,profile")
    parser.add_argument("--dry-run", action="store_true", help="say what would run, run nothing")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.dry_run:
        os.environ["GPU_REPORT_DRY"] = "1"
    plan = steps(out)
    chosen = args.steps.split(",")
    unknown = [s for s in chosen if s not in plan]
    if unknown:
        parser.error(f"unknown steps {unknown}; choose from {list(plan)}")
    if args.dry_run:
        for name in chosen:
            command, seconds, why = plan[name]
            shown = shlex.join(c if "\n" not in c else "<profile script>" for c in command) if command else "(skipped)"
            print(f"[{name}] {why}\n    {shown}" + (f"  (at most {seconds} s)" if command else ""))
        print(f"results and logs would go to {out}/")
        return 0
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device here: run this on the lent GPU machine (or --dry-run)", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HYPOTHESIS_PROFILE": os.environ.get("HYPOTHESIS_PROFILE", "dev")}
    summary = [f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}, CUDA {torch.version.cuda}"]
    failed = False
    for name in chosen:
        command, seconds, why = plan[name]
        if command is None:
            summary.append(f"{name}: skipped ({why})")
            continue
        log = out / (f"{device_slug()}.txt" if name == "bench" else f"{name}.log")
        start = time.monotonic()
        with open(log, "w") as sink:
            try:
                rc = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, env=env, timeout=seconds).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        summary.append(f"{name}: exit {rc} in {time.monotonic() - start:.0f} s; {tail[0][:200]}")
        print(summary[-1], flush=True)
        failed |= rc != 0
    (out / "summary.txt").write_text("\n".join(summary) + "\n")
    print("\n".join(summary))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
