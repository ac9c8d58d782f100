"""Base-to-new generalization (CoCoOp's protocol, ``fit --classes base-to-new``).

The few-shot sampling is the ordinary one, over all classes, with the run's seed. Then the
sorted labels of the few-shot train list are split in two: the first ceil(n / 2) are the base
classes, the rest the new classes, each half relabelled 0.. in that order. The method trains
and selects on the base classes' items only, through a ``BaseClassesContext`` whose store and
data hold nothing else; it is then scored on the base test items among the base classes and,
with its ``Method.new_classes`` rule, on the new test items among the new classes. Nothing is
ever chosen on new classes or on test.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cacheclip.datasets.fewshot import FewShotSplit, sample_fewshot
from cacheclip.errors import ConfigError, StoreError
from cacheclip.fit.methods.base import FitContext, FitData, Method, Predictor, Trained, zero_shot_predictor
from cacheclip.fit.metrics import classification_metrics
from cacheclip.results.published import harmonic_mean  # one definition, the report's

if TYPE_CHECKING:
    from cacheclip.features.store import FeatureStore

CLASS_MODES = ("all", "base-to-new")


@dataclass(frozen=True)
class ClassSplit:
    """The base and new classes of a dataset (store label ids, each half in sorted order)."""

    base: tuple[int, ...]
    new: tuple[int, ...]
    num_classes: int  # the store's

    def relabel(self, labels: np.ndarray, half: tuple[int, ...]) -> np.ndarray:
        """Store labels (M,) -> 0..len(half)-1 in ``half``'s order; -1 for a label of the other half."""
        lookup = np.full(self.num_classes, -1, dtype=np.int64)
        lookup[list(half)] = np.arange(len(half))
        return lookup[np.asarray(labels, dtype=np.int64)]

    def record(self, data: FitData, rule: str) -> dict[str, Any]:
        """The result's ``classes`` entry."""
        names = data.classnames
        return {
            "mode": "base-to-new",
            "base": [names[k] for k in self.base],
            "new": [names[k] for k in self.new],
            "new_class_rule": rule,
        }


def split_classes(data: FitData) -> ClassSplit:
    """CoCoOp's split: labels = the sorted labels of the few-shot train list, m = ceil(n / 2),
    base = labels[:m], new = labels[m:]. The sampler keeps at least one item of every class of the
    train split, so those labels are the train split's, whatever the shots and seed."""
    labels = sorted(set(data.train_labels))
    if len(labels) < 2:
        raise ConfigError(
            f"{data.dataset}: --classes base-to-new needs at least 2 classes with train images, it has {len(labels)}",
            "use --classes all",
        )
    m = math.ceil(len(labels) / 2)
    return ClassSplit(tuple(labels[:m]), tuple(labels[m:]), data.num_classes)


def check_method(method: Method) -> None:
    """ConfigError unless ``method`` can score classes it never trained on."""
    if method.new_classes is None:
        from cacheclip.fit.methods import get_method, list_methods

        able = [m for m in list_methods() if get_method(m).new_classes is not None]
        raise ConfigError(
            f"{method.name} cannot score classes it never trained on, so it has no base-to-new result",
            f"--classes base-to-new works with: {', '.join(able)}",
        )


# ---------------------------------------------------------------- what the method sees


class BaseClassStore:
    """A store's train and val splits narrowed to the base classes' items, relabelled: view index
    i is the i-th base item of the split, in split order. Test is not reachable through it."""

    def __init__(self, store: FeatureStore, classes: ClassSplit, items: dict[str, list[int]]):
        self._store, self._classes, self._items = store, classes, items
        self.path = store.path

    def read(self, split: str, indices: Sequence[int] | None = None, *, aug: bool = False):
        if split not in self._items:  # test, above all
            raise RuntimeError(f"methods never read the {split} split")
        items = self._items[split]
        wanted = items if indices is None else [items[i] for i in indices]
        feats, labels, views = self._store.read(split, wanted, aug=aug)
        return feats, self._classes.relabel(labels, self._classes.base), views


def base_items(labels: Sequence[int], classes: ClassSplit) -> list[int]:
    """Indices into a split of its base-class items, in split order."""
    base = set(classes.base)
    return [i for i, y in enumerate(labels) if y in base]


def base_data(data: FitData, classes: ClassSplit) -> FitData:
    """``data`` as a dataset of the base classes only: their names, text weights and items."""
    train, val = base_items(data.train_labels, classes), base_items(data.val_labels, classes)
    rows = list(classes.base)
    return dataclasses.replace(
        data,
        classnames=[data.classnames[k] for k in rows],
        class_weights=data.class_weights[rows],
        per_template=data.per_template[:, rows],
        train_labels=classes.relabel([data.train_labels[i] for i in train], classes.base).tolist(),
        val_labels=classes.relabel([data.val_labels[i] for i in val], classes.base).tolist(),
        train_paths=[data.train_paths[i] for i in train],
        val_paths=[data.val_paths[i] for i in val],
    )


class BaseClassesContext(FitContext):
    """A ``FitContext`` over the base classes only: its ``data`` is ``base_data``, its store a
    ``BaseClassStore``, and every val it offers is the ordinary draw narrowed to base classes."""

    def __init__(self, classes: ClassSplit, store: FeatureStore | None, data: FitData, *args, **kwargs):
        self.classes, self.full_data = classes, data
        items = {"train": base_items(data.train_labels, classes), "val": base_items(data.val_labels, classes)}
        self._position = {split: {item: i for i, item in enumerate(kept)} for split, kept in items.items()}
        view = None if store is None else BaseClassStore(store, classes, items)
        super().__init__(view, base_data(data, classes), *args, **kwargs)

    def narrow(self, split: FewShotSplit) -> FewShotSplit:
        """The ordinary split's base-class items, as indices of the base view (order kept). A
        held-out val (no val split) lives in the train split."""
        val_split = "val" if self.full_data.val_labels else "train"
        return dataclasses.replace(
            split, train=self._narrowed(split.train, "train"), val=self._narrowed(split.val, val_split)
        )

    def val_per_class(self, split: FewShotSplit, shots: int):
        """LP++'s per-class val: the ordinary draw over all classes, then its base-class items."""
        drawn = sample_fewshot(self.full_data.val_labels, shots, random.Random(split.seed))
        indices = self._narrowed(drawn, "val")
        feats, labels, _ = self._read("val", indices, False)
        return (torch.from_numpy(feats), torch.from_numpy(labels)), indices

    def _narrowed(self, indices: Sequence[int], split: str) -> tuple[int, ...]:
        """Indices into ``split`` -> base view indices, new-class items dropped, order kept."""
        position = self._position[split]
        return tuple(position[i] for i in indices if i in position)


# ---------------------------------------------------------------- scoring on test


@dataclass
class HalfTest:
    """One half's test items: features (M, D) and labels relabelled within the half, and its
    classes' text weights (K_half, D)."""

    feats: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor

    def score(self, predict: Predictor) -> dict[str, Any]:
        return classification_metrics(predict(self.feats), self.labels, self.weights.shape[0])


@dataclass
class BaseToNewTest:
    """The test split cut in two by the class split, read once after every run was selected."""

    base: HalfTest
    new: HalfTest

    @classmethod
    def read(cls, store: FeatureStore, data: FitData, classes: ClassSplit) -> BaseToNewTest:
        feats, labels, _ = store.read("test")
        halves = [cls._half(feats, labels, data, classes, half) for half in (classes.base, classes.new)]
        return cls(*halves)

    @staticmethod
    def _half(feats, labels, data: FitData, classes: ClassSplit, half: tuple[int, ...]) -> HalfTest:
        relabelled = classes.relabel(labels, half)
        keep = relabelled >= 0
        if not keep.any():
            which = "base" if half == classes.base else "new"
            raise StoreError(
                f"{data.dataset}: the test split has no image of the {which} classes",
                "base-to-new needs test images of both halves of the classes",
            )
        return HalfTest(
            torch.from_numpy(feats[keep]), torch.from_numpy(relabelled[keep]), data.class_weights[list(half)]
        )

    def scores(self, base: Predictor, new: Callable[[torch.Tensor], Predictor]) -> dict[str, Any]:
        """{"base", "new", "harmonic_mean"}; ``new`` builds the new-class predictor from their weights."""
        b, n = self.base.score(base), self.new.score(new(self.new.weights))
        return {
            "base": b,
            "new": n,
            "harmonic_mean": {k: harmonic_mean(b[k], n[k]) for k in ("top1", "mean_per_class")},
        }

    def zero_shot(self, data: FitData) -> dict[str, Any]:
        """Zero-shot CLIP restricted the same way: each half among its own classes."""

        def among(weights: torch.Tensor) -> Predictor:
            return zero_shot_predictor(dataclasses.replace(data, class_weights=weights))

        return self.scores(among(self.base.weights), among)

    def run(self, ctx: FitContext, trained: Trained) -> dict[str, Any]:
        """A trained run: base with its own predictor, new with its method's rule."""
        rule = ctx.method.new_classes
        return self.scores(trained.predict, lambda weights: rule.build(ctx, trained, weights))
