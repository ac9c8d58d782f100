"""Zero-shot CLIP: the text classifier alone (Radford et al. 2021). Nothing is trained."""

from __future__ import annotations

from ..evaluate import classification_metrics
from .base import FitContext, Method, RunPlan, Trained, register_method, zero_shot_predictor


def _train(ctx: FitContext, plans: list[RunPlan]) -> list[Trained]:
    predict = zero_shot_predictor(ctx.data)
    results = []
    for plan in plans:
        val = ctx.val_features(plan.split)   # each seed samples its own few-shot val
        metrics = classification_metrics(predict(val[0]), val[1], ctx.data.num_classes) if val else None
        results.append(Trained(plan, predict, {"on": "none", "candidates": [], "chosen": {}}, metrics,
                               {"classifier": ctx.data.classifier}))
    return results


register_method(Method(
    name="zero-shot",
    summary="CLIP's text classifier with no training (Radford et al. 2021)",
    payload=lambda cfg, data, shots: {},
    train=_train,
))
