"""Classification metrics: pure functions of predictions and labels.

Inputs are logits (M, K) or predicted class indices (M,), and labels (M,)
int. Accuracies are percentages in [0, 100].
"""

from __future__ import annotations

import torch


def _as_preds(logits_or_preds: torch.Tensor) -> torch.Tensor:
    """(M, K) logits -> argmax (M,); (M,) predictions pass through."""
    if logits_or_preds.dim() == 2:
        return logits_or_preds.argmax(dim=-1)
    if logits_or_preds.dim() == 1:
        return logits_or_preds
    raise ValueError(f"expected logits (M, K) or predictions (M,), got shape {tuple(logits_or_preds.shape)}")


def _check(preds: torch.Tensor, labels: torch.Tensor) -> None:
    if preds.shape != labels.shape:
        raise ValueError(f"{preds.shape[0]} predictions for {labels.shape[0]} labels")
    if labels.numel() == 0:
        raise ValueError("no samples to score")


def top1(logits_or_preds: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    preds = _as_preds(logits_or_preds).cpu()
    labels = labels.cpu()
    _check(preds, labels)
    return 100.0 * (preds == labels).double().mean().item()


def mean_per_class_accuracy(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Mean over classes of per-class recall, in percent.

    Classes with no samples in ``labels`` are left out of the mean (they
    have no recall to average). ``preds`` may also be logits (M, K).
    """
    preds = _as_preds(preds).cpu()
    labels = labels.cpu().long()
    _check(preds, labels)
    total = torch.bincount(labels, minlength=num_classes).double()
    correct = torch.bincount(labels[preds == labels], minlength=num_classes).double()
    present = total > 0
    return 100.0 * (correct[present] / total[present]).mean().item()


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """{"top1": %, "mean_per_class": %, "n": number of samples} for logits (M, K)."""
    preds = _as_preds(logits)
    return {
        "top1": top1(preds, labels),
        "mean_per_class": mean_per_class_accuracy(preds, labels, num_classes),
        "n": int(labels.numel()),
    }
