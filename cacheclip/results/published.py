"""Published numbers, as data, each comparable only to runs of its backbone and weights
(``backbone_of``; every figure here used OpenAI's weights).

- ``data/published_rn50.json``: the few-shot curves for CLIP RN50 (top-1 %, test split, shots
  1/2/4/8/16; see the file's ``_source``); ``published_available`` says which runs they fit.
- ``data/published_shift.json``: ImageNet 16-shot -> V2 / Sketch / A / R rows (RN50, ViT-B/32,
  ViT-B/16), each with source and kind (``PublishedShift``).
- ``data/published_base_to_new.json``: base-to-new averages and GDA's per-dataset numbers
  (ViT-B/16), each with source, kind and H convention (``PublishedB2N``).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from cacheclip.results.protocol import UNKNOWN, PublishedProtocol

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

# A published backbone -> the open_clip names of it. Every figure stored here used OpenAI's weights.
BACKBONES = {
    "RN50": {"rn50", "rn50-quickgelu"},
    "ViT-B/32": {"vit-b-32", "vit-b-32-quickgelu"},
    "ViT-B/16": {"vit-b-16", "vit-b-16-quickgelu"},
}
_PRETRAINED = "openai"


def _data(name: str) -> dict:
    return json.loads(resources.files("cacheclip.results").joinpath(f"data/{name}").read_text("utf-8"))


@lru_cache(maxsize=1)
def _load() -> dict:
    return _data("published_rn50.json")


def backbone_of(model: str, pretrained: str) -> str | None:
    """The published backbone runs of ``model``/``pretrained`` can sit beside ("ViT-B/16"), or None:
    a figure is only ever set beside runs of its own backbone and weights."""
    if pretrained != _PRETRAINED:
        return None
    return next((name for name, models in BACKBONES.items() if model.lower() in models), None)


def published_available(model: str, pretrained: str) -> bool:
    """True when runs of ``model``/``pretrained`` are comparable to the few-shot paper (RN50, openai)."""
    return backbone_of(model, pretrained) == "RN50"


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

KINDS = ("primary", "official repo", "secondary")  # closest to the paper first


@dataclass(frozen=True)
class PublishedShift:
    """One published row of the shift table: ``top1`` by dataset (ImageNet and the targets it
    reports), of ``backbone``; ``templates``: the store's --templates it is known to match (None:
    not recorded at the source); ``kind``: primary, official repo or secondary."""

    method: str
    label: str
    variant: str
    backbone: str
    templates: str | None
    top1: dict[str, float]
    source: str
    kind: str
    protocol: str
    note: str = ""

    @property
    def name(self) -> str:
        return f"{self.label}, {self.variant}" if self.variant else self.label

    def provenance(self) -> str:
        """Source (kind); protocol; note: one line."""
        templates = "" if self.templates else "; templates not recorded"
        note = f"; {self.note}" if self.note else ""
        return f"{self.source} ({self.kind}); protocol: {self.protocol}{templates}{note}"


@lru_cache(maxsize=1)
def _load_shift() -> dict:
    return _data("published_shift.json")


def published_shift_setting() -> tuple[str, int]:
    """(source dataset, shots) the published shift numbers were fitted with: ('imagenet', 16)."""
    shift = _load_shift()
    return str(shift["source"]), int(shift["shots"])


def published_shift_entries(backbone: str | None) -> list[PublishedShift]:
    """Every published shift row of ``backbone``, in the file's order; [] for None."""
    fields = PublishedShift.__dataclass_fields__
    return [
        PublishedShift(**{k: v for k, v in e.items() if k in fields})
        for e in _load_shift()["entries"]
        if e["backbone"] == backbone
    ]


def pick_shift_entry(entries: list[PublishedShift], method: str, templates: tuple[str, ...]) -> PublishedShift | None:
    """The published row to set beside our ``method`` run with store ``templates``: of those of
    that method whose templates are ours or not recorded, one of our templates first, then the
    closest to the paper (``KINDS``); None when none fits."""
    fits = [e for e in entries if e.method == method and (e.templates is None or e.templates in templates)]
    return min(fits, key=lambda e: (e.templates is None, KINDS.index(e.kind)), default=None)


def published_shift_note(method: str) -> str | None:
    """What is known of ``method``'s published shift numbers when none stands beside a run."""
    return _load_shift()["unverified"].get(method)


# ----------------------------------------------------------------------------- base-to-new

H_OF_MEANS, MEAN_OF_H = "h_of_means", "mean_of_h"  # how an 11-dataset average's H was taken


def harmonic_mean(base: float, new: float) -> float:
    """H = 2 B N / (B + N): high only when both are (0 when both are 0)."""
    return 0.0 if base + new == 0 else 2 * base * new / (base + new)


@dataclass(frozen=True)
class PublishedB2N:
    """One published base-to-new figure (top-1 %): base, new, H; for an average, ``h_convention``
    says whether H is that of the mean base and new or the mean of per-dataset H. ``kind``:
    primary, official repo or secondary."""

    method: str
    label: str
    base: float
    new: float
    h: float
    h_convention: str
    source: str
    kind: str
    protocol: str
    note: str = ""

    def protocol_record(self) -> PublishedProtocol:
        """What ``protocol.compare`` needs: the sources record no more than the protocol's name,
        so templates, preprocessing and selection are unknown (never assumed equal to ours)."""
        return PublishedProtocol(
            curve=f"base-to-new {self.label}",
            seeds=None,
            val=UNKNOWN,
            classifier=UNKNOWN,
            preprocess=UNKNOWN,
            aug_scale=None,
            epoch=UNKNOWN,
            protocol=None,
            unknown=(f"the published run's templates, preprocessing and selection ({self.protocol})",),
        )


@lru_cache(maxsize=1)
def _load_b2n() -> dict:
    return _data("published_base_to_new.json")


def published_b2n_settings() -> list[tuple[str, int]]:
    """The (backbone, shots) pairs that have published base-to-new numbers."""
    return sorted({(e["backbone"], e["shots"]) for e in _load_b2n()["averages"]})


def h_convention_text(convention: str) -> str:
    return str(_load_b2n()["_h_conventions"][convention])


def _b2n(entry: dict, base: float, new: float, h: float, convention: str) -> PublishedB2N:
    source = _load_b2n()["_sources"][entry["source"]]
    return PublishedB2N(
        method=entry["method"],
        label=entry.get("label", entry["method"]),
        base=float(base),
        new=float(new),
        h=float(h),
        h_convention=convention,
        source=source["source"],
        kind=entry["kind"],
        protocol=source["protocol"],
        note=entry.get("note", ""),
    )


def published_b2n_averages(backbone: str | None, shots: int) -> list[PublishedB2N]:
    """The published 11-dataset averages of ``backbone`` at ``shots``, in the file's order
    (two entries for one method where two sources disagree); [] for another backbone."""
    return [
        _b2n(e, e["base"], e["new"], e["h"], e["h_convention"])
        for e in _load_b2n()["averages"]
        if e["backbone"] == backbone and e["shots"] == shots
    ]


def published_b2n_datasets(method: str, backbone: str | None, shots: int) -> dict[str, PublishedB2N]:
    """``method``'s published per-dataset base and new of ``backbone`` at ``shots`` (H computed
    here, H of the two), by dataset; {} when none is stored."""
    for entry in _load_b2n()["per_dataset"]:
        if (entry["method"], entry["backbone"], entry["shots"]) == (method, backbone, shots):
            return {d: _b2n(entry, b, n, harmonic_mean(b, n), H_OF_MEANS) for d, (b, n) in entry["base_new"].items()}
    return {}
