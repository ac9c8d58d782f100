"""Synthetic feature stores for the fit tests: committed through the real store code, no model needed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cacheclip.features import store as st
from cacheclip.features.models import resolve_model

REF = resolve_model("RN50", "none")  # what `--model RN50 --pretrained none` names: no weights needed
K, D, V = 6, 32, 3


def write_store(
    cache: Path, dataset: str, text: np.ndarray, splits: dict, aug_scale=(0.08, 1.0), templates: int = 1
) -> Path:
    """A committed store from arrays: splits maps name -> (features (N, D), labels (N,), aug (N, V, D) | None).
    ``templates`` > 1 gives each extra template the text embeddings plus a little noise."""
    path = st.store_path(cache, REF.model_id, REF.weights_id, dataset)
    listings = {}
    for name in ("train", "val", "test"):
        feats, labels, aug = splits.get(name, (None, np.zeros(0, np.int64), None))
        listings[name] = st.SplitListing([f"{name}/{i}.jpg" for i in range(len(labels))], list(map(int, labels)))
        if feats is not None and len(labels):
            st.write_part(
                path,
                st.Chunk(
                    name,
                    np.arange(len(labels)),
                    feats.astype(np.float32),
                    None if aug is None else aug.astype(np.float32),
                ),
            )
    views = next(iter(a.shape[1] for _, _, a in splits.values() if a is not None), 0)
    attrs = {
        "dataset": dataset,
        **REF.identity(),
        "logit_scale": 100.0,
        "dtype": "float32",
        "aug_views": views,
        "aug_scale": json.dumps(list(aug_scale)),
        "templates_spec": "default",
    }
    classnames = [f"class {k}" for k in range(text.shape[0])]
    rng = np.random.default_rng(len(classnames))
    per_template = np.stack([text] + [text + 0.1 * rng.standard_normal(text.shape) for _ in range(templates - 1)])
    unit = per_template / np.linalg.norm(per_template, axis=-1, keepdims=True)
    ensemble = unit.mean(0) / np.linalg.norm(unit.mean(0), axis=-1, keepdims=True)
    names = ["a photo of a {}."] + [f"template {t} of a {{}}." for t in range(1, templates)]
    single = templates == 1
    st.commit(
        path,
        st.StoreContents(
            attrs,
            classnames,
            listings,
            names,
            per_template.astype(np.float32),
            (text if single else ensemble).astype(np.float32),
        ),
        "float32",
    )
    return path


def clustered(
    cache: Path,
    dataset: str = "eurosat",
    *,
    per_class=(10, 5, 20),
    with_val=True,
    views=V,
    text_noise=3.0,
    seed=0,
    aug_scale=(0.08, 1.0),
    templates=1,
) -> Path:
    """K Gaussian clusters on a shared direction (CLIP-like: all cosines high), raw norms 2-4;
    the text classifier is the cluster centres plus noise, so zero-shot is weak."""
    rng = np.random.default_rng(seed)
    common = rng.standard_normal(D)
    centers = common + 0.8 * rng.standard_normal((K, D))
    splits = {}
    for name, n in zip(("train", "val", "test"), per_class, strict=False):
        if name == "val" and not with_val:
            continue
        labels = np.repeat(np.arange(K), n)
        feats = (centers[labels] + 0.5 * rng.standard_normal((len(labels), D))) * rng.uniform(2, 4, (len(labels), 1))
        aug = None
        if name == "train" and views:
            aug = feats[:, None] + 0.3 * rng.standard_normal((len(labels), views, D))
        splits[name] = (feats, labels, aug)
    text = centers + text_noise * rng.standard_normal((K, D))
    return write_store(cache, dataset, text, splits, aug_scale, templates)


def store_reads(monkeypatch, method: str, fit) -> list[tuple[str, bool, object]]:
    """Run ``fit()`` with the store's reads spied on: (split, read while ``method`` trained, indices)."""
    import dataclasses

    from cacheclip.fit import stage
    from cacheclip.fit.methods import get_method

    reads, training = [], [False]
    real_read, real = st.FeatureStore.read, get_method(method)

    def spy_read(self, split, indices=None, *, aug=False):
        reads.append((split, training[0], indices))
        return real_read(self, split, indices, aug=aug)

    def spy_train(ctx, plans):
        training[0] = True
        try:
            return real.train(ctx, plans)
        finally:
            training[0] = False

    spy = dataclasses.replace(real, train=spy_train)
    monkeypatch.setattr(st.FeatureStore, "read", spy_read)
    monkeypatch.setattr(stage, "get_method", lambda name: spy if name == method else get_method(name))
    fit()
    return reads


def reads_while_training(monkeypatch, method: str, fit) -> list[tuple[str, bool]]:
    """Run ``fit()`` with the store's reads spied on: (split, read while ``method`` trained)."""
    return [(split, training) for split, training, _ in store_reads(monkeypatch, method, fit)]
