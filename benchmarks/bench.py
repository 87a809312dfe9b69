"""Times one optimizer iteration of every contender on every workload, in one process and one run, and
reports it against the memory-bandwidth floor of SPEC.md, torch's fused SGD and the `_foreach`
extrapolation. Writes a terminal table, a JSON file and a PNG plot.

    python -m benchmarks.bench                      # this machine's device (cuda if there is one)
    python -m benchmarks.bench --device cpu --largest 67108864 --dtypes float32
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import re
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

import extrap_kernels as ek

from .contenders import Contender, contenders, floor_bytes
from .workloads import Workload, standard

RESULTS = Path(__file__).parent / "results"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn, device: str, repeats: int, budget: float) -> tuple[float, int]:
    """Median over repeats after two warm-up calls: CUDA events on a GPU, perf_counter on CPU. On CPU
    the repeats stop early once `budget` seconds are spent (at least 3)."""
    fn()
    fn()
    synchronize(device)
    times = []
    spent = time.perf_counter()
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
            if len(times) >= 3 and time.perf_counter() - spent > budget:
                break
    return statistics.median(times), len(times)


def copy_bandwidth(device: str, nbytes: int, repeats: int) -> float:
    """Bytes read plus written per second by one large tensor copy on `device`."""
    src = torch.rand(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    seconds, _ = median_seconds(lambda: dst.copy_(src), device, repeats, budget=5.0)
    return 2 * src.numel() * 4 / seconds


def kernel_launches(fn, device: str) -> int | None:
    """Kernels launched by one call (torch profiler); None on CPU, where nothing is launched."""
    if device != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        synchronize(device)
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "cpu")
    return f"{model} ({torch.get_num_threads()} threads)"


def run_workload(work: Workload, dtype: torch.dtype, device: str, chosen: list[Contender], repeats: int,
                 bandwidth: float, budget: float, progress) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen).to(dtype) for s in work.shapes]
    grads = [torch.randn(s, generator=gen).mul_(1e-3).to(dtype=dtype, device=device) for s in work.shapes]
    rows = []
    for c in chosen:
        progress.set_postfix_str(f"{work.name} {str(dtype)[6:]} {c.name} {c.mode}")
        params = [torch.nn.Parameter(t.to(device)) for t in init]
        for p, g in zip(params, grads):
            p.grad = g
        try:
            step = c.make(params)
            seconds, n = median_seconds(step, device, repeats, budget)
            launches = kernel_launches(step, device)
            error = None
        except (RuntimeError, TypeError, NotImplementedError) as exc:  # e.g. a dtype torch's fused SGD lacks
            seconds, n, launches, error = float("nan"), 0, None, f"{type(exc).__name__}: {exc}"[:200]
        del params, step
        gc.collect()
        bytes_per_element = floor_bytes(c.mode, dtype, master=c.name.startswith("ours"))
        floor = bytes_per_element * work.numel / bandwidth
        rows.append(dict(workload=work.name, numel=work.numel, tensors=work.tensors, dtype=str(dtype)[6:],
                         contender=c.name, mode=c.mode, baseline=c.baseline, median_ms=seconds * 1e3,
                         repeats=n, floor_bytes_per_element=bytes_per_element, floor_ms=floor * 1e3,
                         floor_fraction=floor / seconds, effective_GBps=bytes_per_element * work.numel / seconds / 1e9,
                         launches=launches, error=error))
        progress.update()
    fused = next((r["median_ms"] for r in rows if r["baseline"] == "torch-fused"), float("nan"))
    for r in rows:
        foreach = next((q["median_ms"] for q in rows if q["baseline"] == "foreach-extrap" and q["mode"] == r["mode"]),
                       float("nan"))
        r["time_vs_torch_fused"] = r["median_ms"] / fused
        r["speedup_vs_foreach_extrap"] = foreach / r["median_ms"]
    return rows


def table(rows: list[dict]) -> str:
    head = (f"{'workload':11s} {'dtype':8s} {'contender':19s} {'mode':5s} {'ms':>9s} {'GB/s':>7s} {'floor':>6s} "
            f"{'t/torch':>7s} {'fe/t':>6s} {'launch':>6s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        launches = "-" if r["launches"] is None else str(r["launches"])
        lines.append(f"{r['workload']:11s} {r['dtype']:8s} {r['contender']:19s} {r['mode']:5s} "
                     f"{r['median_ms']:9.2f} {r['effective_GBps']:7.1f} {r['floor_fraction']:6.0%} "
                     f"{r['time_vs_torch_fused']:7.2f} {r['speedup_vs_foreach_extrap']:6.2f} {launches:>6s}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--largest", type=int, default=None,
                        help="largest flat set (elements); default 256M on CPU, all on a GPU with room")
    parser.add_argument("--workloads", default="", help="comma-separated names to keep (default: all)")
    parser.add_argument("--repeats", type=int, default=None, help="default 50 on GPU, 10 on CPU")
    parser.add_argument("--budget", type=float, default=3.0, help="CPU: seconds per row before stopping early")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/<device>.json)")
    args = parser.parse_args(argv)
    device = args.device
    repeats = args.repeats or (50 if device == "cuda" else 10)
    largest = args.largest
    if largest is None:
        largest = 256 * 2**20
        if device == "cuda" and torch.cuda.mem_get_info()[0] > 24 * 2**30:  # 1B fp32: x g s m = 16 GB
            largest = 2**30
    works = [w for w in standard(device, largest) if not args.workloads or w.name in args.workloads.split(",")]
    dtypes = [DTYPES[d] for d in args.dtypes.split(",")]
    chosen = contenders(device)
    bandwidth = copy_bandwidth(device, 2**30, repeats)
    name = device_name(device)
    print(f"{name}: copy bandwidth {bandwidth / 1e9:.1f} GB/s (read + write, 1 GiB copy)")
    rows = []
    with tqdm(total=len(works) * len(dtypes) * len(chosen), unit="row") as progress:
        for work in works:
            for dtype in dtypes:
                rows += run_workload(work, dtype, device, chosen, repeats, bandwidth, args.budget, progress)
    print(table(rows))
    print("floor: SPEC.md bytes/element x numel / copy bandwidth, as a fraction of the time (100% = at the floor);"
          "\nt/torch: time over torch.optim.SGD(fused=True)'s plain momentum step; fe/t: speedup over the same"
          " mode written with torch _foreach ops (backend foreach)")
    out = Path(args.out) if args.out else RESULTS / (re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(device=name, device_type=device, torch=torch.__version__, cuda=torch.version.cuda,
                triton=_version("triton"), extrap_kernels=ek.__version__, threads=torch.get_num_threads(),
                copy_bandwidth_GBps=bandwidth / 1e9, repeats=repeats, date=time.strftime("%Y-%m-%d"))
    out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    from .plot import plot

    png = plot(out)
    print(f"wrote {out} and {png}")


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()
