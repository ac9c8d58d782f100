"""Linear probe: L2-regularised multinomial logistic regression on frozen CLIP image features.

CLIP (Radford et al. 2021, arXiv 2103.00020, sec. 3.2) scored its features with sklearn's
``LogisticRegression`` (lbfgs, L2, C searched on validation); CoOp (Zhou et al. 2022,
arXiv 2109.01134) ran that protocol as its few-shot baseline, searching C on the few-shot val.
Here the same model is fitted in torch, full batch, with L-BFGS (no sklearn dependency).

Objective, for L2-normalised clean features x_i (N, D), labels y_i, weights W (K, D), bias b (K,)::

    J(W, b) = (1/N) sum_i CE(W x_i + b, y_i) + ||W||^2 / (2 C N)

which is sklearn's multinomial objective ``C sum_i CE_i + ||W||^2 / 2`` (bias not penalised)
divided by ``C N``: the same minimiser for every C, so C means what it means in sklearn.
(Checked against sklearn 1.x: ``test_matches_sklearn`` in tests/test_baselines.py, skipped
where sklearn is not installed.)

Exactness shortcut: the minimiser's W lies in the span of the training features (any other
component adds to ||W||^2 and nothing to the fit), so when N < D the problem is solved in an
orthonormal basis Q (D, N) of that span, ``W = W_r Q^T``: the same optimum at a fraction of
the cost. C values are solved in increasing order, each warm-started from the previous one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from cacheclip.errors import ConfigError
from cacheclip.fit.methods.base import (
    FitContext,
    Method,
    NewClassRule,
    RunPlan,
    Trained,
    register_method,
    select_on_val,
    zero_shot_on_new,
)
from cacheclip.fit.trainer import run_apart
from cacheclip.settings import setting

MAX_ITER = 1000  # L-BFGS iterations per C at most (CLIP and CoOp: sklearn max_iter=1000)
GRAD_TOL = 1e-5  # stop when max|grad J| <= GRAD_TOL * max|grad J at W = 0, b = 0|
CHANGE_TOL = 1e-9  # ... or when the objective or parameters change less than this
HISTORY = 20  # L-BFGS memory
LP_CS = tuple(float(f"{10 ** (k / 2):.3g}") for k in range(-4, 9))  # 1e-2 .. 1e4, half-decades (13)


@dataclass(frozen=True)
class LinearProbeConfig:
    """The linear probe's settings: the C grid searched on val, and C without val."""

    cs: tuple[float, ...] = setting(
        LP_CS, "C value(s) (sklearn's C), chosen on val (1e-2..1e4, 13 values)", flag="--lp-c"
    )
    c_no_val: float = setting(10.0, "C when there is no val (and several --lp-c values)", flag="--lp-c-no-val")

    def validate(self) -> None:
        if min(*self.cs, self.c_no_val) <= 0:
            raise ConfigError("--lp-c values must be > 0", "e.g. --lp-c 0.1,1,10")


@dataclass
class LogisticFit:
    """One fitted C: weights (K, D), bias (K,), and how the solve went."""

    c: float
    weight: torch.Tensor
    bias: torch.Tensor
    iterations: int
    objective: float


def objective(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    """J(W, b) = mean CE(x W^T + b, y) + ||W||^2 / (2 C N); x (N, D), W (K, D), b (K,)."""
    return F.cross_entropy(x @ weight.t() + bias, y) + weight.pow(2).sum() / (2.0 * c * x.shape[0])


def _span_basis(x: torch.Tensor) -> torch.Tensor | None:
    """Orthonormal (D, N) basis of the rows of x (N, D) when N < D, else None (solve in full)."""
    n, d = x.shape
    return torch.linalg.qr(x.t(), mode="reduced")[0] if n < d else None


def _solve(
    x: torch.Tensor, y: torch.Tensor, c: float, weight: torch.Tensor, bias: torch.Tensor, grad_tol: float
) -> tuple[int, float]:
    """Minimise J in place from (weight, bias); returns (iterations, final objective)."""
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    opt = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=MAX_ITER,
        max_eval=MAX_ITER * 5 // 4,
        tolerance_grad=grad_tol,
        tolerance_change=CHANGE_TOL,
        history_size=HISTORY,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = objective(weight, bias, x, y, c)
        loss.backward()
        return loss

    opt.step(closure)
    iterations = int(opt.state[opt.param_groups[0]["params"][0]].get("n_iter", 0))
    with torch.no_grad():
        final = float(objective(weight, bias, x, y, c))
    weight.requires_grad_(False)
    bias.requires_grad_(False)
    return iterations, final


def fit_logistic_path(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    cs: Sequence[float],
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> list[LogisticFit]:
    """Fit J for every C in ``cs`` (returned in that order) on features (N, D), labels (N,).

    Features are used as given (callers normalise). Solved from W = 0, b = 0 for the smallest
    C, then in increasing C, each from the previous solution. Deterministic on CPU; the
    returned tensors are on the CPU.
    """
    x = features.to(device=device, dtype=dtype)
    y = labels.to(device).long()
    basis = _span_basis(x)
    xr = x @ basis if basis is not None else x  # (N, r)
    weight = torch.zeros(num_classes, xr.shape[1], dtype=dtype, device=device)  # (K, r)
    bias = torch.zeros(num_classes, dtype=dtype, device=device)
    fits: dict[int, LogisticFit] = {}
    grad_tol = None
    for i in sorted(range(len(cs)), key=lambda j: cs[j]):
        if grad_tol is None:
            grad_tol = GRAD_TOL * _max_grad_at_zero(xr, y, num_classes, cs[i])
        iterations, final = _solve(xr, y, float(cs[i]), weight, bias, grad_tol)
        full = weight @ basis.t() if basis is not None else weight.clone()  # (K, D)
        fits[i] = LogisticFit(float(cs[i]), full.float().cpu(), bias.clone().float().cpu(), iterations, final)
    return [fits[i] for i in range(len(cs))]


def _max_grad_at_zero(x: torch.Tensor, y: torch.Tensor, k: int, c: float) -> float:
    """max |grad J| at W = 0, b = 0: the scale the gradient tolerance is relative to."""
    w = torch.zeros(k, x.shape[1], dtype=x.dtype, requires_grad=True)
    b = torch.zeros(k, dtype=x.dtype, requires_grad=True)
    objective(w, b, x, y, c).backward()
    return float(torch.cat([w.grad.flatten(), b.grad]).abs().max())


def probe_logits(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Logits (M, K) = normalize(f) @ W^T + b for raw features (M, D)."""
    return F.normalize(features.float(), dim=-1) @ weight.t() + bias


# ---------------------------------------------------------------- the method


def candidate_cs(cfg: LinearProbeConfig, has_val: bool) -> list[float]:
    """The C values a run fits: the grid with val; without, the single value given or ``c_no_val``."""
    if has_val:
        return [float(c) for c in cfg.cs]
    return [float(cfg.cs[0] if len(cfg.cs) == 1 else cfg.c_no_val)]


def payload(ctx: FitContext) -> dict[str, Any]:
    return {
        "cs": candidate_cs(ctx.config, ctx.has_val),
        "features": "clean, L2-normalised",
        "solver": {
            "name": "torch L-BFGS (strong Wolfe), full batch, float32",
            "max_iter": MAX_ITER,
            "grad_tol": f"{GRAD_TOL:g} x max|grad| at zero",
            "change_tol": CHANGE_TOL,
            "history": HISTORY,
            "warm_start": "increasing C",
        },
    }


def train(ctx: FitContext, plans: list[RunPlan]) -> list[Trained]:
    """Each seed's C path on one thread, the seeds at once on the cores (``run_apart``): L-BFGS is a
    chain of small products, which a second thread barely speeds up and which stall outright when
    another process holds a core (3.4x slower beside one busy process at 100 classes on two threads).
    Features are read, and val scored, here, one seed after another."""
    cfg, data = ctx.config, ctx.data
    inputs = []
    for plan in plans:
        feats, labels, _ = ctx.train_features(plan.split, aug=False)
        val = ctx.val_features(plan.split)
        inputs.append((F.normalize(torch.from_numpy(feats).float(), dim=-1), torch.from_numpy(labels), val))

    def solve(r: int) -> tuple[list[LogisticFit], float]:
        start = time.perf_counter()
        x, y, val = inputs[r]
        fits = fit_logistic_path(x, y, data.num_classes, candidate_cs(cfg, val is not None), device=ctx.device)
        return fits, time.perf_counter() - start

    solved = run_apart(len(plans), solve, ctx.tick, ctx.device)
    done = zip(plans, inputs, solved, strict=True)
    return [_trained(ctx, plan, val, fits, seconds) for plan, (_, _, val), (fits, seconds) in done]


def _trained(ctx: FitContext, plan: RunPlan, val, fits: list[LogisticFit], seconds: float) -> Trained:
    cfg, data = ctx.config, ctx.data
    start = time.perf_counter()
    cs = [f.c for f in fits]
    predictors = [_predictor(f) for f in fits]
    best, selection, val_metrics = select_on_val([{"C": c} for c in cs], predictors, val, data, ctx.selection_source)
    if val is None:
        selection["reason"] = f"no val split: C fixed at {cs[0]:g}" + (
            " (the default for runs without val)" if len(cfg.cs) > 1 else ""
        )
    chosen = fits[best]
    selection["solver"] = [{"C": f.c, "iterations": f.iterations, "objective": f.objective} for f in fits]
    config = {**payload(ctx), "chosen": {"C": chosen.c}, "classifier": "learned (K, D) + bias"}
    meta = {
        "method_config": {"C": chosen.c},
        "classnames": data.classnames,
        "logit_scale": data.logit_scale,
        "logits": "normalize(f) @ weight.T + bias",
    }
    artifact = ({"weight": chosen.weight, "bias": chosen.bias}, meta)
    return Trained(
        plan, predictors[best], selection, val_metrics, config, artifact, seconds + time.perf_counter() - start
    )


def _predictor(fit: LogisticFit):
    return lambda feats: probe_logits(feats, fit.weight, fit.bias)


def from_artifact(tensors: dict, meta: dict, class_weights: torch.Tensor, logit_scale: float, device: str):
    weight, bias = tensors["weight"].to(device), tensors["bias"].to(device)
    return lambda feats: probe_logits(feats.to(device), weight, bias).cpu()


def differences(ctx: FitContext) -> list[str]:
    return [
        "features L2-normalised before the fit (CLIP and CoOp's linear probe: raw features)",
        f"C chosen on val from a fixed grid of {len(ctx.config.cs)} values "
        "(CoOp: 1e-6..1e6 in 7 steps, then 8 binary-search steps)",
        "torch L-BFGS (CLIP and CoOp: sklearn lbfgs)",
    ]


register_method(
    Method(
        name="linear-probe",
        summary="logistic regression on frozen CLIP features, C chosen on val (Radford et al. 2021; CoOp's baseline)",
        config=LinearProbeConfig,
        payload=payload,
        train=train,
        differences=differences,
        from_artifact=from_artifact,
        new_classes=NewClassRule(
            "zero-shot CLIP with the new classes' text weights: the probe's weights and biases are all per "
            "base class, nothing of it is shared with other classes",
            zero_shot_on_new,
        ),
    )
)
