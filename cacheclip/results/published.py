"""Published few-shot numbers for CLIP RN50 (openai weights), as data.

The figures live in ``cacheclip/results/data/published_rn50.json`` (top-1 %, test
split, shots 1/2/4/8/16; see the file's ``_source``). They are comparable only
to runs of the same backbone and weights, hence ``published_available``.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from importlib import resources

from cacheclip.results.protocol import PublishedProtocol

PUBLISHED_SHOTS = (1, 2, 4, 8, 16)

# The paper's 11 datasets, in the order of its tables (CoOp order).
PAPER_DATASETS = (
    "imagenet",
    "caltech101",
    "oxford_pets",
    "stanford_cars",
    "oxford_flowers",
    "food101",
    "fgvc_aircraft",
    "sun397",
    "dtd",
    "eurosat",
    "ucf101",
)

# cacheclip method name -> key of its curve in the JSON.
METHOD_KEYS = {"clip-adapter": "CLIP-A", "tip-adapter": "Tip", "tip-adapter-f": "Tip-F", "gda": "GDA"}
ZERO_SHOT_KEY = "zs"  # the zero-shot numbers' key (per dataset, and of their protocol in ``_curves``)

_MODELS = {"rn50", "rn50-quickgelu"}  # open_clip names of the paper's backbone
_PRETRAINED = "openai"


@lru_cache(maxsize=1)
def _load() -> dict:
    text = resources.files("cacheclip.results").joinpath("data/published_rn50.json").read_text("utf-8")
    return json.loads(text)


def published_available(model: str, pretrained: str) -> bool:
    """True when runs of ``model``/``pretrained`` are comparable to the paper (RN50, openai)."""
    return model.lower() in _MODELS and pretrained == _PRETRAINED


def published_source() -> str:
    """Where the figures come from, in one line."""
    return str(_load()["_source"])


def published_numbers() -> dict:
    """Per dataset ``{"zs": float, "CLIP-A": [...], "Tip": [...], "Tip-F": [...]}``.

    Lists run over ``PUBLISHED_SHOTS``. A fresh copy: callers may mutate it.
    """
    return {k: copy.deepcopy(v) for k, v in _load().items() if not k.startswith("_")}


def published_curve(dataset: str, method: str) -> dict[int, float] | None:
    """Published top-1 per shot count, or None for an unknown dataset or method.

    ``"zero-shot"`` gives the zero-shot number at every shot count.
    """
    entry = _load().get(dataset) if not dataset.startswith("_") else None
    if entry is None:
        return None
    if method == "zero-shot":
        return {s: float(entry["zs"]) for s in PUBLISHED_SHOTS}
    key = METHOD_KEYS.get(method)
    if key is None:
        return None
    return {s: float(v) for s, v in zip(PUBLISHED_SHOTS, entry[key], strict=False)}


def published_provenance(method: str) -> str | None:
    """Where ``method``'s published curve comes from and the protocol behind it, in one line;
    for a method without a verified per-dataset curve, what is (not) known; None if nothing."""
    curve = _load()["_curves"].get(_curve_key(method))
    if curve is not None:
        return f"{curve['source']}; protocol: {curve['protocol']}"
    return _load()["_unverified"].get(method)


def published_zero_shot(dataset: str) -> float | None:
    """Published zero-shot top-1 for ``dataset``, or None when unknown."""
    entry = _load().get(dataset) if not dataset.startswith("_") else None
    return None if entry is None else float(entry["zs"])


def _curve_key(method: str) -> str:
    return ZERO_SHOT_KEY if method == "zero-shot" else METHOD_KEYS.get(method, "")


def _for(value: object, dataset: str) -> object:
    """A per-dataset field: ``{"*": default, dataset: override}``, or one value for every dataset."""
    return value.get(dataset, value.get("*")) if isinstance(value, dict) else value


def _listed(value: object, dataset: str) -> tuple[str, ...]:
    """A per-dataset list field: the ``"*"`` entries, then the dataset's own."""
    value = value if isinstance(value, dict) else {}
    return tuple(value.get("*", [])) + tuple(value.get(dataset, []))


def published_protocol(dataset: str, method: str) -> PublishedProtocol | None:
    """How ``method``'s published number on ``dataset`` was made (``"zero-shot"``: the zero-shot
    number), from ``_curves`` in the JSON; None when there is no published curve for it."""
    key = _curve_key(method)
    curve = _load()["_curves"].get(key)
    if curve is None or published_curve(dataset, method) is None:
        return None
    seeds, scale = curve["seeds"], _for(curve["aug_scale"], dataset)
    return PublishedProtocol(
        curve=key,
        seeds=None if seeds is None else tuple(seeds),
        val=str(_for(curve["val"], dataset)),
        classifier=str(_for(curve["classifier"], dataset)),
        preprocess=str(curve["preprocess"]),
        aug_scale=tuple(scale) if isinstance(scale, list) else scale,
        epoch=str(curve["epoch"]),
        protocol=curve["cacheclip_protocol"],
        never=_listed(curve["never"], dataset),
        unknown=_listed(curve["unknown"], dataset),
        caveats=_listed(curve["caveats"], dataset),
    )


def published_protocol_summary(method: str) -> str | None:
    """``method``'s published protocol in one line: the usual datasets', then where ImageNet's
    differs, then what can never be matched (``"zero-shot"``: the zero-shot numbers'); None
    without a curve."""
    usual, imagenet = published_protocol("caltech101", method), published_protocol("imagenet", method)
    if usual is None:
        return None
    text = "; ".join([*usual.fields().values(), *usual.caveats])
    if imagenet is not None:
        theirs, ours = imagenet.fields(), usual.fields()
        changed = [v for k, v in theirs.items() if ours.get(k) != v]
        text += f". ImageNet: {'; '.join(changed)}" if changed else ""
    if usual.never:
        text += f". Never like for like: {'; '.join(usual.never)}"
    extra = [n for n in (imagenet.never if imagenet else ()) if n not in usual.never]
    return text + (f". Never like for like on ImageNet: {'; '.join(extra)}" if extra else "")


# ----------------------------------------------------------------------------- distribution shift


def published_shift(method: str) -> dict[str, float] | None:
    """Published top-1 of ``method`` fitted on ImageNet (``_shift.shots`` shots) and tested on
    ImageNet and its shift sets, keyed by dataset name; None when no number is verified.

    ``_shift.methods.<method>`` holds ``{"top1": {dataset: float}, "source": ..., "protocol": ...}``.
    """
    entry = _load().get("_shift", {}).get("methods", {}).get(method)
    return None if entry is None else {d: float(v) for d, v in entry["top1"].items()}


def published_shift_setting() -> tuple[str, int]:
    """(source dataset, shots) the published shift numbers were fitted with: ('imagenet', 16)."""
    shift = _load().get("_shift", {})
    return str(shift.get("source", "imagenet")), int(shift.get("shots", 16))


def published_shift_methods() -> list[str]:
    """Methods with verified shift numbers (possibly none of ours, e.g. a paper-only row)."""
    return list(_load().get("_shift", {}).get("methods", {}))


def published_shift_provenance(method: str) -> str | None:
    """Where ``method``'s published shift numbers come from, with their protocol (templates,
    seeds), in one line; or what is known of them when none is verified; None if nothing."""
    shift = _load().get("_shift", {})
    entry = shift.get("methods", {}).get(method)
    if entry is not None:
        return f"{entry['source']}; protocol: {entry['protocol']}"
    return shift.get("_unverified", {}).get(method)
