"""What a store must satisfy before any number is computed from it.

``structure_problems`` is cheap (attributes, shapes, labels, index arrays) and runs each time
a store is opened; ``checksum_problems`` reads every byte (``cacheclip check``). Both return
one line per problem, empty when the store is sound. Stores of schema 2 carry HDF5's
per-chunk fletcher32 checksums, so a damaged chunk is also refused on any ordinary read.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import h5py
import numpy as np

SCHEMA_VERSION = 4  # 4: attribute digest; 3: named text classifiers (/text attrs); 2: checksums, item size/mtime
READABLE_SCHEMAS = (1, 2, 3, 4)  # 1: no checksums, no item stats; still read (nothing to verify them by)
DIGESTED_SCHEMA = 4  # from this schema on, every attribute is covered by ATTRS_DIGEST
REQUIRED_ATTRS = ("schema_version", "dataset", "model", "logit_scale")
ATTRS_DIGEST = "attrs_sha256"  # root attribute: sha256 of every other attribute of the file (attrs_digest)
NO_ITEM_STATS = "item_stats_missing"  # split group attribute: why its images' size/mtime are not recorded
# The type each attribute must have when present (numpy scalars are read as Python values).
_INT, _NUMBER, _TEXT = "an integer", "a number", "text"
ATTR_TYPES = {
    "schema_version": _INT,
    "logit_scale": _NUMBER,
    "aug_views": _INT,
    "aug_seed": _INT,
    "embed_dim": _INT,
    "dataset": _TEXT,
    "model": _TEXT,
    "pretrained": _TEXT,
    "dtype": _TEXT,
    "precision": _TEXT,
    "split_sha256": _TEXT,
    "weights_sha256": _TEXT,
    "aug_scale": _TEXT,
    "aug_ratio": _TEXT,
    "preprocess": _TEXT,
    "templates_spec": _TEXT,
    "dataset_source": _TEXT,
    "data_root": _TEXT,
}


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


def _type_ok(value: Any, kind: str) -> bool:
    value = _plain(value)
    if kind == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == _NUMBER:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, str)


def attribute_type_problems(attrs: Any) -> list[str]:
    """An attribute of the wrong type (``schema_version`` "3" or 3.7, ``aug_views`` 2.5,
    ``logit_scale`` "100"): no writer of cacheclip stores such values."""
    return [
        f"attribute '{k}' is {_plain(attrs[k])!r}, not {kind}"
        for k, kind in ATTR_TYPES.items()
        if k in attrs and not _type_ok(attrs[k], kind)
    ]


def _canonical(value: Any) -> list:
    """An attribute value with its type, in a form JSON writes exactly (floats by repr)."""
    if isinstance(value, np.ndarray):
        return [f"array{value.dtype.str}{list(value.shape)}", [_canonical(v) for v in value.ravel().tolist()]]
    if isinstance(value, np.generic):
        return [value.dtype.str, value.item()]
    if isinstance(value, bytes):
        return ["bytes", value.hex()]
    return [type(value).__name__, value]


def attrs_digest(f: h5py.File) -> str:
    """sha256 over every attribute of the file (root, groups, datasets), each with its path,
    name, type and exact value, except the digest itself and the commit time (which changes no
    number: two stores built from the same inputs get the same digest)."""
    entries: list = []

    def add(name: str, obj: Any) -> None:
        for key in sorted(obj.attrs):
            if not (name == "/" and key in (ATTRS_DIGEST, "committed_at")):
                entries.append([name, key, _canonical(obj.attrs[key])])

    add("/", f)
    f.visititems(lambda name, obj: add(name, obj))
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()


def digest_problems(f: h5py.File) -> list[str]:
    """From schema 4 on, the attributes must be those the store was committed with: one
    changed number (a flipped bit in ``logit_scale``) changes every score computed from it."""
    try:
        schema = int(_plain(f.attrs.get("schema_version", 1)))
    except (TypeError, ValueError):
        return []  # reported by the type check
    if schema < DIGESTED_SCHEMA:
        return []
    recorded = _plain(f.attrs.get(ATTRS_DIGEST))
    if recorded is None:
        return [f"attribute '{ATTRS_DIGEST}' is missing (it covers the other attributes)"]
    if recorded != attrs_digest(f):
        return ["its attributes changed since it was written (their digest does not match)"]
    return []


def structure_problems(f: h5py.File) -> list[str]:
    """Everything checkable without reading the features: identity attributes present,
    a finite logit scale, class names and text features that agree, and per split labels in
    range and ``encoded`` sorted, unique and in range with one feature row each."""
    attrs = f.attrs
    problems = [f"attribute '{k}' is missing" for k in REQUIRED_ATTRS if k not in attrs]
    problems += attribute_type_problems(attrs)
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
        problems += _split_problems(split, f["splits"][split], k, dim, schema)
    problems += _view_problems(f, int(_plain(attrs.get("aug_views", 0))))
    return problems


def _view_problems(f: h5py.File, views: int) -> list[str]:
    """The train features must hold the augmented views ``aug_views`` promises (a fit would
    otherwise train on fewer views, or none, without a word)."""
    g = f.get("splits/train")
    if views < 0:
        return [f"aug_views is {views}"]
    if g is None or "features" not in g or not len(g["features"]) or not views:
        return []
    have = g["aug_features"].shape[1] if "aug_features" in g and g["aug_features"].ndim == 3 else 0
    if have != views:
        return [f"aug_views promises {views} augmented views per train image, the store holds {have}"]
    return []


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
    elif k and per.shape[-1]:
        zero = sorted(
            set(np.nonzero(~np.any(per[()], axis=-1))[1].tolist())
            | set(np.nonzero(~np.any(ens[()], axis=-1))[0].tolist())
        )
        if zero:
            problems.append(f"the text features of {len(zero)} classes are all zero (class {zero[0]} first)")
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


def _split_problems(split: str, g: h5py.Group, k: int, dim: int, schema: int = SCHEMA_VERSION) -> list[str]:
    where = f"split '{split}'"
    if "paths" not in g or "labels" not in g:
        return [f"{where} has no item list"]
    n = len(g["paths"])
    labels = g["labels"][()]
    problems = []
    if len(labels) != n:
        problems.append(f"{where} has {len(labels)} labels for {n} items")
    if len(labels) and (labels.min() < 0 or labels.max() >= k):
        bad = int(np.nonzero((labels < 0) | (labels >= k))[0][0])
        path = g["paths"][bad] if bad < n else b"?"
        path = path.decode(errors="replace") if isinstance(path, bytes) else str(path)
        problems.append(f"{where} has labels outside 0..{k - 1} (item {bad}, {path}: label {labels[bad]})")
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
    if schema >= DIGESTED_SCHEMA and len(encoded) and "item_stats" not in g and NO_ITEM_STATS not in g.attrs:
        problems.append(f"{where}: item_stats is missing (the size and mtime of each encoded image)")
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
