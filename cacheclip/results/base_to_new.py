"""Base-to-new results (``fit --classes base-to-new``) -> one base / new / H table per method.

CoCoOp's protocol: a method trains on the base half of each dataset's classes and is scored on
the base test split among the base classes and on the new test split among the new classes (never
trained on). Per dataset: base and new, each mean ± std and 95% CI over seeds (``report.summarize``),
and H = 2BN/(B+N) of the two means (the papers' per-dataset H); H's CI is that of the per-seed H.
The average over datasets: the mean base, the mean new and H of those two means (CoCoOp, MaPLe,
KgCoOp, ProLIP), and also the mean of per-dataset H (GDA's repository's convention): a published
average is set beside ours of its own convention. Published numbers
(``data/published_base_to_new.json``) stand only beside runs of their backbone and shots, each
judged by ``protocol.compare``. ``render_base_to_new`` turns these reports into text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from cacheclip.results.loading import is_base_to_new, split_top1
from cacheclip.results.protocol import CellRuns, RunProtocol, compare, run_protocol
from cacheclip.results.published import (
    MEAN_OF_H,
    PAPER_DATASETS,
    PublishedB2N,
    backbone_of,
    harmonic_mean,
    published_b2n_averages,
    published_b2n_datasets,
)
from cacheclip.results.report import (
    Cell,
    Comparison,
    Runs,
    average_cell,
    dataset_order,
    expected_dataset_count,
    group_runs,
    method_rank,
    protocol_differences,
    summarize,
)

PARTS = ("base", "new", "h")  # the columns of a base-to-new table
AVERAGE = "average"  # the average row's key among the datasets (and its CSV name)


@dataclass(frozen=True)
class B2NCell:
    """Base and new top-1 (%) over seeds and H of their means. ``h_seeds``: the per-seed H over
    seeds, whose ``ci95`` is H's (None for an average). ``mean_of_h``: an average's mean of
    per-dataset H (for a dataset: its H)."""

    base: Cell
    new: Cell
    h: float
    h_seeds: Cell | None = None
    mean_of_h: float = math.nan

    def value(self, part: str) -> float:
        return {"base": self.base.mean, "new": self.new.mean, "h": self.h, MEAN_OF_H: self.mean_of_h}[part]


@dataclass
class B2NReport:
    """The base-to-new runs of one (model, pretrained, method, run protocol, shots).

    ``cells`` and ``zero_shot`` (the zero-shot classifier recorded with the runs) by dataset, their
    averages under ``AVERAGE`` when any dataset is in. ``published`` holds the per-dataset published
    numbers and ``published_averages`` this method's 11-dataset ones, both of the runs' backbone
    only; ``comparisons[(dataset, part)]`` pairs them with ours (part ``mean_of_h`` for an average
    of that convention), ``zero_shot_comparisons`` the published zero-shot average with ours.
    """

    model: str
    pretrained: str
    method: str
    shots: int
    run_protocol: RunProtocol
    datasets: list[str]
    cells: dict[str, B2NCell]
    zero_shot: dict[str, B2NCell]
    expected_seeds: tuple[int, ...]
    missing: dict[str, tuple[int, ...]]
    n_expected_datasets: int
    n_runs: int
    rules: dict[str, int]  # the runs' new-class rule -> number of runs
    warnings: list[str]
    protocol_differences: dict[str, int] = field(default_factory=dict)  # departure -> number of runs
    backbone: str | None = None  # the published backbone these runs sit beside, if any
    published: dict[str, PublishedB2N] = field(default_factory=dict)
    published_averages: list[PublishedB2N] = field(default_factory=list)
    comparisons: dict[tuple[str, str], Comparison] = field(default_factory=dict)
    papers: dict[tuple[str, str], PublishedB2N] = field(default_factory=dict)  # what each comparison is of
    zero_shot_comparisons: dict[tuple[str, str], Comparison] = field(default_factory=dict)

    @property
    def covered(self) -> list[str]:
        return [d for d in self.datasets if d in self.cells]

    @property
    def complete(self) -> bool:
        """The average covers the paper's 11 datasets, no more, no fewer: only then does an
        11-dataset figure stand beside it."""
        return set(self.covered) == set(PAPER_DATASETS)


def build_base_to_new(
    results: Sequence[dict],
    expected_datasets: Sequence[str] | None = None,
    expected_seeds: Sequence[int] | None = None,
) -> list[B2NReport]:
    """One ``B2NReport`` per (model, pretrained, method, run protocol, shots) of the base-to-new
    results (the others are ``report.build_reports``'), sorted like the few-shot reports."""
    groups, shared = group_runs(results, is_base_to_new, _group_key)
    order = sorted(groups, key=lambda k: (k[0], k[1], method_rank(k[2]), k[3].rank, k[4]))
    return [_build_one(key, groups[key], expected_datasets, expected_seeds, shared) for key in order]


def _group_key(result: dict) -> tuple:
    return (result["model"], result["pretrained"], result["method"], run_protocol(result), result["shots"])


def _build_one(key: tuple, runs: Runs, expected_datasets, expected_seeds, shared: list[str]) -> B2NReport:
    model, pretrained, method, protocol, shots = key
    datasets = dataset_order(list(expected_datasets or []) + [d for d, _, _ in runs])
    seeds = tuple(sorted(set(expected_seeds) if expected_seeds else {seed for _, _, seed in runs}))
    by_dataset = {d: {seed: r for (dd, _, seed), r in sorted(runs.items()) if dd == d} for d in datasets}
    cells = {d: c for d, per_seed in by_dataset.items() if (c := _cell(per_seed, "metrics")) is not None}
    zero_shot = {d: c for d, per_seed in by_dataset.items() if (c := _cell(per_seed, "zero_shot")) is not None}
    n_expected = expected_dataset_count(datasets, bool(expected_datasets))
    for table in (cells, zero_shot):
        average = average_b2n(table, n_expected)
        if average is not None:
            table[AVERAGE] = average
    report = B2NReport(
        model,
        pretrained,
        method,
        shots,
        protocol,
        datasets,
        cells,
        zero_shot,
        seeds,
        {d: absent for d in datasets if (absent := tuple(s for s in seeds if s not in by_dataset[d]))},
        n_expected,
        len(runs),
        _rules(runs.values()),
        list(shared),
        protocol_differences(runs),
        backbone_of(model, pretrained),
    )
    _attach_published(report, by_dataset)
    return report


def _cell(per_seed: dict[int, dict], block: str) -> B2NCell | None:
    """Base, new and H over the seeds that scored both (a seed lacking one is left out)."""
    scores = {}
    for seed, result in per_seed.items():
        base, new = split_top1(result.get(block), "base"), split_top1(result.get(block), "new")
        if base is not None and new is not None:
            scores[seed] = (base, new)
    if not scores:
        return None
    seeds = list(scores)
    base = summarize([b for b, _ in scores.values()], seeds)
    new = summarize([n for _, n in scores.values()], seeds)
    h = harmonic_mean(base.mean, new.mean)
    h_seeds = summarize([harmonic_mean(b, n) for b, n in scores.values()], seeds)
    return B2NCell(base, new, h, h_seeds, mean_of_h=h)


def average_b2n(cells: dict[str, B2NCell], n_expected: int) -> B2NCell | None:
    """Over the datasets in ``cells``: the mean base and the mean new (``average_cell``), H of
    those two means, and the mean of per-dataset H."""
    parts = [(d, c) for d, c in cells.items() if d != AVERAGE]
    base = average_cell([(d, c.base) for d, c in parts], n_expected)
    new = average_cell([(d, c.new) for d, c in parts], n_expected)
    if base is None or new is None:
        return None
    mean_of_h = math.fsum(c.h for _, c in parts) / len(parts)
    return B2NCell(base, new, harmonic_mean(base.mean, new.mean), None, mean_of_h)


def _rules(results) -> dict[str, int]:
    counts: dict[str, int] = {}
    for result in results:
        rule = str((result.get("classes") or {}).get("new_class_rule") or "not recorded")
        counts[rule] = counts.get(rule, 0) + 1
    return counts


# ----------------------------------------------------------------------------- published numbers


def _attach_published(report: B2NReport, by_dataset: dict[str, dict[int, dict]]) -> None:
    """Published numbers of the runs' own backbone and shots only (none for any other backbone)."""
    averages = published_b2n_averages(report.backbone, report.shots)
    report.published = published_b2n_datasets(report.method, report.backbone, report.shots)
    report.published_averages = [p for p in averages if p.method == report.method]
    zero_shot = report.method == "zero-shot"  # its own runs are judged as a zero-shot classifier
    for d, paper in report.published.items():
        if d in report.cells:
            pairs = _pairs(d, report.cells[d], paper, by_dataset[d].values(), zero_shot)
            report.comparisons.update(pairs)
            report.papers.update(dict.fromkeys(pairs, paper))
    if not report.complete:  # an 11-dataset figure beside a partial average would mislead
        return
    every = [r for per_seed in by_dataset.values() for r in per_seed.values()]
    for paper in report.published_averages:
        pairs = _pairs(AVERAGE, report.cells[AVERAGE], paper, every, zero_shot)
        report.comparisons.update(pairs)
        report.papers.update(dict.fromkeys(pairs, paper))
    for paper in [p for p in averages if p.method == "zero-shot"][:1]:  # beside the recorded zero-shot
        report.zero_shot_comparisons.update(_pairs(AVERAGE, report.zero_shot[AVERAGE], paper, every, True))


def _pairs(where: str, ours: B2NCell, paper: PublishedB2N, runs, zero_shot: bool) -> dict[tuple[str, str], Comparison]:
    """Base, new and H of ``paper`` beside ours, keyed (where, part); H beside ours of the same
    convention (an average's mean of per-dataset H is part ``mean_of_h``)."""
    verdict = compare(CellRuns.of(runs), paper.protocol_record(), zero_shot=zero_shot)
    h_part = MEAN_OF_H if paper.h_convention == MEAN_OF_H and where == AVERAGE else "h"
    out = {}
    for part, published in (("base", paper.base), ("new", paper.new), (h_part, paper.h)):
        with_ = "mean of per-dataset H" if part == MEAN_OF_H else "mean over seeds"
        out[(where, part)] = Comparison(published, with_, ours.value(part), verdict, paper.protocol)
    return out
