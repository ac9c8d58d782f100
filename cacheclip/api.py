"""cacheclip from Python: open a store, fit a method, load results. Exported from ``cacheclip``.

These functions are the stable surface (with the method contract, ``cacheclip.Method`` and the
names beside it); every other module is internal and may change between versions. The CLI's
``fit`` and ``report`` are built on the same calls::

    import cacheclip

    with cacheclip.open_store("eurosat", model="RN50") as store:
        train = store.split("train")                      # features, labels, paths (numpy)
        text = store.text_classifier("single", torch=True)  # (K, D)
    results = cacheclip.run_fit("eurosat", "tip-adapter", shots=(1, 16), seeds=(1,))
    frame = cacheclip.results_frame("results")            # needs pandas
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cacheclip.datasets.catalog import store_name
from cacheclip.errors import ConfigError
from cacheclip.features import store as st
from cacheclip.features.locate import resolve_remembered
from cacheclip.features.models import prompt_ensemble
from cacheclip.fit.methods import get_method
from cacheclip.fit.stage import FitConfig, fit_dataset
from cacheclip.results.loading import load_results as _load_results
from cacheclip.results.loading import test_top1
from cacheclip.settings import build

Progress = Callable[[str, int, int], None]  # (stage, done, total), as the CLI's progress bars take


@dataclass(frozen=True)
class Split:
    """One split of a store: image features (N, D), labels (N,), image paths (relative to the
    dataset folder) and, when asked and cached, the augmented views (N, V, D)."""

    features: np.ndarray | torch.Tensor
    labels: np.ndarray | torch.Tensor
    paths: list[str]
    views: np.ndarray | torch.Tensor | None = None


class Store:
    """A feature store opened for reading (``open_store``); close it, or use ``with``."""

    def __init__(self, path: Path):
        self.path = path
        self._store = st.open_store(path)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._store.close()

    @property
    def attrs(self) -> dict[str, Any]:
        """What the store was built from: dataset, model, weights, preprocessing, split file..."""
        return dict(self._store.attrs)

    @property
    def classnames(self) -> list[str]:
        return self._store.classnames

    @property
    def splits(self) -> list[str]:
        return self._store.splits

    @property
    def classifiers(self) -> list[str]:
        """The named text classifiers the store holds (single, ensemble, ...)."""
        return list(self._store.classifiers)

    @property
    def logit_scale(self) -> float:
        return float(self._store.attrs["logit_scale"])

    def split(self, name: str, *, views: bool = False, torch: bool = False) -> Split:
        """Every encoded item of split ``name`` (train, val, test), in item order."""
        encoded = self._store.encoded(name)
        features, labels, aug = self._store.read(name, encoded, aug=views)
        paths = self._store.listing(name).paths
        out = Split(features, labels, [paths[i] for i in encoded], aug)
        return _as_torch(out) if torch else out

    def text_classifier(self, name: str | None = None, *, torch: bool = False) -> np.ndarray | Any:
        """(K, D) class weights of the named classifier (``classifiers``; None: ``single`` when the
        store holds it, else its first): one template's raw embedding, or the prompt ensemble of
        several, as ``fit`` builds them."""
        named = self._store.classifiers
        name = name or ("single" if "single" in named else next(iter(named)))
        if name not in named:
            raise ConfigError(f"{self.path.name} holds no classifier '{name}'", f"one of: {', '.join(named)}")
        per_template, _ = self._store.text_features()
        picked = _torch.from_numpy(per_template[named[name]]).float()
        weights = picked[0] if len(named[name]) == 1 else prompt_ensemble(picked)
        return weights if torch else weights.numpy()


_torch = torch  # ``torch`` is also a keyword argument's name above


def _as_torch(split: Split) -> Split:
    views = None if split.views is None else _torch.from_numpy(split.views)
    return Split(_torch.from_numpy(split.features), _torch.from_numpy(split.labels), split.paths, views)


def store_path(
    dataset: str, *, model: str = "RN50", pretrained: str = "openai", cache_dir: str | Path = "cache"
) -> Path:
    """Where ``cacheclip extract`` writes the store of ``dataset`` for this model and weights."""
    ref = resolve_remembered(model, pretrained, cache_dir)
    return st.store_path(cache_dir, ref.model_id, ref.weights_id, store_name(dataset))


def open_store(
    dataset: str | Path, *, model: str = "RN50", pretrained: str = "openai", cache_dir: str | Path = "cache"
) -> Store:
    """Open a dataset's store (by dataset name, for ``model`` and ``pretrained`` under
    ``cache_dir``), or the store file at a path ending in ``.h5``."""
    path = Path(dataset)
    if path.suffix != ".h5":
        path = store_path(str(dataset), model=model, pretrained=pretrained, cache_dir=cache_dir)
    return Store(path)


def run_fit(
    dataset: str,
    method: str = "clip-adapter",
    *,
    shots: Sequence[int] = (1, 2, 4, 8, 16),
    seeds: Sequence[int] = (1, 2, 3),
    settings: Mapping[str, Any] | None = None,
    model: str = "RN50",
    pretrained: str = "openai",
    cache_dir: str | Path = "cache",
    results_dir: str | Path = "results",
    progress: Progress | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Fit ``method`` on ``dataset``'s store for every shot count and seed, as ``cacheclip fit``
    does, and return the result records (also written under ``results_dir``).

    ``settings``: the method's own settings by TOML key (``cacheclip methods NAME`` lists them),
    checked like a batch file's table. ``options``: what ``fit`` shares across methods, by
    ``FitConfig`` field: views, no_val, protocol, epoch, classifier, targets, device, force, ...
    """
    method_config = build(get_method(method).config, dict(settings or {}), f"settings of {method}")
    cfg = FitConfig(
        method=method,
        method_config=method_config,
        shots=tuple(shots),
        seeds=tuple(seeds),
        cache_dir=str(cache_dir),
        results_dir=str(results_dir),
        **options,
    )
    return fit_store(store_name(dataset), cfg, model=model, pretrained=pretrained, progress=progress)


def fit_store(
    store: str, cfg: FitConfig, *, model: str = "RN50", pretrained: str = "openai", progress: Progress | None = None
) -> list[dict[str, Any]]:
    """``run_fit`` from a ready ``FitConfig`` (what the CLI builds from its options), on the store
    named ``store`` (a dataset's canonical name; ``imagefolder-...`` for an image folder)."""
    cfg.validate()
    ref = resolve_remembered(model, pretrained, cfg.cache_dir)
    return fit_dataset(store, ref, cfg, model_arg=model, pretrained_arg=pretrained, progress=progress)


def load_results(*paths: str | Path) -> list[dict[str, Any]]:
    """Every result record in these files and folders (searched recursively), as ``cacheclip
    report`` reads them; ``.warnings`` on the returned list names the files it skipped."""
    return _load_results([Path(p) for p in paths or ("results",)])


def result_rows(results: Sequence[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """One flat row per result: what identifies the run and its headline numbers."""
    for r in results:
        metrics, zero_shot = r.get("metrics") or {}, r.get("zero_shot") or {}
        yield {
            "dataset": r.get("dataset"),
            "method": r.get("method"),
            "shots": r.get("shots"),
            "seed": r.get("seed"),
            "model": r.get("model"),
            "pretrained": r.get("pretrained"),
            "protocol": (r.get("protocol") or {}).get("name"),
            "matches_paper": (r.get("protocol") or {}).get("matches_paper"),
            "test_top1": test_top1(metrics),
            "val_top1": (metrics.get("val") or {}).get("top1"),
            "zero_shot_test_top1": test_top1(zero_shot),
            # fit --classes base-to-new: the base and new halves and their harmonic mean (no test_top1)
            "classes": (r.get("config") or {}).get("classes", "all"),
            "base_top1": (metrics.get("base") or {}).get("top1"),
            "new_top1": (metrics.get("new") or {}).get("top1"),
            "harmonic_mean_top1": (metrics.get("harmonic_mean") or {}).get("top1"),
            "chosen": (r.get("selection") or {}).get("chosen"),
            "run_key": r.get("run_key"),
            "path": (r.get("_source") or {}).get("path"),
        }


def results_frame(*paths: str | Path):
    """``load_results`` as a pandas DataFrame, a row per run (``result_rows``); pandas is optional."""
    try:
        import pandas
    except ImportError:
        raise ConfigError("results_frame needs pandas, which is not installed", "pip install pandas") from None
    return pandas.DataFrame(list(result_rows(load_results(*paths))))
