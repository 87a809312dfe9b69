"""One command for a lent GPU, sized for its short lease: build the CUDA extension there, run the GPU tests,
the benchmarks (the issue's targets first, then the rest of the table), one profile of the hot kernels (ncu,
where it can read the counters) and, in the time left, the rest of the suite (which CI runs anyway), all
inside one deadline, and put everything to commit into one folder: the results JSON/TXT/PNG named by device,
each step's log and a summary, the summary rewritten after every step so that a call cut short still brings
back what was done.

    python -m benchmarks.gpu_report --out "$OUT" --seconds 540   # on the GPU machine, in one device call
    python -m benchmarks.gpu_report --out "$OUT" --steps build,bench  # a part
    python -m benchmarks.gpu_report --dry-run                    # anywhere: what it would run

A session is lent 15 minutes of device time, the machine's start (a minute or two) included, and a call runs
at most 10 minutes: one call of `--seconds 540` under a `timeout_s` of 590 is the plan. Each step runs at
most its own cap and never past the deadline; the benchmark is told the time left, so it ends with a table
of the workloads it reached rather than being cut off. At most 8 files come back from a call: this writes 8.

The build is the longest step (229 s on the first H200 call, one architecture, 16 cores): a session that can
builds the extension here against the image's versions (Python 3.12, torch 2.11.0+cu130, sm_90: `setup.py
build_ext --inplace` with EXTRAP_FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 in a Python 3.12 venv of that torch),
strips its debug info (`strip --strip-debug`, 58 MB to 11 MB) and carries extrap_kernels/_C.cpython-312-*.so;
the report then skips the build. The benchmark runs before the GPU tests: its figures are the issue's targets.

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


# The benchmark's workloads in the order they are worth device time: the targets first (the one-phase
# step at 64M against the floor, launches per step on ResNet-50 and GPT-2, host time on the overhead sets),
# then the rest of the table.
BENCH_ORDER = (
    "flat-64M,resnet50,gpt2-small,tensors-161,resnet50-tiny,gpt2-small-tiny,flat-256M,flat-1G,"
    "tensors-1000,flat-16M,flat-1M"
)
BENCH_RESERVE = 90  # seconds the benchmark leaves itself to finish the workload it is in and write its files
LEAST = 10  # seconds below which a step is not started


def steps(out: Path) -> dict[str, tuple[list[str] | None, int, str]]:
    """name -> (command, most seconds it may take, what it is for), in the order they run; a None command is
    skipped with its reason. `{seconds}` in a command is replaced by the seconds the deadline leaves it."""
    slug = device_slug() if not os.environ.get("GPU_REPORT_DRY") else "<device>"
    ncu = shutil.which("ncu")
    pytest = [PY, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--durations=15"]
    carried = carried_extension()
    return {
        "build": (
            None if carried else [PY, "setup.py", "--quiet", "build_ext", "--inplace"],
            420,
            "the CUDA extension in place, as `make gpu-image-check` builds it against the image's torch "
            "(setup.py builds csrc/cuda where torch has CUDA and a GPU is visible)"
            if not carried
            else f"a carried extension imports with CUDA: {carried}",
        ),
        "bench": (
            [
                PY,
                "-m",
                "benchmarks.bench",
                "--out",
                str(out / f"{slug}.json"),
                "--workloads",
                BENCH_ORDER,
                "--seconds",
                "{seconds}",
            ],
            330,  # (told 240 s: the GPU tests keep the rest)
            "the benchmark table, the targets' workloads first: JSON, TXT (this log) and PNG",
        ),
        "gpu-tests": (
            # (a test past 60 s has every thread's stack written to the log: the first H200 call's tests ran
            # out of their 240 s with nothing said of where)
            pytest + ["-n", "6", "-o", "faulthandler_timeout=60", "tests/test_gpu.py"],
            240,
            "tests/test_gpu.py on 6 workers (the float64 oracle and Triton's compiles run on the CPU): cuda "
            "and triton against the reference, graph capture, found_inf, determinism, a tensor over 2^31 elements",
        ),
        "profile": (
            (
                [
                    ncu,
                    "--kernel-name",
                    "regex:phase_kernel",
                    "--launch-count",
                    "8",  # (2 dtypes x 2 optimizers x 2 steps: at 4, the H200 call profiled no bf16 launch)
                    "--section",
                    "SpeedOfLight",
                    "--section",
                    "MemoryWorkloadAnalysis",
                    PY,
                    "-c",
                    PROFILE,
                ],
                120,
                "Nsight Compute on the hot kernels (past and fused SGD, 64M fp32 and bf16)",
            )
            if ncu
            else (None, 0, "ncu is not installed here: no kernel profile")
        ),
        "suite": (
            pytest + ["tests", "--ignore", "tests/test_gpu.py"],
            600,
            "the rest of the suite (hypothesis profile 'dev': 10 examples each)",
        ),
    }


ROOT = Path(__file__).resolve().parents[1]


def carried_extension() -> str | None:
    """The compiled extension, where one that imports with CUDA is already in the tree (carried to the device:
    building it there took 229 s of the first H200 call's 540); None where the report must build it."""
    if os.environ.get("GPU_REPORT_DRY"):
        return None
    probe = "import extrap_kernels._C as C; assert C.has_cuda; print(C.__file__)"
    found = subprocess.run([PY, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    return found.stdout.strip() if found.returncode == 0 else None


def requirement_names(path: Path) -> list[str]:
    """The distribution names a requirements file asks for (versions, extras and markers dropped)."""
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.append(re.split(r"[\s\[<>=!~;]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def wheels_to_carry() -> list[str]:
    """What the report runs with (torch, setup.py's build tools, requirements-dev.txt) that the GPU image lacks
    (benchmarks/gpu_image.txt): each would have to travel as a wheel, since nothing installs there."""
    image = set(requirement_names(ROOT / "benchmarks" / "gpu_image.txt"))
    needed = ["torch", "setuptools", "ninja"] + requirement_names(ROOT / "requirements-dev.txt")
    return [name for name in dict.fromkeys(needed) if name not in image]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out/gpu-report", help="the folder for everything to commit")
    parser.add_argument("--steps", default="build,bench,gpu-tests,profile,suite")
    parser.add_argument("--seconds", type=float, default=540, help="the deadline of all the steps together")
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
        print(f"all within {args.seconds:g} s; results and logs would go to {out}/")
        missing = wheels_to_carry()
        print(
            "wheels to carry to the GPU image: "
            + (", ".join(missing) if missing else "none (every package it needs is in benchmarks/gpu_image.txt)")
        )
        return 0 if not missing else 1
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device here: run this on the lent GPU machine (or --dry-run)", file=sys.stderr)
        return 2
    env = {
        "HYPOTHESIS_PROFILE": "dev",
        # setup.py builds for sm_80 and sm_90 by default; here only this device's architecture is needed, which
        # halves the build, the longest step, and ninja runs on every core
        "TORCH_CUDA_ARCH_LIST": "{}.{}".format(*torch.cuda.get_device_capability()),
        "MAX_JOBS": str(os.cpu_count() or 1),
        **os.environ,
        "PYTHONUNBUFFERED": "1",
    }
    header = f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}, CUDA {torch.version.cuda}"
    ok = run_steps([(name, *plan[name]) for name in chosen], out, args.seconds, env, header, device_slug())
    return 0 if ok else 1


def run_steps(chosen: list[tuple], out: Path, seconds: float, env: dict, header: str, slug: str) -> bool:
    """Runs each (name, command, cap, why) in turn, each for at most its cap and never past `seconds` from now,
    its output to out/<name>.log (the benchmark's to out/<slug>.txt), and rewrites out/summary.txt after every
    step. Returns whether every step that ran exited 0."""
    out.mkdir(parents=True, exist_ok=True)
    summary, ok = [header], True
    deadline = time.monotonic() + seconds
    for name, command, cap, why in chosen:
        left = deadline - time.monotonic()
        if command is None or left < LEAST:
            summary.append(f"{name}: skipped ({why if command is None else 'the deadline has passed'})")
        else:
            allowed = min(cap, left)
            command = [c.replace("{seconds}", f"{max(allowed - BENCH_RESERVE, 0):.0f}") for c in command]
            log = out / (f"{slug}.txt" if name == "bench" else f"{name}.log")
            start = time.monotonic()
            with open(log, "w") as sink:
                try:
                    rc = subprocess.run(
                        command, stdout=sink, stderr=subprocess.STDOUT, env=env, timeout=allowed
                    ).returncode
                except subprocess.TimeoutExpired:
                    rc = f"timeout after {allowed:.0f} s"
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
            summary.append(f"{name}: exit {rc} in {time.monotonic() - start:.0f} s; {tail[0][:200]}")
            ok &= rc == 0
        print(summary[-1], flush=True)
        (out / "summary.txt").write_text("\n".join(summary) + "\n")  # after every step: a cut call keeps it
    return ok


if __name__ == "__main__":
    sys.exit(main())
