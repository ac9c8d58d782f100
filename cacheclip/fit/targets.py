"""Distribution shift: a classifier fitted on ImageNet, tested unchanged on ImageNet-V2, -Sketch,
-A and -R (CoOp's protocol). Evaluated once per run, after selection: nothing is ever chosen on
a target.

A target with a class subset (A and R: 200 of the 1000) keeps the logits of its own classes,
matched by wnid, and drops the others. With cosine logits this equals building the classifier
from the target's class names as CoOp does, since each class's logit depends only on its own
weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from cacheclip.datasets.catalog import expand_names
from cacheclip.errors import ConfigError, MissingFeaturesError, StoreMismatchError
from cacheclip.features.freshness import check_freshness
from cacheclip.features.store import open_store, parts_dir, store_path
from cacheclip.fit.metrics import classification_metrics

SOURCE = "imagenet"
# What must agree between the source store and a target store for the features to be comparable.
SAME_AS_SOURCE = (
    "model",
    "model_config_sha256",
    "pretrained",
    "weights_sha256",
    "quick_gelu",
    "preprocess",
    "precision",
)


@dataclass
class Target:
    name: str  # canonical dataset name, e.g. "imagenet-sketch"
    path: Path  # its store, checked when the fit starts
    columns: torch.Tensor  # (K_target,) the source class index of each target class
    _test: tuple[torch.Tensor, torch.Tensor] | None = None  # (features, labels), read on first use

    def score(self, predict: Callable[[torch.Tensor], torch.Tensor]) -> dict:
        """{top1, mean_per_class, n} of a source classifier restricted to this target's classes.
        The features are read here, after training and selection, never before."""
        if self._test is None:
            with open_store(self.path) as store:
                feats, labels, _ = store.read("test")
            self._test = torch.from_numpy(feats), torch.from_numpy(labels)
        feats, labels = self._test
        return classification_metrics(predict(feats)[:, self.columns], labels, len(self.columns))


def load_targets(
    names: tuple[str, ...],
    source_dataset: str,
    source_attrs: dict,
    source_class_ids: list[str],
    cache_dir: str,
    model_id: str,
    weights_id: str,
    extract_hint: str,
) -> list[Target]:
    """Each target's test features and class mapping, refusing what cannot be compared."""
    if not names:
        return []
    if source_dataset != SOURCE:
        raise ConfigError(
            f"--targets evaluates an ImageNet classifier on ImageNet's variants; {source_dataset} is not ImageNet",
            "fit --dataset imagenet --targets imagenet-shift, or drop --targets",
        )
    if not source_class_ids:
        raise MissingFeaturesError(
            "the ImageNet store records no class wnids (written before targets existed)",
            f"extract it again: {extract_hint}",
        )
    return [
        _load_target(n, source_attrs, source_class_ids, cache_dir, model_id, weights_id, extract_hint)
        for n in expand_names(list(names))
    ]


def _load_target(name, source_attrs, source_class_ids, cache_dir, model_id, weights_id, extract_hint) -> Target:
    path = store_path(cache_dir, model_id, weights_id, name)
    command = _target_command(extract_hint, name)
    if parts_dir(path).exists() or not Path(path).is_file():
        raise MissingFeaturesError(f"no finished feature store for target {name} at {path}", f"run: {command}")
    expect = {"dataset": name, **{k: source_attrs.get(k) for k in SAME_AS_SOURCE if k in source_attrs}}
    with open_store(path, expect, f"the target must be encoded like the ImageNet store: {command}") as store:
        ids = store.class_ids  # checked now; the features are read after training
        fresh = check_freshness(store)  # as the source's: its split file, content and images
        if fresh.stale:
            raise StoreMismatchError(f"target {name}: {path} is stale: {fresh.describe()}", f"run: {command}")
    where = {wnid: i for i, wnid in enumerate(source_class_ids)}
    unknown = [w for w in ids if w not in where]
    if not ids or unknown:
        raise MissingFeaturesError(
            f"target {name}: {'no class wnids recorded' if not ids else f'classes not in ImageNet: {unknown[:3]}'}",
            f"extract it again: {command}",
        )
    return Target(name, path, torch.tensor([where[w] for w in ids]))


def _target_command(extract_hint: str, name: str) -> str:
    """The source's extract command, for the target dataset (no few-shot options: test only)."""
    words = extract_hint.split()
    out, skip = [], False
    for i, word in enumerate(words):
        if skip:
            skip = False
            continue
        if word in ("--shots", "--seeds", "--aug-views", "--aug-scale"):
            skip = True
            continue
        if word == "--holdout-val":
            continue
        out.append(name if i and words[i - 1] == "--dataset" else word)
    return " ".join(out)


def score_targets(targets: list[Target], predict: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, dict]:
    return {t.name: t.score(predict) for t in targets}
