"""CLIP-Adapter (Gao et al. 2021, arXiv 2110.04544): residual bottleneck adapters on frozen
CLIP features. Every (seed x alpha x beta) run of a shot count trains in one batched pass;
the ratios are then chosen per seed on the few-shot val split."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from cacheclip.errors import ConfigError
from cacheclip.fit.adapters import AdapterConfig
from cacheclip.fit.methods.base import (
    FitContext,
    FitData,
    Method,
    NewClassRule,
    RunPlan,
    Trained,
    artifact_on_new,
    register_method,
    select_on_val,
)
from cacheclip.fit.train import (
    RunSpec,
    TrainConfig,
    last_epoch_record,
    predict,
    resolve_epochs,
    train_runs,
    train_runs_best_val,
)
from cacheclip.settings import setting

PAPER_ALPHA = 0.2  # the official code's fixed ratio, behind the published numbers
_COOP = TrainConfig()


@dataclass(frozen=True)
class ClipAdapterConfig:
    """CLIP-Adapter's settings; the defaults are the paper's (CoOp's RN50 schedule)."""

    adapter: str = setting("visual", "which adapters: visual (the paper's), text or both", flag="--adapter")
    alphas: tuple[float, ...] = setting(
        (PAPER_ALPHA,), "visual residual ratio(s); several are chosen on val", flag="--alpha"
    )
    betas: tuple[float, ...] = setting((0.2,), "text residual ratio(s); several are chosen on val", flag="--beta")
    reduction: int = setting(4, "bottleneck reduction D -> D/r", flag="--reduction")
    block: str = setting("official", "official (ReLU after each layer, as the released code) or paper", flag="--block")
    epochs: int | None = setting(
        None,
        "epochs; coop: CoOp's by shots (1: 50, 2-4: 100, 8-16: 200; ImageNet 50)",
        flag="--epochs",
        none_word="coop",
    )
    lr: float = setting(_COOP.lr, "SGD learning rate", flag="--lr")
    batch_size: int = setting(_COOP.batch_size, "training batch size", flag="--batch-size")
    weight_decay: float = setting(_COOP.weight_decay, "SGD weight decay", flag="--weight-decay")
    momentum: float = setting(_COOP.momentum, "SGD momentum", flag="--momentum")
    warmup_epochs: int = setting(_COOP.warmup_epochs, "constant-lr warm-up epochs", flag="--warmup-epochs")
    warmup_lr: float = setting(_COOP.warmup_lr, "warm-up learning rate", flag="--warmup-lr")

    def train_config(self, views: str = "aug") -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            weight_decay=self.weight_decay,
            momentum=self.momentum,
            warmup_epochs=self.warmup_epochs,
            warmup_lr=self.warmup_lr,
            views=views,
        )

    @property
    def kind(self) -> AdapterConfig:
        """The adapter shape (alpha/beta come from the grids)."""
        return AdapterConfig(kind=self.adapter, reduction=self.reduction, block=self.block)

    def candidates(self) -> list[AdapterConfig]:
        """The (alpha, beta) grid as adapter configs, in tie-breaking order."""
        a = self.kind
        alphas = self.alphas if a.visual else (0.0,)
        betas = self.betas if a.text else (0.0,)
        return [replace(a, alpha=x, beta=y) for x in alphas for y in betas]

    def validate(self) -> None:
        for candidate in self.candidates():
            candidate.validate()
        self.train_config().validate()


def candidates(ctx: FitContext) -> list[AdapterConfig]:
    """The grid to train; --protocol official: the official code's fixed ratio only (no selection)."""
    if ctx.official:
        return [replace(ctx.config.kind, alpha=PAPER_ALPHA, beta=PAPER_ALPHA)]
    return ctx.config.candidates()


def payload(ctx: FitContext) -> dict[str, Any]:
    cfg, grid = ctx.config, candidates(ctx)
    return {
        "adapter": {k: v for k, v in asdict(cfg.kind).items() if k not in ("alpha", "beta")},
        "alphas": sorted({c.alpha for c in grid}) if ctx.official else list(cfg.alphas),
        "betas": sorted({c.beta for c in grid}) if ctx.official else list(cfg.betas),
        "train": {
            **asdict(cfg.train_config(ctx.views_requested)),
            "epochs": resolve_epochs(cfg.train_config(), ctx.shots, ctx.data.dataset),
        },
        "views_used": ctx.views,
    }


def train(ctx: FitContext, plans: list[RunPlan]) -> list[Trained]:
    cfg, data, mode = ctx.config, ctx.data, ctx.views
    grid = candidates(ctx)
    if not ctx.has_val and len(grid) > 1:
        raise ConfigError(
            f"{data.dataset} has no few-shot val split, so {len(grid)} alpha/beta "
            "values cannot be chosen without the test set",
            "pass a single --alpha (and --beta), or --no-val holdout to hold out val from train",
        )
    start = time.perf_counter()
    specs, vals = [], []
    for plan in plans:
        _, views, labels = ctx.train_views(plan.split)  # views (N, V, D)
        vals.append(ctx.val_features(plan.split))
        specs += [RunSpec(plan.seed, c, views, labels) for c in grid]
    epochs = resolve_epochs(cfg.train_config(), ctx.shots, data.dataset)
    train_args = (data.class_weights, data.logit_scale, cfg.train_config(mode), epochs, ctx.device, ctx.tick)
    if ctx.epoch_rule == "best-val":  # each (seed, ratio) run keeps its first best epoch on its seed's val
        spec_vals = [vals[i // len(grid)] for i in range(len(specs))]
        states, kept = train_runs_best_val(specs, spec_vals, *train_args)
    else:
        states = train_runs(specs, *train_args)
        kept = [last_epoch_record(epochs, ctx.epoch_fallback) for _ in specs]
    seconds = (time.perf_counter() - start) / len(plans)
    out, n = [], len(grid)
    for i, plan in enumerate(plans):
        run_specs, run_states = specs[i * n : (i + 1) * n], states[i * n : (i + 1) * n]
        predictors = [_predictor(s, st, data, ctx.device) for s, st in zip(run_specs, run_states, strict=False)]
        ratios = [_ratios(s.adapter) for s in run_specs]
        best, selection, val_metrics = select_on_val(ratios, predictors, vals[i], data, ctx.selection_source)
        if ctx.official:  # one fixed candidate: nothing chosen, val (if any) only reported
            fixed = ratios[0]
            why = f"--protocol official: the official code's fixed ratio {PAPER_ALPHA}, no selection"
            selection = {"on": "none", "candidates": [dict(fixed)], "chosen": dict(fixed), "reason": why}
        selection["epoch"] = kept[i * n + best]
        chosen = run_specs[best].adapter
        config = {
            **payload(ctx),
            "chosen": asdict(chosen),
            "classifier": data.classifier,
            "train_views": (
                f"one of {data.aug_views} cached augmented views per image per epoch"
                if mode == "aug"
                else "the clean (val-transform) view every epoch"
            ),
        }
        meta = {"adapter": asdict(chosen), "classnames": data.classnames, "logit_scale": data.logit_scale}
        out.append(Trained(plan, predictors[best], selection, val_metrics, config, (run_states[best], meta), seconds))
    return out


def _ratios(adapter: AdapterConfig) -> dict[str, float]:
    """The residual ratios this adapter kind uses: alpha (visual), beta (text), or both."""
    return {**({"alpha": adapter.alpha} if adapter.visual else {}), **({"beta": adapter.beta} if adapter.text else {})}


def _predictor(spec: RunSpec, state: dict, data: FitData, device: str):
    return lambda feats: predict(state, spec.adapter, feats, data.class_weights, data.logit_scale, device)


def differences(ctx: FitContext) -> list[str]:
    cfg, data, shots = ctx.config, ctx.data, ctx.shots
    ref, a, diffs = _COOP, cfg.kind, []
    if a.kind != "visual":
        diffs.append(f"adapter {a.kind} (published numbers: visual only)")
    if a.block != "official":
        diffs.append("paper block without trailing ReLU (published numbers: official block)")
    if a.reduction != 4:
        diffs.append(f"reduction {a.reduction} (paper: 4)")
    if a.visual and not ctx.official and list(cfg.alphas) != [PAPER_ALPHA]:
        diffs.append(f"alpha from {list(cfg.alphas)} (official code: fixed {PAPER_ALPHA})")
    if a.text and ctx.official:
        diffs.append(f"text ratio fixed at {PAPER_ALPHA} like the visual one (the official code has no text adapter)")
    if ctx.epoch_rule == "best-val":
        diffs.append(
            "the first best val epoch kept (the CoOp configs of Oct 2021 kept the best val epoch, later ones "
            "the last; which one the published numbers used is uncertain)"
        )
    for name in ("lr", "batch_size", "weight_decay", "momentum", "warmup_epochs", "warmup_lr"):
        if getattr(cfg, name) != getattr(ref, name):
            diffs.append(f"{name} {getattr(cfg, name)} (CoOp: {getattr(ref, name)})")
    protocol_epochs = resolve_epochs(ref, shots, data.dataset)
    if resolve_epochs(cfg.train_config(), shots, data.dataset) != protocol_epochs:
        diffs.append(f"epochs {cfg.epochs} (CoOp: {protocol_epochs})")
    if ctx.views == "aug":
        diffs.append(
            f"augmentation from {data.aug_views} cached views, one per image per epoch "
            "(CoOp: a fresh random crop every epoch)"
        )
    else:
        diffs.append("no augmentation: the clean view every epoch (CoOp: random crop + flip)")
    return diffs


def from_artifact(tensors: dict, meta: dict, class_weights: torch.Tensor, logit_scale: float, device: str):
    adapter = AdapterConfig(**meta["adapter"])
    return lambda feats: predict(tensors, adapter, feats, class_weights, logit_scale, device)


register_method(
    Method(
        name="clip-adapter",
        summary="residual bottleneck adapters on frozen CLIP features (Gao et al. 2021, arXiv 2110.04544)",
        config=ClipAdapterConfig,
        payload=payload,
        train=train,
        differences=differences,
        from_artifact=from_artifact,
        new_classes=NewClassRule(
            "the trained adapter with the new classes' text weights: its residual adapters act on the image "
            "feature (and, when trained, on each class's text embedding), the same for any class",
            artifact_on_new,
        ),
        epoch_note="",
    )
)
