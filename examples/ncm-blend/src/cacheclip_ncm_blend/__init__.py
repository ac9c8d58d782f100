"""Nearest class mean blended with zero-shot CLIP: a complete cacheclip method plugin.

Each class's mean is the L2-normalised mean of its few-shot train features (the clean view and,
when the store has them and ``--views aug``, the cached augmented views), and

    logits = scale * (f @ text.T + beta * f @ means.T),  f the L2-normalised image feature,

with the blend ``beta`` chosen on val among ``--ncm-betas`` (the first on ties). It trains nothing:
the point is the contract (cacheclip's docs: "Writing a method"), not the method.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cacheclip import (
    ConfigError,
    FitContext,
    Method,
    NewClassRule,
    RunPlan,
    Trained,
    select_on_val,
    setting,
    view_differences,
    zero_shot_on_new,
)


@dataclass(frozen=True)
class NcmBlendConfig:
    betas: tuple[float, ...] = setting(
        (0.0, 0.25, 0.5, 1.0, 2.0, 4.0), "weights of the class means beside the text, chosen on val", flag="--ncm-betas"
    )

    def validate(self) -> None:
        if not self.betas or any(b < 0 for b in self.betas):
            raise ConfigError(f"--ncm-betas {self.betas}: give one or more weights >= 0", "e.g. --ncm-betas 0,0.5,1")


def class_means(views: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, D): each class's normalised mean of its normalised views (N, V, D); a class without
    items keeps a zero mean (it then scores by its text alone)."""
    unit = F.normalize(views.float(), dim=-1).mean(1)  # (N, D): an item's views, averaged
    sums = torch.zeros(num_classes, unit.shape[1]).index_add_(0, labels, unit)
    return F.normalize(sums, dim=-1)


def blend_logits(feats: torch.Tensor, text: torch.Tensor, means: torch.Tensor, beta: float, scale: float):
    f = F.normalize(feats.float(), dim=-1)
    return scale * (f @ F.normalize(text.float(), dim=-1).T + beta * f @ means.T)


def predictor(text: torch.Tensor, means: torch.Tensor, beta: float, scale: float):
    """features (M, D) -> logits (M, K) of one run and blend (each binds its own means)."""
    return lambda feats: blend_logits(feats, text, means, beta, scale)


def payload(ctx: FitContext) -> dict:
    """What changes the numbers (part of every run key)."""
    return {"betas": list(ctx.config.betas), "views": ctx.views}


def train(ctx: FitContext, plans: list[RunPlan]) -> list[Trained]:
    data, cfg = ctx.data, ctx.config
    out = []
    for done, plan in enumerate(plans):
        start = time.perf_counter()
        clean, views, labels = ctx.train_views(plan.split)
        seen = torch.cat([clean[:, None], views], 1) if ctx.views == "aug" else clean[:, None]
        means = class_means(seen, labels, data.num_classes)
        predictors = [predictor(data.class_weights, means, b, data.logit_scale) for b in cfg.betas]
        best, selection, val_metrics = select_on_val(
            [{"beta": b} for b in cfg.betas], predictors, ctx.val_features(plan.split), data, ctx.selection_source
        )
        beta = cfg.betas[best]
        meta = {"method_config": {"beta": beta}, "logit_scale": data.logit_scale, "classnames": data.classnames}
        out.append(
            Trained(
                plan,
                predictors[best],
                selection,
                val_metrics,
                {**payload(ctx), "chosen": {"beta": beta}},
                ({"class_means": means}, meta),
                time.perf_counter() - start,
            )
        )
        ctx.tick(done + 1, len(plans))
    return out


def from_artifact(tensors: dict, meta: dict, class_weights: torch.Tensor, logit_scale: float, device: str):
    """The saved run's classifier again (``cacheclip predict``, ``--targets``)."""
    beta = float(meta["method_config"]["beta"])
    run = predictor(class_weights.to(device), tensors["class_means"].to(device), beta, logit_scale)
    return lambda feats: run(feats.to(device)).cpu()


def differences(ctx: FitContext) -> list[str]:
    return view_differences(ctx, "this method", "the clean view and the cached augmented views", 10)


METHOD = Method(
    name="ncm-blend",
    summary="nearest class mean blended with zero-shot CLIP, the blend chosen on val (cacheclip's example plugin)",
    config=NcmBlendConfig,
    payload=payload,
    train=train,
    differences=differences,
    from_artifact=from_artifact,
    # fit --classes base-to-new: a class never trained on has no mean, so it scores by its text alone
    new_classes=NewClassRule("new classes: zero-shot CLIP (no class mean to blend)", zero_shot_on_new),
    contract=1,  # the version of cacheclip's method contract this was written for
)
