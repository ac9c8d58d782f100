"""What a store must satisfy before any number is computed from it.

``structure_problems`` is cheap (attributes, shapes, labels, index arrays) and runs each time
a store is opened; ``checksum_problems`` reads every byte (``cacheclip check``). Both return
one line per problem, empty when the store is sound. Stores of schema 2 carry HDF5's
per-chunk fletcher32 checksums, so a damaged chunk is also refused on any ordinary read.
"""

from __future__ import annotations

import json
import math
from typing import Any

import h5py
import numpy as np

SCHEMA_VERSION = 3  # 3: named text classifiers (/text attrs); 2: checksums, item size/mtime
READABLE_SCHEMAS = (1, 2, 3)  # 1: no checksums, no item stats; still read (nothing to verify them by)
REQUIRED_ATTRS = ("schema_version", "dataset", "model", "logit_scale")


def structure_problems(f: h5py.File) -> list[str]:
    """Everything checkable without reading the features: identity attributes present,
    a finite logit scale, class names and text features that agree, and per split labels in
    range and ``encoded`` sorted, unique and in range with one feature row each."""
    attrs = f.attrs
    problems = [f"attribute '{k}' is missing" for k in REQUIRED_ATTRS if k not in attrs]
    if problems:
        return problems
    schema = int(attrs["schema_version"])
    if schema not in READABLE_SCHEMAS:
        return [f"schema_version {schema} (this cacheclip reads {', '.join(map(str, READABLE_SCHEMAS))})"]
    scale = float(attrs["logit_scale"])
    if not math.isfinite(scale) or scale <= 0:
        problems.append(f"logit_scale is {scale} (must be a finite positive number)")
    k, dim = _text_problems(f, problems)
    for split in f.get("splits", {}):
        problems += _split_problems(split, f["splits"][split], k, dim)
    return problems


def _text_problems(f: h5py.File, problems: list[str]) -> tuple[int, int]:
    """Checks classnames and text features; returns (classes, feature width), 0 when unknown."""
    k = len(f["classnames"]) if "classnames" in f else 0
    if k == 0:
        problems.append("no class names")
    if "text/per_template" not in f or "text/ensemble" not in f:
        problems.append("no text features")
        return k, 0
    per, ens = f["text/per_template"], f["text/ensemble"]
    if per.ndim != 3 or per.shape[1] != k or ens.shape != per.shape[1:]:
        problems.append(f"text features of shape {per.shape} / {ens.shape} do not match {k} class names")
    elif not (np.isfinite(per[()]).all() and np.isfinite(ens[()]).all()):
        problems.append("text features hold NaN or inf")
    if "text/templates" in f and len(f["text/templates"]) != per.shape[0]:
        problems.append(f"{len(f['text/templates'])} templates but {per.shape[0]} text feature sets")
    problems += _classifier_problems(f["text"].attrs.get("classifiers"), per.shape[0])
    return k, int(per.shape[-1])


def _classifier_problems(text: Any, templates: int) -> list[str]:
    """The named classifiers (schema 3) must each pick distinct templates the store holds."""
    if text is None:
        return []
    try:
        named = json.loads(text)
        ok = isinstance(named, dict) and all(
            isinstance(rows, list)
            and rows
            and len(set(rows)) == len(rows)
            and all(isinstance(i, int) and 0 <= i < templates for i in rows)
            for rows in named.values()
        )
    except (TypeError, ValueError):
        ok = False
    return [] if ok else [f"the named text classifiers {text!r} do not index its {templates} templates"]


def _split_problems(split: str, g: h5py.Group, k: int, dim: int) -> list[str]:
    where = f"split '{split}'"
    if "paths" not in g or "labels" not in g:
        return [f"{where} has no item list"]
    n = len(g["paths"])
    labels = g["labels"][()]
    problems = []
    if len(labels) != n:
        problems.append(f"{where} has {len(labels)} labels for {n} items")
    if len(labels) and (labels.min() < 0 or labels.max() >= k):
        problems.append(f"{where} has labels outside 0..{k - 1}")
    if "encoded" not in g:
        return problems
    encoded = g["encoded"][()]
    if len(encoded) and (np.any(np.diff(encoded) <= 0) or encoded[0] < 0 or encoded[-1] >= n):
        problems.append(f"{where}: the encoded item list is not sorted, unique and within its {n} items")
    for name in ("features", "aug_features", "item_stats"):
        if name in g and len(g[name]) != len(encoded):
            problems.append(f"{where}: {len(g[name])} rows of {name} for {len(encoded)} encoded items")
    if "features" not in g and len(encoded):
        problems.append(f"{where}: {len(encoded)} items marked encoded but no features")
    for name in ("features", "aug_features"):
        if name in g and dim and g[name].shape[-1] != dim:
            problems.append(f"{where}: {name} are {g[name].shape[-1]}-d, the text features {dim}-d")
    return problems


def checksum_problems(f: h5py.File, block_rows: int = 65536) -> list[str]:
    """Reads every numeric dataset whole, in blocks (bounded memory): a chunk whose fletcher32
    checksum fails raises in HDF5 and is reported; NaN or inf image features too."""
    problems: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if not isinstance(obj, h5py.Dataset) or obj.dtype.kind not in "fiu" or obj.size == 0:
            return
        try:
            for start in range(0, obj.shape[0], block_rows):
                block = obj[start : start + block_rows]
                if obj.dtype.kind == "f" and not np.isfinite(block).all():
                    problems.append(f"{name} holds NaN or inf")
                    return
        except OSError as e:
            problems.append(f"{name} is damaged ({damage_reason(e)})")

    f.visititems(visit)
    return problems


def damage_reason(error: OSError) -> str:
    """HDF5's read error in a few words (a failed checksum is the usual one)."""
    text = str(error)
    return "checksum mismatch" if "filter returned failure" in text or "checksum" in text.lower() else text


def checksummed(data_or_shape: Any) -> dict[str, Any]:
    """create_dataset keywords for a checksummed dataset (HDF5 needs chunking for the filter;
    an empty dataset cannot be chunked and needs no checksum)."""
    shape = data_or_shape if isinstance(data_or_shape, tuple) else np.shape(data_or_shape)
    return {"fletcher32": True} if all(shape) and shape else {}
