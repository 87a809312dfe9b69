"""Times one optimizer iteration of every contender on every workload, in one process and one run, and
reports it against the memory-bandwidth floor of SPEC.md, torch's fused SGD and the `_foreach`
extrapolation; on the overhead workloads (tiny tensors) it reports the host time per step against
torch's fused SGD. Writes a terminal table, a JSON file and a PNG plot (under out/bench/ unless --out
says where: committed results are written on purpose, never by default).

    python -m benchmarks.bench                      # this machine's device (cuda if there is one)
    python -m benchmarks.bench --quick              # a minute: overhead, 16M fp32, ResNet-50
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

from . import validate
from .contenders import Contender, contenders, deepspeed_cpu_adam, floor_bytes, memory_bytes
from .workloads import Workload, standard

OUT = Path("out") / "bench"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_once(fn, device: str, host: bool) -> float:
    """One call: CUDA events on a GPU (the kernels' time), perf_counter on a CPU; `host`: until the call
    returns (on a GPU without waiting for its kernels, which are drained first)."""
    if device == "cuda" and not host:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def round_robin(fns: dict, device: str, repeats: int, budget: float, host: bool = False) -> dict:
    """Median seconds of each function, timed in turn within every round, so that a machine whose
    bandwidth drifts (a shared VM) slows all of them alike and their ratios hold. Two warm-up calls
    each; on a CPU the rounds stop once `budget` seconds are spent (at least 3 rounds)."""
    for fn in fns.values():
        fn()
        fn()
    times = {name: [] for name in fns}
    spent = time.perf_counter()
    for done in range(1, repeats + 1):
        for name, fn in fns.items():
            times[name].append(time_once(fn, device, host))
        if device != "cuda" and done >= 3 and time.perf_counter() - spent > budget:
            break
    synchronize(device)
    return {name: statistics.median(t) for name, t in times.items()}


def streaming_probes(device: str, nbytes: int) -> dict:
    """SPEC.md's floor: bytes read plus written per second by large streaming kernels, timed beside the
    contenders: a copy, a triad c = a + k * b, and the same triad in place (c = a); the floor takes the
    best. On a CPU a store to a line that was not read first costs a read for ownership, so the copy and
    the out-of-place triad move more bytes than they count, while kernels that write what they read
    (torch's fused SGD, most of ours) do not: the in-place triad measures the bandwidth those see.
    Returns name -> (bytes counted, function)."""
    a = torch.rand(nbytes // 4, device=device)
    b, c = torch.rand_like(a), torch.empty_like(a)
    n = a.numel()
    return {
        "copy": (8 * n, lambda: c.copy_(a)),
        "triad": (12 * n, lambda: torch.add(a, b, alpha=0.5, out=c)),
        "triad_in_place": (12 * n, lambda: a.add_(b, alpha=1e-9)),
    }


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
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "cpu",
    )
    return f"{model} ({torch.get_num_threads()} threads)"


# Workloads up to this many elements time all contenders in one round robin (their states side by side in
# memory), with the streaming probes; larger ones time each contender in a round robin with torch's fused
# SGD and the probes, so that its ratio and floor come from the same minutes.
INTERLEAVE_BELOW = 80 * 2**20


def run_workload(
    work: Workload,
    dtype: torch.dtype,
    device: str,
    chosen: list[Contender],
    repeats: int,
    probes: dict,
    budget: float,
    progress,
) -> tuple[list[dict], dict]:
    """The rows of one workload, and the streaming bandwidths measured beside it."""
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen).to(dtype) for s in work.shapes]
    grads = [torch.randn(s, generator=gen).mul_(1e-3).to(dtype=dtype, device=device) for s in work.shapes]
    probes = {} if work.overhead else probes
    repeats = max(repeats, 200) if work.overhead else repeats

    def build(c: Contender):
        params = [torch.nn.Parameter(t.to(device, copy=True)) for t in init]
        for p, g in zip(params, grads):
            p.grad = g
        return c.make(params)

    seconds, errors, launches, bandwidth_of, fused_of = {}, {}, {}, {}, {}
    speeds = {}
    # torch's fused step of each family (SGD, AdamW): the baseline of the family's ratios
    baselines = {c.family: c for c in chosen if c.baseline == "torch-fused"}
    if work.numel <= INTERLEAVE_BELOW:
        groups = [chosen]
    else:  # each contender beside its family's torch fused step
        groups = [[b] for b in baselines.values()] + [
            [baselines[c.family], c] for c in chosen if c is not baselines[c.family]
        ]
    for group in groups:
        steps = {}
        for c in group:
            progress.set_postfix_str(f"{work.name} {str(dtype)[6:]} {c.name} {c.mode}")
            try:
                invalid = validate.checked(c, device, dtype)  # (a contender that computes wrong is not timed)
                if invalid:
                    errors[c] = invalid
                    continue
                steps[c] = build(c)
            except (RuntimeError, TypeError, NotImplementedError) as exc:  # e.g. a dtype torch's fused SGD lacks
                errors[c] = f"{type(exc).__name__}: {exc}"[:200]
        fns = {**{name: fn for name, (_, fn) in probes.items()}, **steps}
        try:
            measured = round_robin(fns, device, repeats, budget * len(fns), host=work.overhead)
        except (RuntimeError, TypeError, NotImplementedError) as exc:
            measured = {}
            errors.update({c: f"{type(exc).__name__}: {exc}"[:200] for c in steps})
        group_speeds = {name: probes[name][0] / measured[name] for name in probes if name in measured}
        for name, speed in group_speeds.items():
            speeds[name] = max(speeds.get(name, 0.0), speed)
        for c, step in steps.items():
            if c in measured and (c not in seconds or len(group) == 1):
                seconds[c] = measured[c]
                launches[c] = kernel_launches(step, device)
                bandwidth_of[c] = max(group_speeds.values(), default=float("nan"))
                fused_of[c] = measured.get(baselines[c.family], float("nan"))
        del steps, fns
        gc.collect()
        progress.update(len(group) if len(groups) == 1 else 1)
    measured = dict(seconds=seconds, errors=errors, launches=launches, bandwidth=bandwidth_of, fused=fused_of)
    return workload_rows(work, dtype, chosen, repeats, measured), speeds


def workload_rows(work: Workload, dtype: torch.dtype, chosen: list[Contender], repeats: int, measured: dict) -> list:
    """One row per contender of a workload from what was measured: its seconds, error, launches, the streaming
    bandwidth beside it and its family's torch fused step's seconds (dicts by contender)."""
    seconds, errors, launches = measured["seconds"], measured["errors"], measured["launches"]
    bandwidth_of, fused_of = measured["bandwidth"], measured["fused"]
    rows = []
    for c in chosen:
        t = seconds.get(c, float("nan"))
        bytes_per_element = floor_bytes(c.mode, dtype, master=c.name.startswith("ours"))
        floor = bytes_per_element * work.numel / bandwidth_of.get(c, float("nan"))
        rows.append(
            dict(
                workload=work.name,
                numel=work.numel,
                tensors=work.tensors,
                dtype=str(dtype)[6:],
                contender=c.name,
                mode=c.mode,
                baseline=c.baseline,
                overhead=work.overhead,
                median_ms=t * 1e3,
                repeats=repeats,
                floor_bytes_per_element=bytes_per_element,
                memory_bytes_per_element=memory_bytes(c.mode, dtype, master=c.name.startswith("ours")),
                floor_ms=floor * 1e3,
                floor_fraction=None if work.overhead else floor / t,
                effective_GBps=bytes_per_element * work.numel / t / 1e9,
                us_per_tensor=t * 1e6 / work.tensors,
                launches=launches.get(c),
                error=errors.get(c),
                time_vs_torch_fused=t / fused_of.get(c, float("nan")),
            )
        )
    for r in rows:
        foreach = next(
            (q["median_ms"] for q in rows if q["baseline"] == "foreach-extrap" and q["mode"] == r["mode"]), float("nan")
        )
        r["speedup_vs_foreach_extrap"] = foreach / r["median_ms"]
    return rows


def _not_timed(row: dict) -> str:
    """What a row that was not timed shows instead of its figures (report() prints the whole reason)."""
    return "INVALID: computes wrong, not timed" if row["error"].startswith("invalid") else "failed: not timed"


def table(rows: list[dict]) -> str:
    lines = []
    overhead = [r for r in rows if r["overhead"]]
    if overhead:
        head = (
            f"{'host time':15s} {'dtype':8s} {'contender':19s} {'mode':13s} {'ms':>8s} {'us/tensor':>9s} "
            f"{'t/torch':>7s} {'launch':>6s}"
        )
        lines += [head, "-" * len(head)]
        for r in overhead:
            if r["error"]:
                row = f"{r['workload']:15s} {r['dtype']:8s} {r['contender']:19s} {r['mode']:13s}"
                lines.append(f"{row} {_not_timed(r)}")
                continue
            launches = "-" if r["launches"] is None else str(r["launches"])
            lines.append(
                f"{r['workload']:15s} {r['dtype']:8s} {r['contender']:19s} {r['mode']:13s} "
                f"{r['median_ms']:8.3f} {r['us_per_tensor']:9.2f} {r['time_vs_torch_fused']:7.2f} "
                f"{launches:>6s}"
            )
        lines.append("")
    head = (
        f"{'workload':11s} {'dtype':8s} {'contender':19s} {'mode':13s} {'B/el':>4s} {'mem':>4s} {'ms':>9s} "
        f"{'GB/s':>7s} {'floor':>6s} {'t/torch':>7s} {'fe/t':>6s} {'launch':>6s}"
    )
    lines += [head, "-" * len(head)]
    for r in rows:
        if r["overhead"]:
            continue
        if r["error"]:
            lines.append(
                f"{r['workload']:11s} {r['dtype']:8s} {r['contender']:19s} {r['mode']:13s} "
                f"{r['floor_bytes_per_element']:4d} {r['memory_bytes_per_element']:4d} {_not_timed(r)}"
            )
            continue
        launches = "-" if r["launches"] is None else str(r["launches"])
        lines.append(
            f"{r['workload']:11s} {r['dtype']:8s} {r['contender']:19s} {r['mode']:13s} "
            f"{r['floor_bytes_per_element']:4d} {r['memory_bytes_per_element']:4d} {r['median_ms']:9.2f} "
            f"{r['effective_GBps']:7.1f} {r['floor_fraction']:6.0%} "
            f"{r['time_vs_torch_fused']:7.2f} {r['speedup_vs_foreach_extrap']:6.2f} {launches:>6s}"
        )
    return "\n".join(lines)


def report(name: str, bandwidths: dict, rows: list[dict], left_out: list[str]) -> None:
    """The terminal table of a run (or of its JSON: --from-json)."""
    print(
        f"{name}: streaming bandwidth (GB/s read + written, 1 GiB arrays, timed beside each workload; the floor "
        "takes the best):"
    )
    for key, speeds in bandwidths.items():
        print(f"  {key:22s} " + ", ".join(f"{k} {v:.1f}" for k, v in speeds.items()))
    print(table(rows))
    for r in rows:
        if r["error"]:
            print(f"{r['workload']} {r['dtype']} {r['contender']} {r['mode']}: {r['error']}")
    if left_out:
        print("left out, the run's --seconds having passed: " + ", ".join(left_out))
    print(
        "host time: median time for a step to return on tiny tensors; us/tensor: that per tensor;"
        "\nB/el: SPEC.md's bytes moved per element; mem: bytes held per parameter element (the parameter and "
        "the optimizer state);\npast: anchor-free where it applies (fp32), past-stored: store_anchor=True, "
        "past-nomaster: master_weights=False (16-bit state, stochastic rounding, anchor-free; fp32: as past); "
        "adam-past-bf16m: bf16 moments; adam-past-lean: bf16 moments and master_weights=False; "
        "adam-past-comp: bf16 moments and the compensated anchor;"
        "\nfloor: SPEC.md bytes/element x numel / the best streaming bandwidth timed beside it, as a fraction "
        "of the time"
        " (100% = at the floor);\nt/torch: time over torch.optim.SGD(fused=True)'s plain momentum step on the"
        " same workload (the adam-*, lamb-* and adamw rows: over torch.optim.AdamW(fused=True)'s step); fe/t: speedup"
        " over the same mode written with torch _foreach ops (backend foreach)"
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument(
        "--largest",
        type=int,
        default=None,
        help="largest flat set (elements); default 256M on CPU, all on a GPU with room",
    )
    parser.add_argument(
        "--workloads", default="", help="comma-separated names to keep, run in that order (default: all)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="default 50 on GPU, 10 on CPU")
    parser.add_argument(
        "--budget",
        type=float,
        default=3.0,
        help="CPU: seconds per row (per contender or probe) before the rounds stop early",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="start no workload after this many seconds: "
        "the table holds those done, and says which were left out (a lent GPU's time is short)",
    )
    parser.add_argument(
        "--from-json",
        default=None,
        help="run nothing: print the table of this results JSON and plot it (a run cut short keeps its JSON)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the overhead workloads, 16M and ResNet-50 in fp32 (about a minute on a 2-core CPU)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="JSON path (default out/bench/<device>.json; committed results go to benchmarks/results/<device>.json)",
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.from_json:
        from .plot import plot

        data = json.loads(Path(args.from_json).read_text())
        meta = data["meta"]
        report(meta["device"], meta["bandwidth_GBps"], data["rows"], meta.get("left_out", []))
        print(f"wrote {plot(Path(args.from_json))}")
        return
    if args.quick:
        args.workloads = args.workloads or "tensors-161,tensors-1000,resnet50-tiny,flat-16M,resnet50"
        args.dtypes = "float32"
    device = args.device
    repeats = args.repeats or (50 if device == "cuda" else 10)
    largest = args.largest
    if largest is None:
        largest = 256 * 2**20
        if device == "cuda" and torch.cuda.mem_get_info()[0] > 24 * 2**30:  # 1B fp32: x g s m = 16 GB
            largest = 2**30
    works = standard(device, largest)
    if args.workloads:
        order = args.workloads.split(",")
        works = sorted((w for w in works if w.name in order), key=lambda w: order.index(w.name))
    dtypes = [DTYPES[d] for d in args.dtypes.split(",")]
    probes = streaming_probes(device, 2**30)
    name = device_name(device)
    rows, bandwidths, left_out, start = [], {}, [], time.monotonic()
    out = Path(args.out) if args.out else OUT / (re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)

    def save():  # after every workload: a run stopped from outside keeps the rows it has
        meta = dict(
            device=name,
            device_type=device,
            torch=torch.__version__,
            cuda=torch.version.cuda,
            triton=_version("triton"),
            extrap_kernels=ek.__version__,
            threads=torch.get_num_threads(),
            bandwidth_GBps=bandwidths,
            repeats=repeats,
            left_out=left_out,
            date=time.strftime("%Y-%m-%d"),
        )
        out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))

    if device == "cpu" and (missing := deepspeed_cpu_adam()):
        print(missing)  # (an optional contender: the run goes on without it)
    total = sum(len(contenders(device, w.overhead)) for w in works) * len(dtypes)
    with tqdm(total=total, unit="row", disable=None) as progress:
        for work in works:
            for dtype in dtypes:
                if args.seconds is not None and time.monotonic() - start > args.seconds:
                    left_out.append(f"{work.name} {str(dtype)[6:]}")
                    continue
                new_rows, speeds = run_workload(
                    work, dtype, device, contenders(device, work.overhead), repeats, probes, args.budget, progress
                )
                rows += new_rows
                if speeds:
                    bandwidths[f"{work.name} {str(dtype)[6:]}"] = {k: v / 1e9 for k, v in speeds.items()}
                save()
    save()
    report(name, bandwidths, rows, left_out)
    from .plot import plot

    png = plot(out)
    print(f"wrote {out}" + (f" and {png}" if png else " (no row measured: no plot)"))


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()
