"""The public functional API, as torch.optim's: one optimizer step over tensor lists.

`sgd`, `adam`, `lamb` and `adagrad` take the parameters, their gradients and their state as parallel lists (the
caller owns the state, as under torch.optim's functional API: an FSDP2 wrapper, an optimizer-in-backward
hook, a training loop of its own), the hyperparameters and the mode, and run the step on the same
backends and kernels as the optimizer classes, validated before anything is written (core.run). Each
call buckets the lists by (device, dtype) anew: the classes cache that work between steps (plan.py).

The state is what the classes keep under the same names:
- `steps`: 0-dim float32 tensors, counted by each update (start at 0);
- `anchors` (ExtrapSGD's "anchor", s): a copy of each parameter in its state dtype (fp32 for 16-bit
  parameters, their master). None: the parameters are their own anchors, which the base update alone
  (mode=None) and SGD's anchor-free past mode (with `last_gammas`) allow on fp32/fp64 parameters;
- `last_gammas`: 0-dim tensors of the state dtype, starting at 0: the anchor-free past mode's;
- `momentum_buffers` (SGD, momentum > 0), `exp_avgs`, `exp_avg_sqs` and, with amsgrad, `max_exp_avg_sqs`
  (Adam, LAMB), `state_sums` (Adagrad's "sum"): zeros like the parameters (the sums: the initial
  accumulator value), in the state dtype.
Each call runs under torch.no_grad() (the parameters are written in place, as an optimizer's step() does).
Mode "local" is two calls per iteration: `extrapolate=True` with the gradients at x_t, then the update
with the gradients at the extrapolated point.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

from . import backends, core
from .bucket import Bucket, Phase, bucket_phase, state_dtype
from .checks import check_bucket, check_hyperparameters, scalar_value
from .hyper import HYPERS, Hyper, SGDHyper

__all__ = ["sgd", "adam", "lamb", "adagrad", "mode_phase"]


def mode_phase(mode: str | None, lr, gamma, noise_std: float) -> tuple[Phase, float | Tensor]:
    """The phase of a step in `mode` (None: the base optimizer alone) and its gamma (None: lr). Noise with
    gamma 0 or sigma 0 extrapolates nowhere: it runs the past update with gamma 0, the base optimizer."""
    gamma = lr if gamma is None else gamma
    if mode is None:
        return Phase.UPDATE, 0.0
    phase = {"local": Phase.UPDATE, "past": Phase.UPDATE_PAST, "noise": Phase.UPDATE_NOISE}[mode]
    if phase == Phase.UPDATE_NOISE and (scalar_value(gamma, "gamma") == 0 or noise_std == 0):
        phase, gamma = Phase.UPDATE_PAST, 0.0
    return phase, gamma


def _phase(mode: str | None, extrapolate: bool, phase: Phase, anchors, last_gammas, hyper: Hyper) -> Phase:
    if extrapolate:
        if mode != "local":
            raise ValueError(
                "extrapolate=True belongs to mode='local'; modes 'past' and 'noise' extrapolate inside the update"
            )
        return Phase.EXTRAPOLATE
    if phase == Phase.UPDATE_PAST and anchors is None:
        if last_gammas is None or not hyper.anchor_free():
            raise ValueError(
                "mode='past' without anchors is the anchor-free past update: it needs last_gammas "
                "and heavy-ball momentum (momentum > 0, no Nesterov, past='update') for SGD, recoveries "
                "for Adam, AdamW and LAMB; otherwise give anchors"
            )
        return Phase.UPDATE_PAST_ANCHOR_FREE
    return phase


def _run(
    phase: Phase,
    hyper: Hyper,
    mode: str | None,
    backend: str,
    params: list[Tensor],
    grads: list[Tensor],
    lists: dict[str, list[Tensor] | None],
    indices,
    grad_scale,
    found_inf,
) -> None:
    """Buckets the lists by (device, dtype), checks every bucket, then runs them (core.run)."""
    if any(values is not None and len(values) != len(params) for values in (grads, *lists.values())):
        raise ValueError("params, grads and every state list must have the same length")
    indices = list(range(len(params))) if indices is None else list(indices)
    by_key = defaultdict(list)
    for i, p in enumerate(params):
        by_key[(p.device, p.dtype)].append(i)
    work = []
    for (_, dtype), members in by_key.items():

        def pick(values, members=members):
            return [] if values is None else [values[i] for i in members]

        bucket_phase_ = bucket_phase(phase, dtype)
        anchors = pick(lists["anchors"])
        if not anchors:  # the parameters are their own anchors where no copy is needed
            if not (bucket_phase_ == Phase.UPDATE_PAST_ANCHOR_FREE or (mode is None and state_dtype(dtype) == dtype)):
                raise ValueError(f"{dtype} parameters in this mode need anchors (copies in the state dtype)")
            anchors = pick(params)
        bucket = Bucket(
            params=pick(params),
            grads=pick(grads),
            anchors=anchors,
            steps=pick(lists["steps"]),
            indices=pick(indices),
            names=[f"param {i}" for i in members],
            momenta=pick(lists.get("momenta")),
            last_gammas=pick(lists.get("last_gammas")),
            second_moments=pick(lists.get("second_moments")),
            max_second_moments=pick(lists.get("max_second_moments")),
        )
        backend_of = backends.for_bucket(backend, bucket.params, bucket.grads)
        check_bucket(bucket, backend_of)
        work.append(core.Work(bucket_phase_, bucket, hyper, backend_of))
    core.run(work, grad_scale, found_inf)


@torch.no_grad()
def sgd(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor] | None,
    steps: list[Tensor],
    anchors: list[Tensor] | None = None,
    last_gammas: list[Tensor] | None = None,
    *,
    lr: float | Tensor,
    gamma: float | Tensor | None = None,
    mode: str | None = "past",
    extrapolate: bool = False,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
    past: str = "update",
    noise_std: float = 0.01,
    seed: int = 0,
    indices: list[int] | None = None,
    backend: str = "auto",
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """One ExtrapSGD step (mode None: one torch.optim.SGD step). `indices` key the noise (default: the
    positions in `params`)."""
    check_hyperparameters(
        lr=lr,
        gamma=gamma,
        momentum=momentum,
        dampening=dampening,
        weight_decay=weight_decay,
        nesterov=nesterov,
        noise_std=noise_std,
        past=past,
        **({} if mode is None else {"mode": mode}),
    )
    phase, gamma = mode_phase(mode, lr, gamma, noise_std)
    hyper = SGDHyper(
        lr=lr,
        gamma=gamma,
        momentum=momentum,
        dampening=dampening,
        weight_decay=weight_decay,
        nesterov=nesterov,
        maximize=maximize,
        past_grad=past == "grad",
        noise_std=noise_std,
        seed=seed,
    )
    phase = _phase(mode, extrapolate, phase, anchors, last_gammas, hyper)
    if (momentum != 0) != (momentum_buffers is not None):
        raise ValueError("momentum_buffers are given exactly when momentum > 0")
    lists = dict(
        anchors=anchors,
        steps=steps,
        momenta=momentum_buffers,
        last_gammas=last_gammas if phase == Phase.UPDATE_PAST_ANCHOR_FREE else None,
    )
    _run(phase, hyper, mode, backend, params, grads, lists, indices, grad_scale, found_inf)


def _adaptive(
    base: str,
    params,
    grads,
    exp_avgs,
    exp_avg_sqs,
    max_exp_avg_sqs,
    steps,
    anchors,
    mode,
    extrapolate,
    backend,
    indices,
    grad_scale,
    found_inf,
    recoveries=None,
    **options,
) -> None:
    check_hyperparameters(
        lr=options["lr"],
        gamma=options["gamma"],
        weight_decay=options["weight_decay"],
        noise_std=options["noise_std"],
        **({} if mode is None else {"mode": mode}),
    )
    phase, gamma = mode_phase(mode, options["lr"], options.pop("gamma"), options["noise_std"])
    amsgrad = {"amsgrad": True} if max_exp_avg_sqs is not None else {}  # (LAMB has no amsgrad)
    hyper = HYPERS[base](gamma=gamma, **amsgrad, **options)
    phase = _phase(mode, extrapolate, phase, anchors, recoveries, hyper)
    lists = dict(
        anchors=anchors,
        steps=steps,
        momenta=exp_avgs,
        second_moments=exp_avg_sqs,
        max_second_moments=max_exp_avg_sqs,
        last_gammas=recoveries,
    )
    _run(phase, hyper, mode, backend, params, grads, lists, indices, grad_scale, found_inf)


@torch.no_grad()
def adam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor] | None,
    steps: list[Tensor],
    anchors: list[Tensor] | None = None,
    *,
    lr: float | Tensor,
    betas: tuple = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
    gamma: float | Tensor | None = None,
    mode: str | None = "past",
    extrapolate: bool = False,
    noise_std: float = 0.01,
    seed: int = 0,
    indices: list[int] | None = None,
    backend: str = "auto",
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    recoveries: list[Tensor] | None = None,
) -> None:
    """One ExtrapAdam step (decoupled_weight_decay=True: ExtrapAdamW; mode None: one torch.optim.Adam step);
    amsgrad where `max_exp_avg_sqs` is given. mode="past" without anchors is the anchor-free past update on
    fp32/fp64 parameters: `recoveries` are the classes' state "recovery" (one 2-element tensor of the state dtype
    per parameter, zeros to start; recovery.py), read and recorded by the step."""
    _adaptive(
        "adam",
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        max_exp_avg_sqs,
        steps,
        anchors,
        mode,
        extrapolate,
        backend,
        indices,
        grad_scale,
        found_inf,
        recoveries,
        lr=lr,
        betas=tuple(betas),
        eps=eps,
        weight_decay=weight_decay,
        decoupled=decoupled_weight_decay,
        maximize=maximize,
        gamma=gamma,
        noise_std=noise_std,
        seed=seed,
    )


@torch.no_grad()
def lamb(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    anchors: list[Tensor] | None = None,
    *,
    lr: float | Tensor,
    betas: tuple = (0.9, 0.999),
    eps: float = 1e-6,
    weight_decay: float = 0.01,
    adam_w_mode: bool = True,
    bias_correction: bool = True,
    grad_averaging: bool = True,
    max_grad_norm: float = 1.0,
    use_nvlamb: bool = False,
    gamma: float | Tensor | None = None,
    mode: str | None = "past",
    extrapolate: bool = False,
    noise_std: float = 0.01,
    seed: int = 0,
    indices: list[int] | None = None,
    backend: str = "auto",
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    recoveries: list[Tensor] | None = None,
) -> None:
    """One ExtrapLAMB step (mode None: one Apex FusedLAMB step), clipped by the global norm of all `grads`.
    mode="past" without anchors is the anchor-free past update, with `recoveries` as in `adam` (the recorded
    weights include each tensor's trust ratio)."""
    _adaptive(
        "lamb",
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        None,
        steps,
        anchors,
        mode,
        extrapolate,
        backend,
        indices,
        grad_scale,
        found_inf,
        recoveries,
        lr=lr,
        betas=tuple(betas),
        eps=eps,
        weight_decay=weight_decay,
        decoupled=adam_w_mode,
        bias_correction=bias_correction,
        grad_averaging=grad_averaging,
        max_grad_norm=max_grad_norm,
        use_nvlamb=use_nvlamb,
        gamma=gamma,
        noise_std=noise_std,
        seed=seed,
    )


@torch.no_grad()
def adagrad(
    params: list[Tensor],
    grads: list[Tensor],
    state_sums: list[Tensor],
    steps: list[Tensor],
    anchors: list[Tensor] | None = None,
    *,
    lr: float | Tensor,
    lr_decay: float = 0.0,
    weight_decay: float = 0.0,
    eps: float = 1e-10,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
    gamma: float | Tensor | None = None,
    mode: str | None = "past",
    extrapolate: bool = False,
    noise_std: float = 0.01,
    seed: int = 0,
    indices: list[int] | None = None,
    backend: str = "auto",
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """One ExtrapAdagrad step (mode None: one torch.optim.Adagrad step; decoupled_weight_decay=True: Apex
    FusedAdagrad's adagrad_w_mode). `state_sums` are torch.optim.Adagrad's "sum" (its running sum of g'^2,
    started at initial_accumulator_value), in the state dtype."""
    _adaptive(
        "adagrad",
        params,
        grads,
        None,
        state_sums,
        None,
        steps,
        anchors,
        mode,
        extrapolate,
        backend,
        indices,
        grad_scale,
        found_inf,
        lr=lr,
        lr_decay=lr_decay,
        weight_decay=weight_decay,
        eps=eps,
        decoupled=decoupled_weight_decay,
        maximize=maximize,
        gamma=gamma,
        noise_std=noise_std,
        seed=seed,
    )
