"""Who is timed: our backends in each mode, what users run today, and what they would write themselves.

A contender builds an optimizer over a parameter list and returns the function that does one full
iteration's optimizer work (both phases in mode "local"). `floor_bytes` is SPEC.md's traffic per
element for that work, the numerator of the time floor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

import extrap_kernels as ek
from extrap_kernels.bucket import state_dtype

LR, GAMMA, MOMENTUM = 0.01, 0.01, 0.9


@dataclass(frozen=True)
class Contender:
    name: str
    # "past" (anchor-free where it applies: ExtrapSGD's default), "past-stored" (store_anchor=True),
    # "past-nomaster" (master_weights=False: 16-bit state), "local", "noise", "fused-sgd" (our FusedSGD) or
    # "sgd" (torch's plain momentum SGD); "<mode>-amp": the same step given AMP's grad_scale and found_inf
    mode: str
    make: Callable[[list[torch.Tensor]], Callable[[], None]]
    baseline: str = ""  # "torch-fused" / "foreach-extrap": the rows that ratios are taken against
    # "adam": the adaptive rows ("adam-past" (anchor-free on fp32/fp64), "adam-past-stored" (store_anchor=True),
    # "adam-local", "adam-past-bf16m" (exp_avg_dtype=torch.bfloat16): ExtrapAdamW;
    # "lamb-past", "lamb-past-stored": ExtrapLAMB; "adamw":
    # torch's; "adamw-fp32m": DeepSpeedCPUAdam's, fp32 moments), against torch's fused AdamW
    family: str = "sgd"
    # the same algorithm on the reference backend, run in float64 on the CPU: what the contender's first steps
    # must match before it is timed (validate.py); None: it is the reference itself
    oracle: Callable[[list[torch.Tensor]], Callable[[], None]] | None = None


AMP = "-amp"


def amp(opt, mode: str, params: list[torch.Tensor]):
    """A `<mode>-amp` contender's optimizer is given AMP's grad_scale and found_inf, as GradScaler gives them
    (both read through the attributes, by torch's fused optimizers and ours), so that its step also writes
    the gradients back unscaled. A scale of 1, so that the iterations' gradients stay what they were."""
    if mode.endswith(AMP):
        device = params[0].device
        opt.grad_scale, opt.found_inf = torch.ones((), device=device), torch.zeros((), device=device)  # (as GradScaler)
    return opt


def anchor_free(mode: str, dtype: torch.dtype) -> bool:
    """ExtrapSGD's past mode keeps no anchor on full-precision parameters (with the contenders' plain
    heavy-ball momentum), nor on 16-bit ones without a master (past-nomaster: it recovers s from the 16-bit x)."""
    return mode == "past-nomaster" or (mode == "past" and state_dtype(dtype) == dtype)


def adam_anchor_free(mode: str, dtype: torch.dtype) -> bool:
    """ExtrapAdamW's and ExtrapLAMB's past mode keeps no anchor on full-precision parameters either
    (store_anchor=False), nor on 16-bit ones without a master (adam-past-lean: bf16 moments, master_weights=False)."""
    full_precision = state_dtype(dtype) == dtype
    anchor_free_modes = ("adam-past", "adam-past-bf16m", "adam-past-comp", "lamb-past")
    return mode == "adam-past-lean" or (mode in anchor_free_modes and full_precision)


def moment_bytes(mode: str, dtype: torch.dtype) -> int:
    """The bytes of one moment element: 2 for "-bf16m", "-lean" and "-comp" (exp_avg_dtype=torch.bfloat16), else the
    state dtype's."""
    if mode.endswith(("-bf16m", "-lean", "-comp")):
        return 2
    return torch.empty((), dtype=state_dtype(dtype)).element_size()


def floor_bytes(mode: str, dtype: torch.dtype, master: bool = True) -> int:
    """SPEC.md, "Traffic per element", with momentum on; x and g in `dtype`, s and m in the state dtype.
    past without an anchor (fp32/fp64): read x g m, write x m. past with one, and noise: read s g m,
    write s m x. local: extrapolate reads x g (16-bit: s g), writes s x
    (16-bit: x); step reads s g m, writes m x (16-bit: and s). fused-sgd (our FusedSGD): read x g m, write
    x m (16-bit: the fp32 master s read and written too). sgd (torch's step on the parameters themselves,
    no master copy): read x g m, write x m, m in the parameter dtype. An AMP step writes g too."""
    x = torch.empty((), dtype=dtype).element_size()
    if mode.endswith(AMP):
        return floor_bytes(mode.removesuffix(AMP), dtype, master) + x
    s = torch.empty((), dtype=state_dtype(dtype)).element_size()
    sixteen_bit = master and s != x
    # AdamW (SPEC "Base update, Adam family and LAMB"): past reads s g m v, writes s m v x; local's
    # extrapolation reads x g m v (16-bit: s g m v) and writes s x (16-bit: x), its step reads s g m v and
    # writes m v x (16-bit: and s); torch's fused AdamW reads x g m v, writes x m v, all in the parameter dtype;
    # the anchor-free past update reads x g m v, writes x m v (m and v of the state dtype)
    # LAMB: the global gradient norm reads g, the reading pass s g m v (anchor-free: x g m v, recovering s), then
    # adam-past's update
    if mode == "lamb-past" and adam_anchor_free(mode, dtype):
        return x + (2 * x + 2 * s) + 3 * x + 4 * s
    if mode in ("lamb-past", "lamb-past-stored"):
        return x + (x + 3 * s) + 2 * x + 6 * s
    if adam_anchor_free(mode, dtype):  # (m and v of moment_bytes)
        return 3 * x + 4 * moment_bytes(mode, dtype)
    if mode == "adam-past-comp":  # (16-bit x: its remainder read and written beside it)
        return 5 * x + 4 * moment_bytes(mode, dtype)
    if mode in ("adam-past", "adam-past-stored", "adam-past-bf16m"):
        return 2 * x + 2 * s + 4 * moment_bytes(mode, dtype)
    if mode == "adam-local":
        extrapolate = 2 * x + 3 * s if sixteen_bit else 3 * x + 3 * s
        return extrapolate + 2 * x + 5 * s + (s if sixteen_bit else 0)
    if mode == "adamw":
        return 7 * x
    if mode == "adamw-fp32m":  # (DeepSpeedCPUAdam: its moments fp32 whatever the parameter's dtype)
        return 3 * x + 16
    if anchor_free(mode, dtype):  # (m of x's own dtype without a master)
        return 3 * x + 2 * (x if mode == "past-nomaster" else s)
    if mode in ("past", "past-stored", "noise"):
        return 2 * x + 4 * s
    if mode == "fused-sgd":
        return 2 * x + 4 * s if sixteen_bit else 5 * x
    if mode == "local":
        extrapolate = s + 2 * x if sixteen_bit else 2 * x + 2 * s
        step = 2 * x + 3 * s + (s if sixteen_bit else 0)
        return extrapolate + step
    if mode == "sgd":
        return 5 * x
    raise ValueError(mode)


def memory_bytes(mode: str, dtype: torch.dtype, master: bool = True) -> int:
    """Bytes per parameter element that training holds for the optimizer's sake: the parameter itself
    and its optimizer state (an anchor or fp32 master, a momentum buffer; per-tensor scalars left out)."""
    mode = mode.removesuffix(AMP)
    x = torch.empty((), dtype=dtype).element_size()
    s = torch.empty((), dtype=state_dtype(dtype)).element_size()
    if mode == "sgd":  # torch's: a momentum buffer in the parameter dtype
        return 2 * x
    if mode == "adamw":  # torch's: m and v in the parameter dtype
        return 3 * x
    if mode == "adamw-fp32m":
        return x + 8
    if adam_anchor_free(mode, dtype):  # m and v
        return x + 2 * moment_bytes(mode, dtype)
    if mode == "adam-past-comp":  # x, its remainder, m and v
        return 2 * x + 2 * moment_bytes(mode, dtype)
    if mode.startswith(("adam-", "lamb-")):  # the anchor (the fp32 master of a 16-bit x), m and v
        return x + s + 2 * moment_bytes(mode, dtype)
    if mode == "past-nomaster":  # x and m, 16-bit (anchor-free)
        return 2 * x
    if mode == "fused-sgd" or anchor_free(mode, dtype):
        return x + s + (s if master and s != x else 0)
    return x + 2 * s


def _iteration(opt, local: bool) -> Callable[[], None]:
    """One iteration's optimizer work: both phases in mode "local"."""
    if not local:
        return opt.step

    def iteration():
        opt.extrapolate()
        opt.step()

    iteration.__self__ = opt  # (as a bound step's: optimizer_of finds it)
    return iteration


def optimizer_of(step: Callable[[], None]):
    """The optimizer behind a contender's step (None for one that has none: the hand-written loop)."""
    return getattr(step, "__self__", None)


def state_bytes_per_element(step: Callable[[], None], params: list[torch.Tensor]) -> float:
    """The bytes of the optimizer's state tensors per parameter element, counted from the tensors it holds
    (per-tensor scalars, as the step counts, left out), after its first step."""
    opt = optimizer_of(step)
    held = sum(
        t.numel() * t.element_size()
        for state in opt.state.values()
        for t in state.values()
        if torch.is_tensor(t) and t.dim() > 0
    )
    return held / sum(p.numel() for p in params)


def _ours(backend: str, mode: str):
    def make(params):
        opt = ek.ExtrapSGD(
            params,
            lr=LR,
            gamma=GAMMA,
            momentum=MOMENTUM,
            mode="past" if mode.startswith("past") else mode,
            store_anchor=mode == "past-stored",
            master_weights=mode != "past-nomaster",
            backend=backend,
        )
        return _iteration(amp(opt, mode, params), mode == "local")

    return make


def _fused_sgd(backend: str):
    def make(params):
        return ek.FusedSGD(params, lr=LR, momentum=MOMENTUM, backend=backend).step

    return make


def _torch_sgd(mode: str = "sgd", **flags):
    def make(params):
        return amp(torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, **flags), mode, params).step

    return make


def _ours_adaptive(backend: str, mode: str, gamma: float = GAMMA):
    def make(params):
        base, extrapolation, *variant = mode.removesuffix(AMP).split("-")
        cls = ek.ExtrapLAMB if base == "lamb" else ek.ExtrapAdamW
        lean = variant == ["lean"]  # (16-bit moments and no master: the leanest state, 6 bytes per bf16 element)
        comp = variant == ["comp"]  # (16-bit moments and the compensated anchor: 8 bytes per bf16 element)
        moments = torch.bfloat16 if variant == ["bf16m"] or lean or comp else torch.float32  # (16-bit moments)
        opt = cls(
            params,
            lr=LR,
            gamma=gamma,
            mode=extrapolation,
            store_anchor=variant == ["stored"],
            exp_avg_dtype=moments,
            exp_avg_sq_dtype=moments,
            master_weights="compensated" if comp else not lean,
            backend=backend,
        )
        return _iteration(amp(opt, mode, params), extrapolation == "local")

    return make


def _torch_adamw(mode: str = "adamw", **flags):
    def make(params):
        return amp(torch.optim.AdamW(params, lr=LR, **flags), mode, params).step

    return make


def _python_loop(params):
    """Past-mode extrapolation as a per-parameter Python loop of torch ops (the SAM-style way):
    m <- mu m + g; s <- s - lr m; x <- s - gamma m."""
    state = [
        (p.detach().clone(memory_format=torch.contiguous_format).float(), torch.zeros_like(p, dtype=torch.float32))
        for p in params
    ]

    @torch.no_grad()
    def step():
        for p, (anchor, buf) in zip(params, state):
            buf.mul_(MOMENTUM).add_(p.grad)
            anchor.add_(buf, alpha=-LR)
            p.copy_(anchor.add(buf, alpha=-GAMMA))

    return step


def _deepspeed_cpu_adam(params):
    """ZeRO-Offload's CPU optimizer, AdamW at the contenders' lr and torch's default decay (0.01)."""
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    return DeepSpeedCPUAdam(params, lr=LR, weight_decay=1e-2, adamw_mode=True).step


def deepspeed_cpu_adam() -> str | None:
    """None where DeepSpeedCPUAdam runs here (deepspeed installed and its C++ op built: minutes the first
    time, cached after), else why it is left out: it is an optional contender."""
    if not hasattr(deepspeed_cpu_adam, "reason"):
        try:
            _deepspeed_cpu_adam([torch.nn.Parameter(torch.zeros(8))])
            deepspeed_cpu_adam.reason = None
        except Exception as exc:  # (ImportError, or the op's build failing: any of them leaves it out)
            deepspeed_cpu_adam.reason = f"DeepSpeedCPUAdam left out: {type(exc).__name__}: {str(exc)[:160]}"
    return deepspeed_cpu_adam.reason


ADAPTIVE_MODES = ("adam-past", "adam-past-stored", "adam-local", "lamb-past", "lamb-past-stored")


def contenders(device: str, overhead: bool = False) -> list[Contender]:
    """Every contender that runs on `device`, in table order; `overhead` (tiny tensors, where only host
    time is left) adds noise mode, whose kernel is compute-bound and otherwise like past."""
    out = []
    fused = ek.available_backends(device)
    modes = (
        ("past", "past-stored", "past-nomaster", "local", "noise")
        if overhead
        else ("past", "past-stored", "past-nomaster", "local")
    )
    sgd, adamw = _fused_sgd("reference"), _ours_adaptive("reference", "adam-past", gamma=0.0)  # (the base steps)
    for backend in [b for b in ("cuda", "triton", "cpu") if b in fused]:
        if device == "cpu" and backend in ("triton", "cuda"):
            continue  # the interpreter and the CUDA emulation are test vehicles, not contenders
        name = f"ours-{backend}"
        out += [Contender(name, m, _ours(backend, m), oracle=_ours("reference", m)) for m in modes]
        out += [Contender(name, "fused-sgd", _fused_sgd(backend), oracle=sgd)]
        # (what AMP's write costs)
        out += [Contender(name, "past-amp", _ours(backend, "past-amp"), oracle=_ours("reference", "past"))]
        out += [
            Contender(name, m, _ours_adaptive(backend, m), family="adam", oracle=_ours_adaptive("reference", m))
            for m in ADAPTIVE_MODES + ("adam-past-amp",)
        ]
        # bf16 moments (the oracle's float64 run keeps fp32 ones: 16-bit moments need fp32 arithmetic)
        oracle = _ours_adaptive("reference", "adam-past")
        for mode in ("adam-past-bf16m", "adam-past-lean", "adam-past-comp"):  # (-comp: the compensated anchor too)
            out += [Contender(name, mode, _ours_adaptive(backend, mode), family="adam", oracle=oracle)]
    out += [
        Contender("ours-foreach", m, _ours("foreach", m), baseline="foreach-extrap", oracle=_ours("reference", m))
        for m in ("past", "local")
    ]
    out += [Contender("ours-reference", "past", _ours("reference", "past"))]
    out += [
        Contender("torch-sgd-fused", "sgd", _torch_sgd(fused=True), baseline="torch-fused", oracle=sgd),
        Contender("torch-sgd-fused", "sgd-amp", _torch_sgd("sgd-amp", fused=True), oracle=sgd),
        Contender("torch-sgd-foreach", "sgd", _torch_sgd(foreach=True), oracle=sgd),
        Contender("python-loop-extrap", "past", _python_loop, oracle=_ours("reference", "past")),
    ]
    # the adaptive rows: ours written with _foreach ops, torch's fused and foreach AdamW steps
    out += [
        Contender(
            "ours-foreach",
            m,
            _ours_adaptive("foreach", m),
            baseline="foreach-extrap",
            family="adam",
            oracle=_ours_adaptive("reference", m),
        )
        for m in ADAPTIVE_MODES
    ]
    out += [
        Contender(
            "torch-adamw-fused", "adamw", _torch_adamw(fused=True), baseline="torch-fused", family="adam", oracle=adamw
        ),
        Contender("torch-adamw-fused", "adamw-amp", _torch_adamw("adamw-amp", fused=True), family="adam", oracle=adamw),
        Contender("torch-adamw-foreach", "adamw", _torch_adamw(foreach=True), family="adam", oracle=adamw),
    ]
    if device == "cpu" and deepspeed_cpu_adam() is None:
        out += [Contender("deepspeed-cpu-adam", "adamw-fp32m", _deepspeed_cpu_adam, family="adam", oracle=adamw)]
    return out
