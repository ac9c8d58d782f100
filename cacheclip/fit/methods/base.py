"""What a few-shot method sees and returns, and the method registry.

A method trains and selects on the few-shot train and val features of a
``FitContext``; it never receives the test split, which ``fit`` reads only
after every run of the shot count has been trained and selected.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cacheclip.datasets.fewshot import FewShotSplit, sample_fewshot
from cacheclip.errors import ConfigError, MissingFeaturesError
from cacheclip.fit.adapters import zero_shot_logits
from cacheclip.fit.classifier import TextClassifier
from cacheclip.fit.metrics import classification_metrics

if TYPE_CHECKING:
    from cacheclip.features.store import FeatureStore

Progress = Callable[[str, int, int], None]

# The version of this contract (FitContext, RunPlan, Trained, Method and what fit does with them).
# A plugin's Method states the version it was written for (``Method(contract=...)``); it changes
# only when a method written for the previous version would no longer work or would give other numbers.
CONTRACT_VERSION = 1


@dataclass
class FitData:
    """What a store provides to every run of a dataset, test excluded."""

    dataset: str
    store: Path
    attrs: dict[str, Any]
    classnames: list[str]
    class_weights: torch.Tensor  # (K, D): the single template's raw embedding, or the ensemble
    classifier: str  # which of the two, in words
    per_template: torch.Tensor  # (T, K, D): the raw class embeddings of the chosen classifier's templates
    templates: list[str]  # (T,) those templates, as text
    logit_scale: float
    train_labels: list[int]
    val_labels: list[int]
    train_paths: list[str]
    val_paths: list[str]
    aug_views: int  # cached augmented views per train image (0: none)
    text_classifier: TextClassifier | None = None  # which of the store's named classifiers, and why

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def aug_scale(self) -> tuple[float, ...] | None:
        """The RandomResizedCrop scale of the store's cached views (attrs hold it as JSON text)."""
        value = self.attrs.get("aug_scale")
        value = json.loads(value) if isinstance(value, str) else value
        return tuple(float(s) for s in value) if value else None


@dataclass(frozen=True)
class RunPlan:
    """One (shots, seed) run to do: its few-shot split, key and result folder."""

    seed: int
    split: FewShotSplit
    key: str
    folder: Path


@dataclass
class Trained:
    """A run after training and selection on val, before its test evaluation."""

    plan: RunPlan
    predict: Callable[[torch.Tensor], torch.Tensor]  # features (M, D) -> logits (M, K)
    selection: dict[str, Any]  # {"on", "candidates", "chosen"}
    val_metrics: dict | None
    config: dict[str, Any]  # the method's resolved settings
    artifact: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None  # saved as adapter.safetensors
    seconds: float = 0.0
    val_set: str = "fewshot"  # the val the run chose on: fewshot (the split's), full (the whole val split), per-class
    val_indices: tuple[int, ...] | None = None  # per-class: its indices into the val split


class FitContext:
    """What a method sees for one dataset and shot count: its own config, the per-run facts,
    and read access to the few-shot train and val features (never test)."""

    def __init__(
        self,
        store: FeatureStore,
        data: FitData,
        config: Any,
        shots: int,
        *,
        views: str = "aug",
        selection: str = "val",
        device: str = "cpu",
        extract_hint: str = "",
        progress: Progress | None = None,
        protocol: str = "fewshot",
        epoch: str = "last",
        method: Method | None = None,
    ):
        self._store, self.data, self.config, self.shots = store, data, config, shots
        self.method = method  # the resolved method these runs belong to (the stage sets it once per dataset)
        self.protocol = protocol  # fewshot | official (each method's published protocol, never tuned on test)
        self.epoch = epoch  # last | best-val, as asked (see ``epoch_rule``)
        self.views_requested = views  # aug | clean, as asked
        self.views = "aug" if views == "aug" and data.aug_views > 0 else "clean"  # what the store allows
        self.selection_source = selection  # val | holdout | none
        self.device, self.extract_hint, self.progress = device, extract_hint, progress

    @property
    def has_val(self) -> bool:
        return self.selection_source != "none"

    @property
    def official(self) -> bool:
        return self.protocol == "official"

    @property
    def epoch_rule(self) -> str:
        """best-val when asked and a val split exists, else last (the documented fallback: a run
        without val keeps its last epoch and records why, see ``epoch_fallback``)."""
        return "best-val" if self.epoch == "best-val" and self.has_val else "last"

    @property
    def epoch_fallback(self) -> str:
        """Why --epoch best-val was not followed ("" when it was, or was not asked)."""
        if self.epoch == "best-val" and not self.has_val:
            return "--epoch best-val without a val split: the last epoch is kept (--no-val holdout gives one)"
        return ""

    @property
    def has_full_val(self) -> bool:
        """Whether the dataset has a val split of its own (ImageNet under CoOp's splits has none)."""
        return bool(self.data.val_labels)

    def train_features(self, split: FewShotSplit, aug: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Clean features (N, D), labels (N,), and augmented views (N, V, D) when ``aug``."""
        return self._read("train", split.train, aug and self.data.aug_views > 0)

    def train_views(self, split: FewShotSplit) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(clean (N, D), views (N, V, D), labels (N,)): the cached augmented views when ``views``
        is aug, else the clean view as the only view (V = 1)."""
        feats, labels, aug = self.train_features(split, aug=self.views == "aug")
        clean = torch.from_numpy(feats)
        views = torch.from_numpy(aug) if aug is not None else clean[:, None]
        return clean, views, torch.from_numpy(labels)

    def val_features(self, split: FewShotSplit) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Few-shot val features (M, D) and labels; None when the dataset has no val and no hold-out."""
        if not split.val:
            return None
        source = "val" if self.data.val_labels else "train"  # a hold-out val lives in the train split
        feats, labels, _ = self._read(source, split.val, False)
        return torch.from_numpy(feats), torch.from_numpy(labels)

    def full_val_features(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Every image of the dataset's val split (M, D) and labels, as the official protocols of
        Tip-Adapter, GDA and ProKeR select on; None when the dataset has no val split."""
        if not self.data.val_labels:
            return None
        feats, labels, _ = self._read("val", range(len(self.data.val_labels)), False)
        return torch.from_numpy(feats), torch.from_numpy(labels)

    def val_per_class(
        self, split: FewShotSplit, shots: int
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[int, ...]]:
        """((features, labels), indices) of ``shots`` val images per class (LP++'s K-shot val), drawn
        by the few-shot sampler from ``random.Random(split.seed)``; the dataset must have a val split."""
        indices = tuple(sample_fewshot(self.data.val_labels, shots, random.Random(split.seed)))
        feats, labels, _ = self._read("val", indices, False)
        return (torch.from_numpy(feats), torch.from_numpy(labels)), indices

    def official_val(self, split: FewShotSplit) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, str]:
        """(val, which): the whole val split under --protocol official when the dataset has one,
        else the few-shot (or held-out) val; which is "full" or "fewshot"."""
        if self.official and self.has_full_val:
            return self.full_val_features(), "full"
        return self.val_features(split), "fewshot"

    def tick(self, done: int, total: int) -> None:
        if self.progress:
            self.progress(f"{self.data.dataset} {self.shots}-shot", done, total)

    def _read(self, split: str, indices: Sequence[int], aug: bool):
        if split == "test":  # a real check, not an assert: it must hold under python -O too
            raise RuntimeError("methods never read the test split")
        try:
            return self._store.read(split, indices, aug=aug)
        except KeyError as e:
            missing = e.args[0]
            raise MissingFeaturesError(
                f"{self._store.path.name}: {len(missing)} {split} images needed by this fit have no "
                f"features (e.g. item {missing[0]})",
                f"run: {self.extract_hint}",
            ) from None


def select_on_val(
    candidates: Sequence[dict[str, Any]],
    predictors: Sequence[Callable],
    val: tuple[torch.Tensor, torch.Tensor] | None,
    data: FitData,
    source: str,
) -> tuple[int, dict[str, Any], dict | None]:
    """Best candidate by val top-1 (ties: the first in grid order). Without val there must be
    exactly one candidate. Returns (index, selection record, val metrics of the chosen)."""
    if val is None:
        if len(candidates) != 1:
            raise ConfigError(
                f"{len(candidates)} candidate settings but no val split to choose between them",
                "give a single value, or --no-val holdout to hold out val from train",
            )
        return 0, {"on": "none", "candidates": [dict(candidates[0])], "chosen": dict(candidates[0])}, None
    feats, labels = val
    scores = [classification_metrics(p(feats), labels, data.num_classes) for p in predictors]
    best = max(range(len(scores)), key=lambda i: (scores[i]["top1"], -i))
    record = {
        "on": source,
        "candidates": [{**c, "val_top1": s["top1"]} for c, s in zip(candidates, scores, strict=False)],
        "chosen": dict(candidates[best]),
    }
    return best, record, scores[best]


def view_differences(ctx: FitContext, paper: str, paper_views: str, views: int) -> list[str]:
    """What a run on the clean view only departs by: the store lacks views (the fallback, with the
    extract command of a store that has ``views`` views per image), or --views clean."""
    if ctx.views == "aug":
        return []
    if ctx.views_requested == "aug":  # the store has no augmented views: fell back to the clean view
        hint = ctx.extract_hint or "cacheclip extract ..."
        hint = re.sub(r"--aug-views \d+", f"--aug-views {views}", hint)
        hint += "" if "--aug-views" in hint else f" --aug-views {views}"
        return [
            f"trained on the clean view only: the store has no augmented views ({paper}: {paper_views}; "
            f"a store with views: {hint}, in a new --cache-dir)"
        ]
    return [f"trained on the clean view only, --views clean ({paper}: {paper_views})"]


def zero_shot_predictor(data: FitData) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda feats: zero_shot_logits(feats.float(), data.class_weights, data.logit_scale)


Predictor = Callable[[torch.Tensor], torch.Tensor]  # raw features (M, D) -> logits (M, K)


@dataclass(frozen=True)
class NewClassRule:
    """How a method scores classes it never trained on (``fit --classes base-to-new``): the rule in
    words, recorded in every base-to-new result, and the predictor it builds after training from
    (the base classes' context, the trained run, the new classes' text weights (K_new, D))."""

    rule: str
    build: Callable[[FitContext, Trained, torch.Tensor], Predictor]
    # where a base-to-new run departs from the paper's own base-to-new protocol (its protocol.differences)
    differences: tuple[str, ...] = ()


def zero_shot_on_new(ctx: FitContext, trained: Trained, new_weights: torch.Tensor) -> Predictor:
    """New classes scored by zero-shot CLIP: for methods whose learned parts are all per class."""
    return lambda feats: zero_shot_logits(feats.float(), new_weights, ctx.data.logit_scale)


def artifact_on_new(ctx: FitContext, trained: Trained, new_weights: torch.Tensor) -> Predictor:
    """The saved run with the new classes' text weights: for methods whose learned part applies to
    any class's text (``from_artifact`` takes the class weights it scores with)."""
    tensors, meta = trained.artifact
    return ctx.method.from_artifact(tensors, meta, new_weights, ctx.data.logit_scale, ctx.device)


@dataclass(frozen=True)
class Method:
    """A few-shot method: its settings, how its runs are keyed, trained and compared with its paper."""

    name: str
    summary: str  # one line, with its source paper
    config: type  # frozen dataclass of its settings
    payload: Callable[[FitContext], dict[str, Any]]  # resolved settings that change its numbers
    train: Callable[[FitContext, list[RunPlan]], list[Trained]]
    differences: Callable[[FitContext], list[str]] = lambda ctx: []
    # rebuild a predictor from a saved artifact: (tensors, metadata, class_weights, logit_scale, device)
    from_artifact: Callable[..., Callable[[torch.Tensor], torch.Tensor]] | None = None
    # True when ``differences`` judges the store's templates against the method's own paper; else
    # ``fit`` compares them with CoOp's single template per dataset
    judges_templates: bool = False
    # "" when the method trains by epochs and follows --epoch; else why --epoch does not apply
    epoch_note: str = "trains no epochs"
    # the text classifier its paper used on ImageNet (``fit.classifier``): single, ensemble or
    # single+ensemble; every paper used the dataset's single template elsewhere
    paper_classifier: str = "single"
    # how it scores classes it never trained on (fit --classes base-to-new); None: it refuses to
    new_classes: NewClassRule | None = None
    # the contract version a plugin was written for (``CONTRACT_VERSION``); None for the built-ins
    contract: int | None = None

    def validate(self, config: Any) -> None:
        """ConfigError unless ``config`` is this method's config with workable values."""
        if not isinstance(config, self.config):
            raise ConfigError(
                f"{self.name} takes a {self.config.__name__}, got {type(config).__name__}",
                "build it with get_method(name).config(...)",
            )
        check = getattr(config, "validate", None)
        if check is not None:
            check()


_BUILTIN: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Register a built-in method (a module of this folder calls it on import); an installed
    package registers through the ``cacheclip.methods`` entry points instead (``plugins``)."""
    if method.name in _BUILTIN:
        raise ValueError(f"method {method.name} registered twice")
    _BUILTIN[method.name] = method
    return method


def builtin_registry() -> dict[str, Method]:
    """The built-in methods registered so far, by name (a copy)."""
    return dict(_BUILTIN)
