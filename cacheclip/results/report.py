"""Result JSONs -> per-method reports -> Markdown table, CSV and a figure.

``build_reports`` groups result JSONs (``loading.load_results``) by (model,
pretrained, method, run protocol) and summarises the test top-1 of each (dataset,
shots) cell over seeds; beside each published number it puts the judgement of
``protocol.compare``: like for like or not, and why. ``render`` turns reports into
Markdown and CSV, ``plots`` into the figure, and ``write.write_report`` writes all
three. Base-to-new results are left to ``base_to_new`` (it reuses ``group_runs``,
``summarize`` and ``average_cell``). Nothing here prints.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cacheclip.datasets.catalog import IMAGENET_SHIFT
from cacheclip.results.loading import collapse_skipped, is_base_to_new, result_problem, result_source, test_top1
from cacheclip.results.protocol import (
    NO,
    CellRuns,
    RunProtocol,
    Verdict,
    combine,
    compare,
    run_protocol,
    seed_one_missing,
)
from cacheclip.results.published import (
    PAPER_DATASETS,
    PublishedShift,
    backbone_of,
    pick_shift_entry,
    published_available,
    published_curve,
    published_protocol,
    published_protocol_summary,
    published_provenance,
    published_shift_entries,
    published_shift_note,
    published_shift_setting,
    published_zero_shot,
)

METHOD_ORDER = (
    "zero-shot",
    "linear-probe",
    "clip-adapter",
    "tip-adapter",
    "tip-adapter-f",
    "gda",
    "proker",
    "zs-lp",
    "clap",
    "lp++",
    "taskres",
    "cross-modal",
)
METHOD_LABELS = {
    "zero-shot": "Zero-shot CLIP",
    "linear-probe": "Linear probe",
    "clip-adapter": "CLIP-Adapter",
    "tip-adapter": "Tip-Adapter",
    "tip-adapter-f": "Tip-Adapter-F",
    "gda": "GDA",
    "proker": "ProKeR",
    "zs-lp": "ZS-LP",
    "clap": "CLAP",
    "lp++": "LP++",
    "taskres": "TaskRes",
    "cross-modal": "Cross-modal LP",
}
CSV_COLUMNS = (
    "model",
    "pretrained",
    "method",
    "dataset",
    "shots",
    "n_seeds",
    "seeds",
    "mean",
    "std",
    "ci95",
    "zero_shot",
    "published",
    "diff",
    "published_protocol",
    "compared_with",
    "compared_value",
    "like_for_like",
    "mismatch",
    "published_zero_shot",
    "zero_shot_like_for_like",
    "zero_shot_mismatch",
)
MISSING = "—"

# Two-sided 95% Student t quantiles (0.975) for 1..30 degrees of freedom.
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t_quantile_975(dof: int) -> float:
    """0.975 quantile of Student's t with ``dof`` degrees of freedom (1.96 beyond 30)."""
    if dof < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {dof}")
    return _T975[dof - 1] if dof <= len(_T975) else 1.96


@dataclass(frozen=True)
class Cell:
    """Test top-1 (%) of one (dataset, shots) cell over seeds.

    ``std`` uses n - 1 (0.0 when n == 1); ``ci95`` is the half-width of the
    Student t interval of the mean (nan when n == 1). Average cells (from
    ``average_row``) also name the ``datasets`` they average and whether that
    is fewer than the report expects (``partial``).
    """

    n: int
    mean: float
    std: float
    ci95: float
    seeds: tuple[int, ...]
    datasets: tuple[str, ...] = ()
    partial: bool = False


def summarize(values: Sequence[float], seeds: Sequence[int]) -> Cell:
    """Mean, std (ddof=1) and CI95 half-width of one cell's values."""
    n = len(values)
    mean = math.fsum(values) / n
    if n == 1:
        return Cell(1, mean, 0.0, math.nan, tuple(seeds))
    std = statistics.stdev(values)
    return Cell(n, mean, std, t_quantile_975(n - 1) * std / math.sqrt(n), tuple(seeds))


@dataclass(frozen=True)
class Comparison:
    """A published number beside one of our cells: which of our numbers it is compared with
    (``compared_with``: "seed 1", "mean of 3 seeds", ...; ``value``), whether that is like for
    like (``verdict``), and the published protocol on that dataset in one line."""

    published: float
    compared_with: str
    value: float
    verdict: Verdict
    protocol: str = ""

    @property
    def diff(self) -> float:
        return self.value - self.published


@dataclass
class ShiftRow:
    """One method fitted on ``source`` with ``shots`` and tested unchanged on shift sets.

    ``cells`` holds the top-1 over seeds on the source's test split and on each target;
    ``mean`` the mean over ``targets`` (the source left out) taken per seed, over the seeds
    that have every target, then summarised like any cell. ``zero_shot``/``zero_shot_mean``
    are the same for the zero-shot classifier recorded with these runs.
    """

    source: str
    shots: int
    targets: list[str]
    cells: dict[str, Cell]
    mean: Cell | None
    zero_shot: dict[str, Cell]
    zero_shot_mean: Cell | None
    templates: tuple[str, ...]  # the runs' template sets (store attribute templates_spec)
    published: dict[str, float] = field(default_factory=dict)  # dataset -> published top-1
    published_entry: PublishedShift | None = None  # where ``published`` comes from
    zero_shot_entry: PublishedShift | None = None  # the published row beside ``zero_shot``

    @property
    def columns(self) -> list[str]:
        return [self.source, *self.targets]


@dataclass
class Report:
    """All runs of one (model, pretrained, method): test top-1 per (dataset, shots)."""

    model: str
    pretrained: str
    method: str
    datasets: list[str]
    shots: list[int]
    cells: dict[tuple[str, int], Cell]
    zero_shot: dict[str, float]
    published: dict[tuple[str, int], float]
    warnings: list[str]
    published_zero_shot: dict[str, float] = field(default_factory=dict)
    expected_seeds: tuple[int, ...] = ()
    missing: dict[tuple[str, int], tuple[int, ...]] = field(default_factory=dict)
    n_expected_datasets: int = 0  # denominator of "Average (k/N)"
    protocol_differences: dict[str, int] = field(default_factory=dict)  # text -> number of runs
    n_runs: int = 0
    provenance: str = ""  # where the published numbers come from and their protocol, or what is missing
    shift: dict[tuple[str, int], ShiftRow] = field(default_factory=dict)  # (source, shots) -> shift row
    shift_provenance: str = ""  # the published shift row's source, kind, protocol; or what is known
    run_protocol: RunProtocol = field(default_factory=RunProtocol)  # how every run here was made
    seed_top1: dict[tuple[str, int], dict[int, float]] = field(default_factory=dict)  # cell -> seed -> top-1
    comparisons: dict[tuple[str, int], Comparison] = field(default_factory=dict)  # beside report.published
    zero_shot_comparisons: dict[str, Comparison] = field(default_factory=dict)  # beside published_zero_shot
    published_protocol: str = ""  # the published curve's protocol in one line
    published_zero_shot_protocol: str = ""  # the published zero-shot numbers' protocol in one line

    @property
    def label(self) -> str:
        """The method's name, with the non-default parts of its run protocol: "Tip-Adapter [official]"."""
        parts = self.run_protocol.parts()
        name = METHOD_LABELS.get(self.method, self.method)
        return f"{name} [{', '.join(parts)}]" if parts else name

    @property
    def covered(self) -> list[str]:
        """The datasets with at least one result."""
        return [d for d in self.datasets if any((d, s) in self.cells for s in self.shots)]


# ----------------------------------------------------------------------------- grouping


def dataset_order(names: Sequence[str]) -> list[str]:
    """The paper's 11 datasets in its order, then any others sorted."""
    unique = set(names)
    return [d for d in PAPER_DATASETS if d in unique] + sorted(unique - set(PAPER_DATASETS))


def method_rank(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def build_reports(
    results: Sequence[dict],
    expected_datasets: Sequence[str] | None = None,
    expected_shots: Sequence[int] | None = None,
    expected_seeds: Sequence[int] | None = None,
) -> list[Report]:
    """One ``Report`` per (model, pretrained, method, run protocol), sorted by model, method,
    then protocol (the default first): runs of different protocols are never merged.

    Base-to-new runs are left out (``base_to_new.build_base_to_new`` reports them).
    Without ``expected_*`` the grid is what the group's runs cover (datasets,
    shots, and the union of seeds); cells short of it are ``missing``. Of
    duplicate runs (same model, pretrained, method, run protocol, dataset, shots,
    seed) the newest file is kept, with a warning. Warnings from ``load_results``
    and invalid results are repeated in every report.
    """
    groups, shared = group_runs(results, lambda r: not is_base_to_new(r), _group_key)
    reports = []
    for key in sorted(groups, key=lambda k: (k[0], k[1], method_rank(k[2]), k[3].rank)):
        reports.append(_build_one(key, groups[key], expected_datasets, expected_shots, expected_seeds, shared))
    return reports


def _group_key(result: dict) -> tuple[str, str, str, RunProtocol]:
    return (result["model"], result["pretrained"], result["method"], run_protocol(result))


Runs = dict[tuple[str, int, int], dict]  # (dataset, shots, seed) -> its result


def group_runs(
    results: Sequence[dict], keep: Callable[[dict], bool], key_of: Callable[[dict], tuple]
) -> tuple[dict[tuple, Runs], list[str]]:
    """The valid results that ``keep`` selects, grouped by ``key_of`` and then by (dataset, shots,
    seed); of duplicate runs the newest file is kept, with a warning. Also the warnings every
    report repeats: ``load_results``' and every invalid or diverged result's (``keep`` or not)."""
    shared = list(getattr(results, "warnings", []))
    groups: dict[tuple, dict[tuple[str, int, int], tuple[tuple, dict]]] = {}
    for index, result in enumerate(results):
        problem = result_problem(result)
        if problem:
            shared.append(f"skipped {result_source(result)}: {problem}")
            continue
        if result.get("diverged"):  # its number is what the run gave: reported, and said
            shared.append(f"{result_source(result)}: {result['diverged']}")
        if not keep(result):
            continue
        group = groups.setdefault(key_of(result), {})
        run = (result["dataset"], result["shots"], result["seed"])
        age = ((result.get("_source") or {}).get("mtime", 0.0), index)
        if run in group:
            shared.append(_duplicate_warning(result, group[run][1], age > group[run][0]))
            if age < group[run][0]:
                continue
        group[run] = (age, result)
    runs = {key: {run: result for run, (_, result) in group.items()} for key, group in groups.items()}
    return runs, collapse_skipped(shared)


def _duplicate_warning(new: dict, old: dict, new_wins: bool) -> str:
    kept, dropped = (new, old) if new_wins else (old, new)
    same = "same run_key" if new.get("run_key") == old.get("run_key") else "different run_key"
    return (
        f"duplicate run {new['method']} {new['dataset']} {new['shots']}-shot seed {new['seed']} "
        f"({same}): kept {result_source(kept)}, ignored {result_source(dropped)}"
    )


def _build_one(key, runs, expected_datasets, expected_shots, expected_seeds, shared) -> Report:
    model, pretrained, method, protocol = key
    if method == "zero-shot":  # no training shots: its shot grid is whatever the runs say
        expected_shots = None
    datasets = dataset_order(list(expected_datasets or []) + [d for d, _, _ in runs])
    shots = sorted(set(expected_shots or []) | {s for _, s, _ in runs})
    seeds = tuple(sorted(set(expected_seeds) if expected_seeds else {seed for _, _, seed in runs}))
    cells, missing, seed_top1 = {}, {}, {}
    for d in datasets:
        for s in shots:
            have = sorted(seed for dd, ss, seed in runs if (dd, ss) == (d, s))
            if have:
                seed_top1[(d, s)] = {seed: test_top1(runs[(d, s, seed)]["metrics"]) for seed in have}
                cells[(d, s)] = summarize(list(seed_top1[(d, s)].values()), have)
            absent = tuple(seed for seed in seeds if seed not in have)
            if absent:
                missing[(d, s)] = absent
    n_expected = expected_dataset_count(datasets, bool(expected_datasets))
    report = Report(
        model,
        pretrained,
        method,
        datasets,
        shots,
        cells,
        _zero_shot(runs),
        {},
        list(shared),
        expected_seeds=seeds,
        missing=missing,
        n_expected_datasets=n_expected,
        protocol_differences=protocol_differences(runs),
        n_runs=len(runs),
        shift=_shift_rows(runs),
        run_protocol=protocol,
        seed_top1=seed_top1,
    )
    if published_available(model, pretrained):
        _attach_published(report, runs)
    _attach_shift_published(report)
    return report


def expected_dataset_count(datasets: Sequence[str], expected: bool) -> int:
    """The N of "Average (k/N)": the datasets asked for; without them the paper's 11 when the
    runs are among them, else the datasets the runs cover."""
    if expected or not set(datasets) <= set(PAPER_DATASETS):
        return len(datasets)
    return len(PAPER_DATASETS)


def _zero_shot(runs: dict) -> dict[str, float]:
    values: dict[str, list[float]] = {}
    for (dataset, _, _), result in runs.items():
        top1 = test_top1(result.get("zero_shot"))
        if top1 is not None:
            values.setdefault(dataset, []).append(top1)
    return {d: math.fsum(v) / len(v) for d, v in values.items()}


def protocol_differences(runs: dict) -> dict[str, int]:
    counts: dict[str, int] = {}
    for result in runs.values():
        protocol = result.get("protocol") or {}
        for text in protocol.get("differences") or []:
            counts[str(text)] = counts.get(str(text), 0) + 1
    return counts


def _attach_published(report: Report, runs: dict) -> None:
    report.provenance = published_provenance(report.method) or ""
    report.published_protocol = published_protocol_summary(report.method) or ""
    report.published_zero_shot_protocol = published_protocol_summary("zero-shot") or ""
    for d in report.datasets:
        zs = published_zero_shot(d)
        if zs is not None:
            report.published_zero_shot[d] = zs
        curve = published_curve(d, report.method) or {}
        for s in report.shots:
            value = zs if report.method == "zero-shot" else curve.get(s)
            if value is not None:
                report.published[(d, s)] = value
    _compare_cells(report, runs)
    _compare_zero_shot(report, runs)


def _attach_shift_published(report: Report) -> None:
    """Beside the shift row of the published setting (ImageNet, 16 shots): the published row of
    the runs' own backbone that fits the method and templates (``pick_shift_entry``), and the same
    for the zero-shot classifier recorded with them; else what is known of the method's numbers."""
    entries = published_shift_entries(backbone_of(report.model, report.pretrained))
    row = report.shift.get(published_shift_setting())
    entry = pick_shift_entry(entries, report.method, row.templates) if row else None
    report.shift_provenance = entry.provenance() if entry else published_shift_note(report.method) or ""
    if row is None:
        return
    if entry is not None:
        row.published, row.published_entry = dict(entry.top1), entry
    row.zero_shot_entry = pick_shift_entry(entries, "zero-shot", row.templates)


# ----------------------------------------------------------------------------- like for like


def _compare_cells(report: Report, runs: dict) -> None:
    """Each published few-shot number against our cell of the same protocol: our seed-1 run
    where the paper ran seed 1 only, else our mean; the verdict says whether that is like for like."""
    for (d, s), published in report.published.items():
        paper = published_protocol(d, report.method)
        values = report.seed_top1.get((d, s))
        if paper is None or not values:
            continue
        ours = CellRuns.of(runs[(d, s, seed)] for seed in values)
        verdict = compare(ours, paper, zero_shot=report.method == "zero-shot")
        if paper.seeds == (1,) and 1 in values:
            with_, value = "seed 1", values[1]
        else:
            with_, value = _mean_label(values), report.cells[(d, s)].mean
            if paper.seeds == (1,):
                verdict = Verdict(NO, (seed_one_missing(list(values)), *verdict.reasons))
        report.comparisons[(d, s)] = Comparison(published, with_, value, verdict, paper.summary())


def _compare_zero_shot(report: Report, runs: dict) -> None:
    """The published zero-shot numbers against the zero-shot classifier recorded with our runs."""
    for d, published in report.published_zero_shot.items():
        paper = published_protocol(d, "zero-shot")
        recorded = [r for (dd, _, _), r in runs.items() if dd == d and test_top1(r.get("zero_shot")) is not None]
        if paper is None or not recorded or d not in report.zero_shot:
            continue
        verdict = compare(CellRuns.of(recorded), paper, zero_shot=True)
        report.zero_shot_comparisons[d] = Comparison(
            published, "zero-shot classifier", report.zero_shot[d], verdict, paper.summary()
        )


def _mean_label(values: dict[int, float]) -> str:
    # one run: not "seed 1", which means "the paper's seed-1 run" to the renderer
    return f"the only run (seed {next(iter(values))})" if len(values) == 1 else f"mean of {len(values)} seeds"


def average_comparison(comparisons: dict, keys: Sequence) -> Comparison | None:
    """The comparison of an average over ``keys``: the means of the published numbers and of the
    values compared with them, the worst verdict; None unless every key has a comparison."""
    parts = [comparisons[k] for k in keys if k in comparisons]
    if not parts or len(parts) != len(keys):
        return None
    withs = {c.compared_with for c in parts}
    return Comparison(
        math.fsum(c.published for c in parts) / len(parts),
        withs.pop() if len(withs) == 1 else "per dataset (see the cells)",
        math.fsum(c.value for c in parts) / len(parts),
        combine([c.verdict for c in parts]),
    )


# ----------------------------------------------------------------------------- distribution shift


def target_top1(block: object, target: str) -> float | None:
    """``block["targets"][target]["top1"]`` (a result's ``metrics`` or ``zero_shot``), or None."""
    try:
        return test_top1({"test": block["targets"][target]})  # type: ignore[index]
    except (KeyError, TypeError):
        return None


def _targets_of(block: object) -> set[str]:
    targets = block.get("targets") if isinstance(block, dict) else None
    return set(targets) if isinstance(targets, dict) else set()


def target_order(names: set[str] | Sequence[str]) -> list[str]:
    """ImageNet's shift sets in CoOp's table order (V2, Sketch, A, R), then any others sorted."""
    unique = set(names)
    return [t for t in IMAGENET_SHIFT if t in unique] + sorted(unique - set(IMAGENET_SHIFT))


def _column_cell(per_seed: dict[int, dict], block: str, column: str, source: str) -> Cell | None:
    values = {}
    for seed, result in sorted(per_seed.items()):
        top1 = test_top1(result.get(block)) if column == source else target_top1(result.get(block), column)
        if top1 is not None:
            values[seed] = top1
    return summarize(list(values.values()), list(values)) if values else None


def _mean_cell(per_seed: dict[int, dict], block: str, targets: list[str]) -> Cell | None:
    """Per seed the mean over every target (seeds lacking one are left out), then over seeds."""
    means = {}
    for seed, result in sorted(per_seed.items()):
        values = [target_top1(result.get(block), t) for t in targets]
        if targets and all(v is not None for v in values):
            means[seed] = math.fsum(values) / len(values)
    return summarize(list(means.values()), list(means)) if means else None


def _shift_rows(runs: dict) -> dict[tuple[str, int], ShiftRow]:
    """The runs that recorded targets, one row per (source dataset, shots)."""
    grouped: dict[tuple[str, int], dict[int, dict]] = {}
    for (dataset, shots, seed), result in runs.items():
        if _targets_of(result.get("metrics")):
            grouped.setdefault((dataset, shots), {})[seed] = result
    rows = {}
    for (source, shots), per_seed in sorted(grouped.items()):
        targets = target_order(set().union(*(_targets_of(r.get("metrics")) for r in per_seed.values())))
        columns = [source, *targets]
        templates = {
            ((r.get("store") or {}).get("attrs") or {}).get("templates_spec", "default") for r in per_seed.values()
        }
        rows[(source, shots)] = ShiftRow(
            source,
            shots,
            targets,
            {c: cell for c in columns if (cell := _column_cell(per_seed, "metrics", c, source)) is not None},
            _mean_cell(per_seed, "metrics", targets),
            {c: cell for c in columns if (cell := _column_cell(per_seed, "zero_shot", c, source)) is not None},
            _mean_cell(per_seed, "zero_shot", targets),
            tuple(sorted(map(str, templates))),
        )
    return rows


# ----------------------------------------------------------------------------- averages


def average_row(report: Report) -> dict[int, Cell | None]:
    """Per shot count, the mean over datasets of the per-dataset means.

    Spread assumes independent datasets: std = sqrt(sum std_i^2) / k (the std
    of a one-seed average), ci95 likewise from the per-dataset half-widths.
    ``n`` is the smallest seed count, ``seeds`` those common to all datasets;
    ``partial`` when fewer than ``report.n_expected_datasets`` datasets are in.
    """
    row: dict[int, Cell | None] = {}
    for s in report.shots:
        parts = [(d, report.cells[(d, s)]) for d in report.datasets if (d, s) in report.cells]
        row[s] = average_cell(parts, report.n_expected_datasets)
    return row


def average_cell(parts: Sequence[tuple[str, Cell]], n_expected: int) -> Cell | None:
    """The mean over datasets of (dataset, cell) pairs, spread as ``average_row`` says; None if empty."""
    if not parts:
        return None
    k = len(parts)
    cells = [c for _, c in parts]
    common = set(cells[0].seeds).intersection(*(c.seeds for c in cells[1:]))
    return Cell(
        n=min(c.n for c in cells),
        mean=math.fsum(c.mean for c in cells) / k,
        std=math.sqrt(math.fsum(c.std**2 for c in cells)) / k,
        ci95=math.sqrt(math.fsum(c.ci95**2 for c in cells)) / k,
        seeds=tuple(sorted(common)),
        datasets=tuple(d for d, _ in parts),
        partial=k < n_expected,
    )


def mean_over(values: dict, keys: Sequence) -> float | None:
    """Mean of ``values[k]`` over ``keys``; None unless every key has a value."""
    picked = [values[k] for k in keys if k in values]
    return math.fsum(picked) / len(picked) if picked and len(picked) == len(keys) else None
