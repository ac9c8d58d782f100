"""GDA (Wang et al., ICLR 2024, "A Hard-to-Beat Baseline for Training-free CLIP-based Adaptation",
arXiv 2402.04087): Gaussian discriminant analysis on the cached views, added to zero-shot CLIP.

Training-free and closed form (official code ``mrflogs/ICLR24@560fe21``, main_few_shots.py)::

    x_j     (M, D)  support vectors: every cached view of every train image, each L2-normalised
                    separately (M = N V; the clean view when the store has no views, V = 1)
    mu_k    (K, D)  mean of class k's support vectors
    S       (D, D)  unbiased covariance of the class-centred vectors x_j - mu_{y_j} (torch ``cov``)
    P       (D, D)  = D pinv((M - 1) S + tr(S) I)       the shared "KS" shrinkage precision
    W_k     (K, D)  = P mu_k
    b_k     (K,)    = log(1/K) - mu_k^T P mu_k / 2      uniform class prior
    logits  (M', K) = s normalize(f) @ normalize(t)^T + alpha (normalize(f) @ W^T + b)

s is the store's logit scale (GDA: 100), t the store's classifier. alpha = 0 gives the zero-shot
logits exactly. alpha is chosen on the few-shot val split from the official 7-value grid (ties: the
first); without val it is fixed (``GDA_ALPHA_NO_VAL``).

Degenerate case: when every class has a single support vector (1 shot and no augmented views), S = 0,
P = pinv(0) = 0 and W = 0: GDA is zero-shot CLIP. The run then uses alpha = 0 and says so.

Artifact: ``weight`` (K, D) float32 = W, ``bias`` (K,) float32 = b, ``alpha`` (0-d float32).

Classes without images (``fit --classes base-to-new``; official main_base2new.py): for each new
class c with normalised text t_c, X_c (k, D) are the k = 64 support vectors nearest t_c (by cosine)::

    mu_c    (D,)    = mean of X_c's k rows and 16 copies of t_c
    P       (D, D)  = mean over c of D pinv(Z_c^T Z_c + tr(S_c) I), Z_c = X_c - t_c, S_c = Z_c^T Z_c / (k - 1)
    W, b            as above from mu and P, with 1/K_new as the prior; alpha is the base run's
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from cacheclip.datasets.templates import IMAGENET7
from cacheclip.errors import ConfigError
from cacheclip.fit.adapters import zero_shot_logits
from cacheclip.fit.methods.base import (
    FitContext,
    FitData,
    Method,
    NewClassRule,
    Predictor,
    RunPlan,
    Trained,
    register_method,
    select_on_val,
    view_differences,
)
from cacheclip.fit.metrics import classification_metrics
from cacheclip.settings import setting

GDA_ALPHAS = (1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0)  # official grid (main_few_shots.py L70)
# Without val there is nothing to choose alpha on, and GDA publishes no fixed value: its ImageNet
# alpha is chosen on the test set, run by run. 10 is the one such value read (logs/fewshots.log of
# mrflogs/ICLR24: seed 3, 16 shots, best_val_alpha 10.0). GDA's term shrinks roughly like 1/M, and
# other datasets' logged alphas grow with the shot count, so 10 may overweight it at 1-2 shots;
# --no-val holdout chooses alpha on held-out train images instead.
GDA_ALPHA_NO_VAL = 10.0
GDA_LOGIT_SCALE = 100.0  # the official zero-shot scale (L71, L80)
GDA_VIEWS = 10  # augment_epoch in every few-shot config
GDA_SCALE, GDA_IMAGENET_SCALE = (0.5, 1.0), (0.08, 1.0)  # RandomResizedCrop scale of the views
NEW_NEIGHBOURS = 64  # support vectors nearest a new class's text that stand in for its images (main_base2new.py)
NEW_TEXT_COPIES = 16  # copies of its text averaged with them into its mean (main_base2new.py; its runs: 16 shots)
ROWS = 8192  # support vectors per chunk of the scatter (bounds its float64 copy near 64 MiB at D = 1024)


@dataclass(frozen=True)
class GdaConfig:
    """GDA's settings: the alpha grid searched on val, and alpha without val."""

    alphas: tuple[float, ...] = setting(
        GDA_ALPHAS, "weight(s) alpha of the GDA term, chosen on val (official 7-value grid)", flag="--gda-alpha"
    )
    alpha_no_val: float = setting(
        GDA_ALPHA_NO_VAL,
        "alpha without val (a single --gda-alpha is used as given); 10: GDA's ImageNet choice at 16 shots",
        flag="--gda-alpha-no-val",
    )

    def validate(self) -> None:
        if min(*self.alphas, self.alpha_no_val) < 0:
            raise ConfigError("--gda-alpha and --gda-alpha-no-val must be >= 0", "e.g. --gda-alpha 0.1,1,10")


@dataclass
class GdaFit:
    """The fitted discriminant: weight W (K, D), bias b (K,) float32; degenerate when S = 0."""

    weight: torch.Tensor
    bias: torch.Tensor
    degenerate: bool


# ---------------------------------------------------------------- the math


def unit_chunks(x: torch.Tensor, labels: torch.Tensor):
    """(normalize(rows) float64, their labels) over row chunks of x (M, D): the same split, hence the
    same values, on every pass, and never a whole (M, D) float64 copy."""
    return ((F.normalize(rows.double(), dim=-1), y) for rows, y in zip(x.split(ROWS), labels.split(ROWS), strict=True))


def class_means(x: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """mu (K, D) float64: the mean of each class's normalised rows of x (M, D); every class needs a row."""
    counts = torch.bincount(labels, minlength=num_classes)
    if counts.numel() != num_classes or bool((counts == 0).any()):
        raise ValueError(f"GDA needs a support vector of every class in [0, {num_classes})")
    sums = torch.zeros(num_classes, x.shape[1], dtype=torch.float64)
    for rows, y in unit_chunks(x, labels):
        sums.index_add_(0, y, rows)
    return sums / counts.unsqueeze(1).double()


def centred_scatter(x: torch.Tensor, labels: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """(M - 1) S (D, D) float64 for the residuals z_j = normalize(x_j) - mu_{y_j}: Z^T Z - M zbar zbar^T.

    Re-centred on the column means zbar as ``cov`` does (zero up to rounding: each class's residuals
    sum to zero). A class with one vector has a residual of exactly 0 (its mean is that vector)."""
    d = x.shape[1]
    scatter, total = torch.zeros(d, d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
    for rows, y in unit_chunks(x, labels):
        z = rows - mu[y]
        scatter.addmm_(z.t(), z)
        total += z.sum(dim=0)
    mean = total / x.shape[0]
    return scatter.sub_(torch.outer(mean, mean).mul_(x.shape[0]))


def fit_gda(x: torch.Tensor, labels: torch.Tensor, num_classes: int) -> GdaFit:
    """W (K, D) and b (K,) from support vectors x (M, D) (normalised here) and labels (M,).

    float64 inside: the ridge tr(S) I is ~1/M of the scatter's scale, so the system's condition
    grows with M (1.4e3 at M = 63,520); float32 would cost W about 1e-3 of its precision. When
    tr(S) > 0 the ridge (M - 1) S + tr(S) I is positive definite, so its pseudo-inverse is its
    inverse: a Cholesky solve (exact, and cheaper than ``pinv``'s eigendecomposition). tr(S) = 0
    means S = 0 (one vector per class): then P = pinv(0) = 0, W = 0, b = log(1/K)."""
    m, d = x.shape
    labels = labels.long()
    mu = class_means(x, labels, num_classes)  # (K, D)
    scatter = centred_scatter(x, labels, mu)  # (M - 1) S
    trace_s = float(scatter.diagonal().sum()) / max(m - 1, 1)
    prior = math.log(1.0 / num_classes)
    if trace_s <= 0.0:
        return GdaFit(torch.zeros(num_classes, d), torch.full((num_classes,), prior), True)
    scatter.diagonal().add_(trace_s)  # in place: now the ridge (M - 1) S + tr(S) I
    weight = d * torch.cholesky_solve(mu.t(), torch.linalg.cholesky(scatter)).t()  # (P mu_k)^T, (K, D)
    bias = prior - 0.5 * (weight * mu).sum(dim=1)
    return GdaFit(weight.float(), bias.float(), False)


def gda_term(feats: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """normalize(f) @ W^T + b: raw (M', D) -> (M', K)."""
    return F.normalize(feats.float(), dim=-1) @ weight.t() + bias


def gda_logits(feats, class_weights, scale: float, weight, bias, alpha: float) -> torch.Tensor:
    """s cos(f, t) + alpha (normalize(f) @ W^T + b): raw (M', D) -> (M', K); alpha = 0: zero-shot exactly."""
    feats = feats.float()
    return zero_shot_logits(feats, class_weights, scale) + alpha * gda_term(feats, weight, bias)


def new_class_fit(support: torch.Tensor, text: torch.Tensor) -> GdaFit:
    """GDA's classifier for classes without images from the base support vectors (M, D) and the new
    classes' text weights (K_new, D) (see the module doc; both normalised here)."""
    x, t = F.normalize(support.double(), dim=-1), F.normalize(text.double(), dim=-1)
    k, d = min(NEW_NEIGHBOURS, len(x)), x.shape[1]
    nearest = (t @ x.t()).topk(k, dim=1).indices  # (K_new, k)
    pairs = list(zip(nearest, t, strict=True))
    mu = torch.stack([(x[rows].sum(0) + NEW_TEXT_COPIES * tc) / (k + NEW_TEXT_COPIES) for rows, tc in pairs])
    precision = sum(ks_precision(x[rows] - tc, d) for rows, tc in pairs) / len(t)  # centred on t_c, not mu_c
    weight = mu @ precision  # (P mu_c)^T: P is symmetric
    bias = math.log(1.0 / len(t)) - 0.5 * (weight * mu).sum(dim=1)
    return GdaFit(weight.float(), bias.float(), False)


def ks_precision(z: torch.Tensor, d: int) -> torch.Tensor:
    """D pinv(Z^T Z + tr(S) I) (D, D) float64 for Z (k, D), S = Z^T Z / (k - 1): by Woodbury, a k x k
    solve, (D / tau) (I - Z^T (tau I + Z Z^T)^-1 Z) with tau = tr(S) > 0; pinv(0) = 0 when tau = 0."""
    tau = float((z * z).sum()) / max(len(z) - 1, 1)
    if tau <= 0.0:
        return torch.zeros(d, d, dtype=torch.float64)
    inner = torch.eye(len(z), dtype=torch.float64) * tau + z @ z.t()
    return (torch.eye(d, dtype=torch.float64) - z.t() @ torch.linalg.solve(inner, z)) * (d / tau)


# ---------------------------------------------------------------- the method


def candidate_alphas(cfg: GdaConfig, has_val: bool) -> list[float]:
    """The grid with val; without, one value (the single one given, else ``alpha_no_val``)."""
    if has_val or len(cfg.alphas) == 1:
        return [float(a) for a in cfg.alphas]
    return [float(cfg.alpha_no_val)]


def _support_text(ctx: FitContext) -> str:
    if ctx.views == "aug":
        return f"all {ctx.data.aug_views} cached views per image, each L2-normalised (M = N x {ctx.data.aug_views})"
    return "the clean view of each image, L2-normalised (M = N)"


def payload(ctx: FitContext) -> dict[str, Any]:
    return {
        "alphas": candidate_alphas(ctx.config, ctx.has_val),
        "support": _support_text(ctx),
        "views_used": ctx.views,
        "precision": "D pinv((M-1) S + tr(S) I), float64 (Cholesky solve)",
        "zero_shot_scale": ctx.data.logit_scale,
    }


def train(ctx: FitContext, plans: list[RunPlan]) -> list[Trained]:
    cfg, data = ctx.config, ctx.data
    out = []
    for done, plan in enumerate(plans):
        start = time.perf_counter()
        _, views, labels = ctx.train_views(plan.split)  # (N, V, D); V = 1 for the clean view
        n, v, d = views.shape
        fit = fit_gda(views.reshape(n * v, d), labels.repeat_interleave(v), data.num_classes)
        val, val_set = ctx.official_val(plan.split)  # official: the whole val split, as GDA
        source = "full val split" if val_set == "full" else ctx.selection_source
        if fit.degenerate:  # every alpha gives the zero-shot argmax: nothing to choose
            alphas, best = [0.0], 0
            predictors = [_predictor(fit, data, 0.0)]
            selection = {"on": "none", "candidates": [{"alpha": 0.0}], "chosen": {"alpha": 0.0}}
            selection["reason"] = (
                f"degenerate: one support vector per class ({_support_text(ctx)}, {ctx.shots} shot), so S = 0, "
                "P = pinv(0) = 0 and W = 0: GDA is zero-shot CLIP (alpha = 0)"
            )
            val_metrics = classification_metrics(predictors[0](val[0]), val[1], data.num_classes) if val else None
        else:
            alphas = candidate_alphas(cfg, val is not None)
            predictors = [_predictor(fit, data, a) for a in alphas]
            best, selection, val_metrics = select_on_val([{"alpha": a} for a in alphas], predictors, val, data, source)
            if val is None:
                why = "as given" if len(cfg.alphas) == 1 else "--gda-alpha-no-val; GDA chose its ImageNet alpha on test"
                selection["reason"] = f"no val split: alpha fixed at {alphas[0]:g} ({why})"
        alpha = alphas[best]
        chosen = {"alpha": alpha}
        config = {
            **payload(ctx),
            "chosen": chosen,
            "degenerate": fit.degenerate,
            "classifier": f"zero-shot ({data.classifier}) + alpha x GDA (K, D) + bias",
        }
        tensors = {"weight": fit.weight.contiguous(), "bias": fit.bias.contiguous(), "alpha": torch.tensor(alpha)}
        meta = {
            "method_config": chosen,
            "classnames": data.classnames,
            "logit_scale": data.logit_scale,
            "logits": "logit_scale * normalize(f) @ normalize(class_weights).T "
            "+ alpha * (normalize(f) @ weight.T + bias)",
        }
        seconds = time.perf_counter() - start
        out.append(Trained(plan, predictors[best], selection, val_metrics, config, (tensors, meta), seconds, val_set))
        ctx.tick(done + 1, len(plans))
    return out


def _predictor(fit: GdaFit, data: FitData, alpha: float):
    return lambda feats: gda_logits(feats, data.class_weights, data.logit_scale, fit.weight, fit.bias, alpha)


def from_artifact(tensors: dict, meta: dict, class_weights: torch.Tensor, logit_scale: float, device: str):
    weight, bias, cw = tensors["weight"].to(device), tensors["bias"].to(device), class_weights.to(device)
    alpha = float(tensors["alpha"])
    return lambda feats: gda_logits(feats.to(device), cw, logit_scale, weight, bias, alpha).cpu()


def new_classes(ctx: FitContext, trained: Trained, new_weights: torch.Tensor) -> Predictor:
    """The run's alpha with a GDA classifier synthesised for the new classes from the run's own
    (base-class) support vectors."""
    _, views, _ = ctx.train_views(trained.plan.split)
    fit = new_class_fit(views.reshape(-1, views.shape[-1]), new_weights)
    alpha, scale = float(trained.artifact[0]["alpha"]), ctx.data.logit_scale
    return lambda feats: gda_logits(feats, new_weights, scale, fit.weight, fit.bias, alpha)


def differences(ctx: FitContext) -> list[str]:
    data = ctx.data
    imagenet = data.dataset == "imagenet"
    cfg = ctx.config
    alpha = candidate_alphas(cfg, False)[0]
    why = "as given" if len(cfg.alphas) == 1 else "--gda-alpha-no-val, GDA's ImageNet choice on test at 16 shots"
    diffs = selection_differences(ctx, "alpha", "GDA", f"alpha = {alpha:g} ({why})")
    if ctx.views == "aug":
        scale, paper_scale = data.aug_scale, GDA_IMAGENET_SCALE if imagenet else GDA_SCALE
        if scale is not None and scale != paper_scale:
            diffs.append(f"support views cropped with scale {scale} (GDA: {paper_scale})")
        if data.aug_views != GDA_VIEWS:
            diffs.append(f"{data.aug_views} cached views per image (GDA: {GDA_VIEWS})")
    else:
        diffs += view_differences(ctx, "GDA", f"{GDA_VIEWS} augmented views per image", GDA_VIEWS)
        if ctx.shots == 1:
            diffs.append("one support vector per class: the covariance is 0, so GDA is zero-shot CLIP (alpha = 0)")
    diffs += template_differences(data, "GDA")
    if data.logit_scale != GDA_LOGIT_SCALE:
        diffs.append(f"zero-shot term scaled by {data.logit_scale:g}, the store's logit scale (GDA: 100)")
    diffs.append("covariance and its inverse in float64 (GDA: float32 on GPU)")
    return diffs


def selection_differences(ctx: FitContext, what: str, paper: str, fixed: str) -> list[str]:
    """How the choice of ``what`` departs from GDA's (and ProKeR's, which shares its code base): they
    choose on the full val split, ImageNet's on test; ``fixed`` says what a run without val uses."""
    imagenet, k = ctx.data.dataset == "imagenet", min(ctx.shots, 4)
    per_class = f"{k} image{'s' if k > 1 else ''} per class"
    theirs = "ImageNet's chosen on test, run by run" if imagenet else "chosen on the full val split"
    sampling = f"few-shot images sampled by cacheclip, CoOp's procedure ({paper}: random.sample, one RNG stream)"
    if ctx.official and ctx.has_full_val:  # --protocol official: the full val split, as theirs
        return [sampling]
    if ctx.selection_source == "val":
        line = f"{what} chosen on the few-shot val split, {per_class} ({paper}: {theirs})"
    elif ctx.selection_source == "holdout":
        line = f"{what} chosen on {per_class} held out of train ({paper}: {theirs})"
    else:
        line = f"{what} fixed without val: {fixed} ({paper}: {theirs})"
    return [line, sampling]


def template_differences(data: FitData, paper: str) -> list[str]:
    """GDA's (and ProKeR's) text classifier: the dataset's single template (Tip-Adapter's, assumed
    CoOp's), the normalised imagenet7 ensemble on ImageNet."""
    t, spec = data.per_template.shape[0], data.attrs.get("templates_spec", "default")
    if data.dataset == "imagenet":
        if sorted(data.templates) != sorted(IMAGENET7):  # an ensemble is a mean: order is irrelevant
            return [f"ImageNet classifier from {t} template(s) ({spec}) ({paper}: the imagenet7 ensemble)"]
    elif spec != "default" or t != 1:
        return [f"text classifier from {t} template(s) ({spec}) ({paper}: the dataset's single template)"]
    return []


register_method(
    Method(
        name="gda",
        summary="Gaussian discriminant analysis on the cached views added to zero-shot CLIP, training-free "
        "(Wang et al. 2024, arXiv 2402.04087)",
        config=GdaConfig,
        payload=payload,
        train=train,
        differences=differences,
        from_artifact=from_artifact,
        judges_templates=True,
        paper_classifier="ensemble",
        new_classes=NewClassRule(
            f"GDA's base-to-new rule (official main_base2new.py): each new class's mean is that of the "
            f"{NEW_NEIGHBOURS} base support vectors nearest its text weights and {NEW_TEXT_COPIES} copies of them, "
            "the shared precision the mean of their KS estimates centred on the text, with the base run's alpha",
            new_classes,
            differences=(
                "base classes fitted with GDA's few-shot estimator, D pinv((M-1) S + tr(S) I) (its base2new "
                "script: pinv of the mean per-class covariance, no shrinkage)",
            ),
        ),
    )
)
