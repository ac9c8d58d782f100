"""Zero-shot CLIP: the text classifier alone (Radford et al. 2021). Nothing is trained."""

from __future__ import annotations

from dataclasses import dataclass

from cacheclip.fit.methods.base import (
    FitContext,
    Method,
    NewClassRule,
    RunPlan,
    Trained,
    register_method,
    zero_shot_on_new,
    zero_shot_predictor,
)
from cacheclip.fit.metrics import classification_metrics


@dataclass(frozen=True)
class ZeroShotConfig:
    """Zero-shot CLIP has no settings."""


def _train(ctx: FitContext, plans: list[RunPlan]) -> list[Trained]:
    predict = zero_shot_predictor(ctx.data)
    results = []
    for plan in plans:
        val = ctx.val_features(plan.split)  # each seed samples its own few-shot val
        metrics = classification_metrics(predict(val[0]), val[1], ctx.data.num_classes) if val else None
        results.append(
            Trained(
                plan,
                predict,
                {"on": "none", "candidates": [], "chosen": {}},
                metrics,
                {"classifier": ctx.data.classifier},
            )
        )
    return results


register_method(
    Method(
        name="zero-shot",
        summary="CLIP's text classifier with no training (Radford et al. 2021)",
        config=ZeroShotConfig,
        payload=lambda ctx: {},
        train=_train,
        new_classes=NewClassRule("zero-shot CLIP with the new classes' text weights, as any class", zero_shot_on_new),
        paper_classifier="ensemble",  # the published zero-shot numbers (ImageNet 60.32, Tip-Adapter's log)
    )
)
