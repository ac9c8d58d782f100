"""TaskRes (Yu et al., CVPR 2023, arXiv 2211.10277): a learned residual on CLIP's text classifier.

    base        t (K, D)   raw (unnormalised) mean over the store's T templates of the class text
                           embeddings ``per_template`` (T, K, D): TaskRes's "regular base"
    classifier  t' = t + alpha * x          x (K, D), the residual, starts at zero, so t' = t
    logits      z = s * normalize(f) @ normalize(t')^T        (M, K), s the store's logit scale
    loss        mean cross-entropy; Adam on x, weight decay as L2 added to the gradient

Official values (``geekyutao/TaskRes@5195359``: train_regular.sh, configs/trainers/TaskRes, Dassl
defaults): alpha 0.5 (Flowers102 1.0), lr 2e-3 (ImageNet 2e-4), 100 epochs below 8 shots and 200
from 8, batch 256 (Dassl drops the last partial batch, or takes all N when N < 256), weight decay
5e-4, betas (0.9, 0.999), one warm-up epoch at 1e-5, then cosine per epoch; the last epoch's
residual is kept. The official code has no validation: here several ``--taskres-alpha`` values
are chosen on the few-shot val split; a single value is used as given.

Randomness: every alpha trains from ``torch.Generator().manual_seed(seed)`` (so a grid entry is
the same run as that alpha alone): per epoch ``randint(V, (N,))`` (one cached view per image;
not drawn when V = 1, the clean view) then ``randperm(N)``. float32 (float64 if given float64).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from cacheclip.datasets.templates import GENERIC_TEMPLATE, IMAGENET7
from cacheclip.errors import ConfigError
from cacheclip.fit.methods.base import FitContext, FitData, Method, RunPlan, Trained, register_method, select_on_val
from cacheclip.fit.train import BestEpoch, last_epoch_record, top1_percent
from cacheclip.settings import setting

COOP_DATASETS = (
    "imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
    "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101",
)  # fmt: skip
ALPHA = {"oxford_flowers": 1.0}  # RESIDUAL_SCALE in train_regular.sh; every other dataset 0.5
LR = {"imagenet": 2e-4}  # OPTIM.LR in train_regular.sh; every other dataset 2e-3
GENERIC_ALPHA, GENERIC_LR = 0.5, 2e-3  # the scripts' common values, also used for other datasets
EPOCHS_FEW, EPOCHS_MANY, MANY_FROM = 100, 200, 8  # 1/2/4 shots: 100, 8/16 shots: 200 (5-7: never run)
WARMUP_EPOCHS, WARMUP_LR = 1, 1e-5  # Dassl constant warm-up
EPS = 1e-8  # torch.optim.Adam's default (Dassl passes none)
OLD_DASSL_BETAS = (0.9, 0.99)  # older Dassl defaults; TaskRes does not pin its Dassl
IMAGENET_BASE = "the 7 imagenet7 templates + 'a photo of a {}.' (8)"  # the official ImageNet base


@dataclass(frozen=True)
class TaskResConfig:
    """TaskRes's settings; ``official`` (None) means the value of the official scripts."""

    alphas: tuple[float, ...] | None = setting(
        None,
        "residual scale(s) alpha; official: per dataset (0.5, Flowers102 1.0); several are chosen on val",
        flag="--taskres-alpha",
        none_word="official",
    )
    lr: float | None = setting(
        None, "Adam lr; official: 2e-3 (ImageNet 2e-4)", flag="--taskres-lr", none_word="official"
    )
    epochs: int | None = setting(
        None, "epochs; official: 100 below 8 shots, 200 from 8", flag="--taskres-epochs", none_word="official"
    )
    batch_size: int = setting(
        256, "images per step (Dassl: the last partial batch dropped)", flag="--taskres-batch-size"
    )
    weight_decay: float = setting(5e-4, "L2 weight decay added to the gradient (Dassl)", flag="--taskres-wd")
    betas: tuple[float, float] = setting((0.9, 0.999), "Adam betas (older Dassl: 0.9,0.99)", flag="--taskres-betas")

    def validate(self) -> None:
        bad = (self.alphas is not None and min(self.alphas) < 0) or (self.lr is not None and self.lr <= 0)
        bad |= (self.epochs is not None and self.epochs < 1) or self.batch_size < 1 or self.weight_decay < 0
        if bad or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(
                "--taskres-alpha must be >= 0, --taskres-lr > 0, --taskres-epochs and --taskres-batch-size >= 1, "
                "--taskres-wd >= 0 and --taskres-betas in [0, 1)",
                "e.g. --taskres-alpha 0.25,0.5,1 --taskres-lr 2e-3",
            )


@dataclass(frozen=True)
class Official:
    """The official (alpha, lr, epochs) for a dataset and shot count, and where they come from."""

    alpha: float
    lr: float
    epochs: int
    scripted: bool  # False: a dataset outside the scripts, given their common values


def official_values(dataset: str, shots: int) -> Official:
    """train_regular.sh's values; datasets outside its 11 get the scripts' common ones."""
    epochs = EPOCHS_MANY if shots >= MANY_FROM else EPOCHS_FEW
    if dataset in COOP_DATASETS:
        return Official(ALPHA.get(dataset, GENERIC_ALPHA), LR.get(dataset, GENERIC_LR), epochs, True)
    return Official(GENERIC_ALPHA, GENERIC_LR, epochs, False)


# ---------------------------------------------------------------- the math


def base_classifier(data: FitData) -> torch.Tensor:
    """t (K, D): raw mean of ``per_template`` (T, K, D), as TaskRes builds its base. Not the store's
    ensemble (a normalised mean): |t| sets how far alpha x moves t'. T = 1: the raw embedding."""
    return data.per_template.float().mean(dim=0)


def taskres_logits(feats: torch.Tensor, base: torch.Tensor, residual: torch.Tensor, alpha: float, scale: float):
    """s * normalize(f) @ normalize(t + alpha x)^T: (M, D) raw -> (M, K). x = 0 or alpha = 0: zero-shot, bitwise."""
    weights = base + alpha * residual
    return scale * (F.normalize(feats.to(base.dtype), dim=-1) @ F.normalize(weights, dim=-1).t())


def residual_grad(f_hat, labels, base, residual, alpha: float, scale: float) -> torch.Tensor:
    """dL/dx (K, D) of the mean cross-entropy L of z = s f^ w^^T, written out (autograd's
    bookkeeping would cost more than a step at small K; L itself is never needed).

    f_hat (B, D) L2-normalised, labels (B,). With w = t + alpha x, n = |w|, w^ = w / n and
    G = (softmax(z) - onehot(y)) / B (B, K)::

        dL/dw^  = s G^T f^                                  (K, D)
        dL/dw_k = (dL/dw^_k - w^_k <w^_k, dL/dw^_k>) / n_k  (through normalize)
        dL/dx   = alpha dL/dw
    """
    w = base + alpha * residual
    norm = w.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # F.normalize's floor
    w_hat = w / norm
    g = torch.softmax(scale * (f_hat @ w_hat.t()), dim=-1)
    g[torch.arange(len(labels), device=labels.device), labels] -= 1.0
    g *= scale / len(labels)  # s G, scaled while it is (B, K)
    g_what = g.t() @ f_hat
    g_what -= w_hat * (w_hat * g_what).sum(dim=-1, keepdim=True)
    return g_what.mul_(alpha / norm)


def lr_per_epoch(lr: float, epochs: int) -> list[float]:
    """Dassl's constant warm-up around CosineAnnealingLR(T_max=epochs), stepped per epoch: epoch
    e < W at 1e-5, then lr (1 + cos(pi (e - W) / epochs)) / 2 (the count restarts after warm-up)."""
    return [
        WARMUP_LR if e < WARMUP_EPOCHS else lr * (1 + math.cos(math.pi * (e - WARMUP_EPOCHS) / epochs)) / 2
        for e in range(epochs)
    ]


def batch_plan(num_images: int, batch_size: int) -> tuple[int, int]:
    """(images per step, steps per epoch): Dassl drops the last partial batch iff N >= batch."""
    return (batch_size, num_images // batch_size) if num_images >= batch_size else (num_images, 1)


def adam(param: torch.Tensor, weight_decay: float, betas: tuple[float, float], fused: bool = True):
    """torch.optim.Adam (what Dassl's "adam" builds), fused where this torch and device have it.
    Public on purpose: calling torch's private kernel would save ~0.07 ms a step, 3% of a run at
    K = 10 and 0.4% at K = 397, where the two (B, D) x (D, K) products dominate."""
    settings = {"lr": 0.0, "betas": tuple(betas), "eps": EPS, "weight_decay": weight_decay}
    if fused:
        try:
            return torch.optim.Adam([param], fused=True, **settings)
        except (RuntimeError, TypeError, ValueError):  # CPU fused Adam arrived in torch 2.4
            pass
    return torch.optim.Adam([param], **settings)


def train_residual(
    views: torch.Tensor,
    labels: torch.Tensor,
    base: torch.Tensor,
    scale: float,
    alpha: float,
    lr: float,
    epochs: int,
    cfg: TaskResConfig,
    generator: torch.Generator,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    on_epoch: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """The last epoch's residual x (K, D), on the CPU. views (N, V, D) raw (any float dtype),
    labels (N,), base t (K, D); batches of ``cfg.batch_size``, Adam with ``cfg``'s decay and betas.
    ``on_epoch(epoch, x)`` sees x after every epoch (1-based), e.g. to keep the best val epoch."""
    n, v, d = views.shape
    dtype = torch.promote_types(base.dtype, torch.float32)
    rows_src = views.to(device).reshape(n * v, d)  # row i V + j: image i, view j (stored dtype)
    y_all = labels.to(device=device, dtype=torch.long)
    t = base.to(device=device, dtype=dtype)
    x = torch.zeros_like(t, requires_grad=True)  # t' = t before the first step
    opt = adam(x, cfg.weight_decay, cfg.betas)
    per_step, steps = batch_plan(n, cfg.batch_size)
    with torch.no_grad():
        for epoch, epoch_lr in enumerate(lr_per_epoch(lr, epochs)):
            view = torch.randint(v, (n,), generator=generator) if v > 1 else torch.zeros(n, dtype=torch.long)
            perm = torch.randperm(n, generator=generator)
            rows = (perm * v + view[perm]).to(device)
            opt.param_groups[0]["lr"] = epoch_lr
            for s in range(steps):
                idx = rows[s * per_step : (s + 1) * per_step]
                f_hat = F.normalize(rows_src.index_select(0, idx).to(dtype), dim=-1)
                x.grad = residual_grad(f_hat, y_all[idx // v], t, x, alpha, scale)
                opt.step()
            if on_epoch is not None:
                on_epoch(epoch + 1, x.detach())
            if progress is not None:
                progress(epoch + 1, epochs)
    return x.detach().cpu()


# ---------------------------------------------------------------- the method


def candidate_alphas(cfg: TaskResConfig, official: Official, has_val: bool) -> list[float]:
    """The official alpha; the given grid with val; without val one value (the single one given,
    else the official one: nothing to choose on)."""
    if cfg.alphas is None:
        return [official.alpha]
    if has_val or len(cfg.alphas) == 1:
        return [float(a) for a in cfg.alphas]
    return [official.alpha]


def _resolved(ctx: FitContext) -> tuple[Official, list[float], float, int]:
    """(official values, alphas, lr, epochs); --protocol official: the scripts' values, whatever was given."""
    cfg, official = ctx.config, official_values(ctx.data.dataset, ctx.shots)
    if ctx.official:
        cfg = replace(cfg, alphas=None, lr=None, epochs=None)
    lr = cfg.lr if cfg.lr is not None else official.lr
    epochs = cfg.epochs if cfg.epochs is not None else official.epochs
    return official, candidate_alphas(cfg, official, ctx.has_val), lr, epochs


def _base_description(data: FitData) -> str:
    t = data.per_template.shape[0]
    spec = data.attrs.get("templates_spec", "default")
    return "the single template's raw embedding" if t == 1 else f"raw mean of the {t} templates of '{spec}'"


def payload(ctx: FitContext) -> dict[str, Any]:
    cfg = ctx.config
    official, alphas, lr, epochs = _resolved(ctx)
    return {
        "alphas": alphas,
        "lr": lr,
        "epochs": epochs,
        "batch_size": cfg.batch_size,
        "weight_decay": cfg.weight_decay,
        "betas": list(cfg.betas),
        "eps": EPS,
        "schedule": f"{WARMUP_EPOCHS} epoch at {WARMUP_LR:g}, then cosine per epoch (Dassl)",
        "values_from": "train_regular.sh" if official.scripted else "generic (dataset not in TaskRes's scripts)",
        "base": _base_description(ctx.data),
        "views_used": ctx.views,
        "model": "first best val epoch" if ctx.epoch_rule == "best-val" else "last epoch",
    }


def train(ctx: FitContext, plans: list[RunPlan]) -> list[Trained]:
    data, cfg = ctx.data, ctx.config
    _, alphas, lr, epochs = _resolved(ctx)
    base, scale = base_classifier(data), data.logit_scale
    total, out = len(plans) * len(alphas) * epochs, []
    for p, plan in enumerate(plans):
        start = time.perf_counter()
        _, views, labels = ctx.train_views(plan.split)  # (N, V, D); V = 1 for the clean view
        residuals, kept = [], []
        val = ctx.val_features(plan.split)
        for a, alpha in enumerate(alphas):
            gen = torch.Generator().manual_seed(plan.seed)
            tick = partial(_tick, ctx, (p * len(alphas) + a) * epochs, total)
            keeper = BestEpoch(1) if ctx.epoch_rule == "best-val" else None
            on_epoch = None if keeper is None else _scorer(keeper, val, base, alpha, scale)
            x = train_residual(views, labels, base, scale, alpha, lr, epochs, cfg, gen, ctx.device, tick, on_epoch)
            if keeper is not None:
                x = keeper.state["residual"][0].cpu()
            residuals.append(x)
            kept.append(keeper.record() if keeper is not None else last_epoch_record(epochs, ctx.epoch_fallback))
        predictors = [_predictor(base, r, a, scale) for r, a in zip(residuals, alphas, strict=True)]
        best, selection, val_metrics = select_on_val(
            [{"alpha": a} for a in alphas], predictors, val, data, ctx.selection_source
        )
        if val is None:
            why = (
                "as given"
                if not ctx.official and cfg.alphas is not None and len(cfg.alphas) == 1
                else "the official value"
            )
            selection["reason"] = f"no val split: alpha fixed at {alphas[0]:g} ({why})"
        selection["epoch"] = kept[best]
        chosen = {"alpha": alphas[best], "lr": lr, "epochs": epochs}
        config = {
            **payload(ctx),
            "chosen": chosen,
            "classifier": f"TaskRes: t + alpha x, t = {_base_description(data)}",
        }
        tensors = {"base": base.contiguous(), "residual": residuals[best].float(), "alpha": torch.tensor(alphas[best])}
        meta = {
            "method_config": chosen,
            "classnames": data.classnames,
            "logit_scale": scale,
            "logits": "logit_scale * normalize(f) @ normalize(base + alpha * residual).T",
        }
        seconds = time.perf_counter() - start
        out.append(Trained(plan, predictors[best], selection, val_metrics, config, (tensors, meta), seconds))
    return out


def _tick(ctx: FitContext, done: int, total: int, epoch: int, _epochs: int) -> None:
    ctx.tick(done + epoch, total)


def _scorer(keeper: BestEpoch, val, base: torch.Tensor, alpha: float, scale: float):
    """on_epoch for ``train_residual``: the residual's val top-1, kept by ``keeper`` when best so far."""

    def on_epoch(epoch: int, residual: torch.Tensor) -> None:
        preds = taskres_logits(val[0].to(residual.device), base.to(residual.device), residual, alpha, scale)
        keeper.observe(epoch, torch.tensor([top1_percent(preds, val[1])]), {"residual": residual[None]})

    return on_epoch


def _predictor(base: torch.Tensor, residual: torch.Tensor, alpha: float, scale: float):
    return lambda feats: taskres_logits(feats.float(), base, residual.float(), alpha, scale)


def from_artifact(tensors: dict, meta: dict, class_weights: torch.Tensor, logit_scale: float, device: str):
    """The file's own base (the store's classifier may be the normalised ensemble), not class_weights."""
    base, residual, alpha = tensors["base"].to(device), tensors["residual"].to(device), float(tensors["alpha"])
    return lambda feats: taskres_logits(feats.to(device).float(), base, residual, alpha, logit_scale).cpu()


def differences(ctx: FitContext) -> list[str]:
    cfg, data = ctx.config, ctx.data
    official, alphas, lr, epochs = _resolved(ctx)
    diffs = []
    if ctx.views == "aug":
        scale = data.attrs.get("aug_scale", "?")
        diffs.append(
            f"augmentation: one of {data.aug_views} cached RandomResizedCrop (scale {scale}) + flip views per image "
            "per epoch (official: a fresh RandomResizedCrop(0.08, 1) + flip through the image encoder every epoch)"
        )
    else:
        diffs.append("no augmentation: the clean view every epoch (official: a fresh RandomResizedCrop + flip)")
    if not official.scripted:
        diffs.append(f"{data.dataset} is not in TaskRes's scripts: generic alpha {GENERIC_ALPHA}, lr {GENERIC_LR:g}")
    if ctx.has_val and not ctx.official and cfg.alphas is not None and len(cfg.alphas) > 1:
        diffs.append(
            f"alpha chosen on the few-shot val split from {alphas} "
            f"(official: fixed at {official.alpha:g} for this dataset, no validation)"
        )
    elif alphas != [official.alpha]:
        diffs.append(f"alpha {alphas[0]:g} (official: {official.alpha:g})")
    for name, ours, theirs in (
        ("lr", lr, official.lr),
        ("epochs", epochs, official.epochs),
        ("batch size", cfg.batch_size, 256),
        ("weight decay", cfg.weight_decay, 5e-4),
    ):
        if ours != theirs:
            diffs.append(f"{name} {ours:g} (official: {theirs:g})")
    if ctx.epoch_rule == "best-val":
        diffs.append("the first best val epoch kept (official: the last epoch, no val)")
    diffs.append(
        f"Adam betas {tuple(cfg.betas)} (TaskRes does not pin its Dassl: (0.9, 0.999) at Dassl HEAD, "
        f"{OLD_DASSL_BETAS} in older versions)"
    )
    if data.dataset == "imagenet":
        diffs += _imagenet_base_difference(ctx)
    return diffs


def _imagenet_base_difference(ctx: FitContext) -> list[str]:
    """The official ImageNet base is the raw mean of the 8 templates a default ImageNet store holds
    (``--classifier single+ensemble``, TaskRes's paper classifier)."""
    data = ctx.data
    if sorted(data.templates) == sorted((*IMAGENET7, GENERIC_TEMPLATE)):  # a mean: the order is irrelevant
        return []
    return [f"ImageNet base: {_base_description(data)} (official: raw mean of {IMAGENET_BASE})"]


register_method(
    Method(
        name="taskres",
        summary="a learned residual on the text classifier, t + alpha x (Yu et al. 2023, arXiv 2211.10277)",
        config=TaskResConfig,
        payload=payload,
        train=train,
        differences=differences,
        from_artifact=from_artifact,
        judges_templates=True,
        epoch_note="",
        paper_classifier="single+ensemble",
    )
)
