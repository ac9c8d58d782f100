"""Run protocols, published protocols, and whether a published number is like for like with ours.

A result's *run protocol* is what, beyond method, data and seed, decides its numbers and that the
report must never merge across: ``--protocol``, the text classifier (when not the method's
paper's), the store's preprocessing and crop scale, and ``--epoch``. ``run_protocol`` reads it from
a result (older results lack some fields: their defaults apply).

A published curve's protocol (``PublishedProtocol``, built by ``published.published_protocol``)
says the same of the paper's run, with "unknown" where it is not known. ``compare`` judges one of
our cells against it: "yes", "no" (with the reasons) or "uncertain" (what is not known).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cacheclip.common import COOP_CROP_SCALE

UNKNOWN = "unknown"
YES, NO, UNCERTAIN = "yes", "no", "uncertain"
SINGLE, ENSEMBLE = "single", "ensemble"
SPEC_CLASSIFIERS = {"default": SINGLE, "imagenet7": ENSEMBLE}  # a store's --templates -> classifier name
# The ImageNet classifier of each method's paper (mirrors the fit layer's Method.paper_classifier),
# for results written before they recorded it; every other dataset: the single template.
PAPER_IMAGENET_CLASSIFIER = {
    "zero-shot": ENSEMBLE,
    "tip-adapter": ENSEMBLE,
    "tip-adapter-f": ENSEMBLE,
    "gda": ENSEMBLE,
    "proker": ENSEMBLE,
    "lp++": ENSEMBLE,
    "cross-modal": ENSEMBLE,
    "clap": "single+ensemble",
    "zs-lp": "single+ensemble",
    "taskres": "single+ensemble",
}
CLASSIFIER_WORDS = {
    SINGLE: "single template",
    ENSEMBLE: "7-template ensemble",
    "single+ensemble": "8 templates (single + ensemble)",
}


def _scale(value: object) -> tuple[float, ...] | None:
    """A crop scale from a store attribute (JSON text or a list), or None when absent/unreadable."""
    try:
        parsed = json.loads(value) if isinstance(value, str) else value
        return tuple(float(v) for v in parsed)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None


def scale_text(scale: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in scale) + ")"


def classifier_words(name: str) -> str:
    return CLASSIFIER_WORDS.get(name, name)


# ----------------------------------------------------------------------------- our runs


def _attrs(result: dict) -> dict:
    return (result.get("store") or {}).get("attrs") or {}


def classifier_of(result: dict) -> str:
    """The text classifier a run used: ``result["classifier"]["name"]``, or for older results the
    one its store's ``templates_spec`` implies (``default`` -> single, ``imagenet7`` -> ensemble)."""
    name = (result.get("classifier") or {}).get("name")
    if name:
        return SPEC_CLASSIFIERS.get(str(name), str(name))  # "imagenet7" by --templates is the ensemble
    spec = str(_attrs(result).get("templates_spec", "default"))
    return SPEC_CLASSIFIERS.get(spec, spec)


def paper_classifier_of(result: dict) -> str:
    """The classifier the run's method's paper used on its dataset (recorded, or known here)."""
    paper = (result.get("classifier") or {}).get("paper")
    if paper:
        return SPEC_CLASSIFIERS.get(str(paper), str(paper))
    if result.get("dataset") != "imagenet":
        return SINGLE
    return PAPER_IMAGENET_CLASSIFIER.get(str(result.get("method")), SINGLE)


def epoch_rule_of(result: dict) -> str:
    """``last`` or ``best-val``; ``last`` where --epoch does not apply (the run is the same)."""
    text = str((result.get("config") or {}).get("epoch", "last"))
    return "best-val" if text.startswith("best-val") and "does not apply" not in text else "last"


def val_source_of(result: dict) -> str:
    return str((result.get("fewshot") or {}).get("val_source") or "val")


def preprocess_of(result: dict) -> str:
    return str(_attrs(result).get("preprocess_protocol", "default"))


def aug_scale_of(result: dict) -> tuple[float, ...]:
    """The store's crop scale of its augmented views (CoOp's when not recorded)."""
    return _scale(_attrs(result).get("aug_scale")) or tuple(COOP_CROP_SCALE)


@dataclass(frozen=True, order=True)
class RunProtocol:
    """The run protocol a report groups on; the defaults are cacheclip's default fit.

    ``classifier`` is "" when each run used its method's paper classifier on its dataset (so one
    report spans ImageNet's ensemble and the other datasets' single template), else the one used
    instead. ``aug_scale`` is None for CoOp's (0.08, 1), for coop-2021 stores (their views do not
    crop) and for zero-shot (it uses no views); ``epoch`` is ``last`` where --epoch does not apply.
    """

    protocol: str = "fewshot"
    classifier: str = ""
    preprocess: str = "default"
    epoch: str = "last"
    aug_scale: tuple[float, ...] | None = None

    def parts(self) -> list[str]:
        """The non-default parts in words, e.g. ["official", "ensemble"] (empty: the default)."""
        parts = [self.protocol] if self.protocol != "fewshot" else []
        parts += [self.classifier] if self.classifier else []
        parts += [self.preprocess] if self.preprocess != "default" else []
        parts += ["best-val epoch"] if self.epoch != "last" else []
        parts += ["crop scale " + "-".join(f"{v:g}" for v in self.aug_scale)] if self.aug_scale is not None else []
        return parts

    @property
    def rank(self) -> tuple:
        """Sort key: the default protocol first."""
        return (bool(self.parts()), self.parts())


def run_protocol(result: dict) -> RunProtocol:
    """The run protocol of one result (older results: the defaults of what they lack)."""
    protocol = (result.get("config") or {}).get("protocol") or (result.get("protocol") or {}).get("name")
    classifier = classifier_of(result)
    preprocess = preprocess_of(result)
    scale = aug_scale_of(result)
    views = result.get("method") != "zero-shot" and preprocess != "coop-2021"
    return RunProtocol(
        protocol=str(protocol or "fewshot"),
        classifier="" if classifier == paper_classifier_of(result) else classifier,
        preprocess=preprocess,
        epoch=epoch_rule_of(result) if result.get("method") != "zero-shot" else "last",
        aug_scale=scale if views and list(scale) != list(COOP_CROP_SCALE) else None,
    )


@dataclass(frozen=True)
class CellRuns:
    """What the runs of one of our cells did, as ``compare`` needs it (sets: runs may disagree)."""

    protocol: str
    classifiers: frozenset[str]
    preprocess: str
    epoch: str
    aug_scale: tuple[float, ...]
    val_sources: frozenset[str]

    @classmethod
    def of(cls, results: Iterable[dict]) -> CellRuns:
        results = list(results)
        first = results[0]
        return cls(
            protocol=run_protocol(first).protocol,
            classifiers=frozenset(classifier_of(r) for r in results),
            preprocess=preprocess_of(first),
            epoch=epoch_rule_of(first),
            aug_scale=aug_scale_of(first),
            val_sources=frozenset(val_source_of(r) for r in results),
        )


# ----------------------------------------------------------------------------- published runs


@dataclass(frozen=True)
class PublishedProtocol:
    """How a published curve was made on one dataset. Strings are ``UNKNOWN`` when not known.

    ``seeds``: () for no seed (zero-shot), None when unknown, else the seeds averaged.
    ``val``: what chose the hyperparameters ("full val split", "test", "none", ...).
    ``aug_scale``: the crop scale of the training/cache views; None when no views are used.
    ``epoch``: "n/a", "last", "best-val", "best on test" or unknown.
    ``protocol``: our ``fit --protocol`` that follows it (None: either).
    ``never``: why no cacheclip run can ever be like for like on this dataset (e.g. chose on test).
    ``caveats``: differences that are noted, not judged (e.g. its own random few-shot draws).
    """

    curve: str
    seeds: tuple[int, ...] | None
    val: str
    classifier: str
    preprocess: str
    aug_scale: tuple[float, ...] | str | None
    epoch: str
    protocol: str | None
    never: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()
    caveats: tuple[str, ...] = field(default=())

    def fields(self) -> dict[str, str]:
        """Its parts in words, in a fixed order: seeds, val, classifier, preprocessing, views,
        epoch, our protocol (views and epoch only where they apply)."""
        if self.seeds is None:
            seeds = "seeds unknown"
        elif not self.seeds:
            seeds = "no seed (no training)"
        elif len(self.seeds) == 1:
            seeds = f"seed {self.seeds[0]} only"
        else:
            seeds = f"mean of seeds {', '.join(map(str, self.seeds))}"
        out = {"seeds": seeds, "val": f"chosen on: {self.val}"}
        out["classifier"] = f"classifier: {classifier_words(self.classifier)}"
        out["preprocess"] = f"preprocessing: {self.preprocess}"
        if self.aug_scale is not None:
            scale = self.aug_scale if isinstance(self.aug_scale, str) else scale_text(self.aug_scale)
            out["views"] = f"views crop scale: {scale}"
        if self.epoch != "n/a":
            out["epoch"] = f"epoch: {self.epoch}"
        out["protocol"] = "cacheclip: " + (f"--protocol {self.protocol}" if self.protocol else "any --protocol")
        return out

    def summary(self) -> str:
        """One line: seeds; val; classifier; preprocessing; views; epoch; our protocol."""
        return "; ".join(self.fields().values())


# ----------------------------------------------------------------------------- judging


@dataclass(frozen=True)
class Verdict:
    """``like`` is yes / no / uncertain; ``reasons`` say why not (or what is not known)."""

    like: str
    reasons: tuple[str, ...] = ()


def compare(ours: CellRuns, paper: PublishedProtocol, zero_shot: bool = False) -> Verdict:
    """Whether our cell (its runs ``ours``) was made as the published number was. ``zero_shot``:
    the comparison is of the runs' zero-shot classifier (no training: only text and images count)."""
    mismatch = list(paper.never)
    mismatch += _classifier_mismatch(ours, paper)
    if paper.preprocess not in (UNKNOWN, ours.preprocess):
        mismatch.append(f"preprocessing {ours.preprocess} (published: {paper.preprocess})")
    if not zero_shot:
        mismatch += _training_mismatch(ours, paper)
    unknown = list(paper.unknown)
    if mismatch:
        return Verdict(NO, tuple(mismatch + [f"also not known: {u}" for u in unknown]))
    return Verdict(UNCERTAIN, tuple(unknown)) if unknown else Verdict(YES)


def _classifier_mismatch(ours: CellRuns, paper: PublishedProtocol) -> list[str]:
    if paper.classifier == UNKNOWN or ours.classifiers == {paper.classifier}:
        return []
    used = " and ".join(classifier_words(c) for c in sorted(ours.classifiers))
    return [f"classifier {used} (published: {classifier_words(paper.classifier)})"]


def _training_mismatch(ours: CellRuns, paper: PublishedProtocol) -> list[str]:
    out = []
    if paper.protocol is not None and ours.protocol != paper.protocol:
        out.append(f"--protocol {ours.protocol} (published: as --protocol {paper.protocol})")
    if paper.val == "full val split" and ours.val_sources != {"full val split"}:
        out.append(f"chosen on {' and '.join(sorted(ours.val_sources))} (published: the full val split)")
    crops = ours.preprocess != "coop-2021"  # coop-2021 views translate, they do not crop
    if crops and isinstance(paper.aug_scale, tuple) and list(ours.aug_scale) != list(paper.aug_scale):
        out.append(f"views crop scale {scale_text(ours.aug_scale)} (published: {scale_text(paper.aug_scale)})")
    if paper.epoch in ("last", "best-val") and ours.epoch != paper.epoch:
        out.append(f"--epoch {ours.epoch} (published: {paper.epoch})")
    return out


def seed_one_missing(seeds: Sequence[int]) -> str:
    """The reason when a seed-1-only number is compared with a mean because we have no seed 1."""
    return f"no seed-1 run: compared with the mean of seeds {', '.join(map(str, seeds))} (published: seed 1 only)"


def combine(verdicts: Sequence[Verdict]) -> Verdict:
    """The verdict of an average: the worst of its parts, with every reason once."""
    likes = {v.like for v in verdicts}
    like = NO if NO in likes else UNCERTAIN if UNCERTAIN in likes else YES
    reasons = tuple(dict.fromkeys(r for v in verdicts for r in v.reasons))
    return Verdict(like, reasons)
