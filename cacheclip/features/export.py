"""Export one split of a store to a NumPy .npz, for numpy / scikit-learn users."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cacheclip.common import atomic_path
from cacheclip.errors import ConfigError
from cacheclip.features.store import open_store


def export_split(store: Path, split: str, out: Path, expect: dict | None = None) -> dict[str, tuple[int, ...]]:
    """Write ``features`` (N, D) clean view, ``labels`` (N,), ``paths`` (N,), ``classnames`` (K,),
    ``text_features`` (T, K, D), ``text_ensemble`` (K, D), ``templates`` (T,) and, for train with
    augmented views, ``aug_features`` (V, N, D). Returns the array shapes."""
    if Path(out).is_dir():
        raise ConfigError(f"--out {out} is a folder", f"give a file name, e.g. --out {Path(out) / 'features.npz'}")
    with open_store(store, expect) as s:
        features, labels, aug = s.read(split, aug=True)
        paths = np.array(s.listing(split).paths, dtype=object)[s.encoded(split)].astype(str)
        per_template, ensemble = s.text_features()
        arrays = {
            "features": features,
            "labels": labels,
            "paths": paths,
            "classnames": np.array(s.classnames, dtype=str),
            "templates": np.array(s.templates, dtype=str),
            "text_features": per_template,
            "text_ensemble": ensemble,
            "logit_scale": np.float32(s.attrs["logit_scale"]),
        }
        if aug is not None:
            arrays["aug_features"] = np.ascontiguousarray(aug.transpose(1, 0, 2))  # (V, N, D)
    with atomic_path(out) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    return {k: tuple(np.shape(v)) for k, v in arrays.items()}
