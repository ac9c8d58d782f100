"""CLIP-Adapter (Gao et al. 2021, arXiv 2110.04544): residual bottleneck adapters on frozen
CLIP features. Every (seed x alpha x beta) run of a shot count trains in one batched pass;
the ratios are then chosen per seed on the few-shot val split."""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from typing import Any

import torch

from ..adapters import AdapterConfig
from ..train import RunSpec, TrainConfig, predict, resolve_epochs, train_runs
from .base import FitContext, FitData, Method, RunPlan, Trained, register_method, select_on_val

PAPER_ALPHA = 0.2   # the official code's fixed ratio, behind the published numbers


def _views_mode(cfg, data: FitData) -> str:
    return "aug" if cfg.train.views == "aug" and data.aug_views > 0 else "clean"


def payload(cfg, data: FitData, shots: int) -> dict[str, Any]:
    return {
        "adapter": {k: v for k, v in asdict(cfg.adapter).items() if k not in ("alpha", "beta")},
        "alphas": list(cfg.alphas), "betas": list(cfg.betas),
        "train": {**asdict(cfg.train), "epochs": resolve_epochs(cfg.train, shots, data.dataset)},
        "views_used": _views_mode(cfg, data),
    }


def train(ctx: FitContext, plans: list[RunPlan]) -> list[Trained]:
    cfg, data = ctx.cfg, ctx.data
    start = time.perf_counter()
    mode = _views_mode(cfg, data)
    candidates = cfg.candidates()
    specs, vals = [], []
    for plan in plans:
        feats, labels, aug = ctx.train_features(plan.split, aug=mode == "aug")
        views = torch.from_numpy(aug if mode == "aug" else feats[:, None])   # (N, V, D)
        vals.append(ctx.val_features(plan.split))
        specs += [RunSpec(plan.seed, c, views, torch.from_numpy(labels)) for c in candidates]
    epochs = resolve_epochs(cfg.train, ctx.shots, data.dataset)
    states = train_runs(specs, data.class_weights, data.logit_scale, replace(cfg.train, views=mode),
                        epochs, cfg.device, ctx.tick)
    seconds = (time.perf_counter() - start) / len(plans)
    out, n = [], len(candidates)
    for i, plan in enumerate(plans):
        run_specs, run_states = specs[i * n:(i + 1) * n], states[i * n:(i + 1) * n]
        predictors = [_predictor(s, st, data, cfg.device) for s, st in zip(run_specs, run_states)]
        ratios = [_ratios(s.adapter) for s in run_specs]
        best, selection, val_metrics = select_on_val(ratios, predictors, vals[i], data, _source(ctx))
        chosen = run_specs[best].adapter
        config = {**payload(cfg, data, ctx.shots), "chosen": asdict(chosen), "classifier": data.classifier,
                  "train_views": (f"one of {data.aug_views} cached augmented views per image per epoch"
                                  if mode == "aug" else "the clean (val-transform) view every epoch")}
        meta = {"adapter": asdict(chosen), "classnames": data.classnames, "logit_scale": data.logit_scale}
        out.append(Trained(plan, predictors[best], selection, val_metrics, config,
                           (run_states[best], meta), seconds))
    return out


def _ratios(adapter: AdapterConfig) -> dict[str, float]:
    """The residual ratios this adapter kind uses: alpha (visual), beta (text), or both."""
    return {**({"alpha": adapter.alpha} if adapter.visual else {}), **({"beta": adapter.beta} if adapter.text else {})}


def _predictor(spec: RunSpec, state: dict, data: FitData, device: str):
    return lambda feats: predict(state, spec.adapter, feats, data.class_weights, data.logit_scale, device)


def _source(ctx: FitContext) -> str:
    return "val" if ctx.data.val_labels else ("holdout" if ctx.cfg.no_val == "holdout" else "none")


def differences(cfg, data: FitData, shots: int) -> list[str]:
    ref, a, diffs = TrainConfig(), cfg.adapter, []
    if a.kind != "visual":
        diffs.append(f"adapter {a.kind} (published numbers: visual only)")
    if a.block != "official":
        diffs.append("paper block without trailing ReLU (published numbers: official block)")
    if a.reduction != 4:
        diffs.append(f"reduction {a.reduction} (paper: 4)")
    if a.visual and list(cfg.alphas) != [PAPER_ALPHA]:
        diffs.append(f"alpha from {list(cfg.alphas)} (official code: fixed {PAPER_ALPHA})")
    for name in ("lr", "batch_size", "weight_decay", "momentum", "warmup_epochs", "warmup_lr"):
        if getattr(cfg.train, name) != getattr(ref, name):
            diffs.append(f"{name} {getattr(cfg.train, name)} (CoOp: {getattr(ref, name)})")
    protocol_epochs = resolve_epochs(ref, shots, data.dataset)
    if resolve_epochs(cfg.train, shots, data.dataset) != protocol_epochs:
        diffs.append(f"epochs {cfg.train.epochs} (CoOp: {protocol_epochs})")
    if _views_mode(cfg, data) == "aug":
        diffs.append(f"augmentation from {data.aug_views} cached views, one per image per epoch "
                     "(CoOp: a fresh random crop every epoch)")
    else:
        diffs.append("no augmentation: the clean view every epoch (CoOp: random crop + flip)")
    return diffs


def from_artifact(tensors: dict, meta: dict, class_weights: torch.Tensor, logit_scale: float, device: str):
    adapter = AdapterConfig(**meta["adapter"])
    return lambda feats: predict(tensors, adapter, feats, class_weights, logit_scale, device)


register_method(Method(
    name="clip-adapter",
    summary="residual bottleneck adapters on frozen CLIP features (Gao et al. 2021, arXiv 2110.04544)",
    payload=payload, train=train, differences=differences, from_artifact=from_artifact,
))
