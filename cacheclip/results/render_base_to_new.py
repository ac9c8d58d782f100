"""Base-to-new reports -> text: a side-by-side table of every method's averages (the published
ones of the same backbone beside them, and those of other methods below), one base / new / H
table per method with its 95% confidence table, and the CSV rows (``B2N_CSV_COLUMNS``)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from cacheclip.results.base_to_new import AVERAGE, B2NCell, B2NReport
from cacheclip.results.published import (
    MEAN_OF_H,
    PublishedB2N,
    h_convention_text,
    published_b2n_averages,
    published_b2n_settings,
)
from cacheclip.results.render import Marks, ci_text, csv_number, markdown_table, mean_text, paired_text
from cacheclip.results.report import METHOD_LABELS, MISSING, Cell, Comparison

B2N_CSV_COLUMNS = (
    "model",
    "pretrained",
    "method",
    "run_protocol",
    "dataset",
    "shots",
    "part",
    "n_seeds",
    "seeds",
    "mean",
    "std",
    "ci95",
    "zero_shot",
    "published",
    "diff",
    "published_h_convention",
    "published_source",
    "published_kind",
    "like_for_like",
    "mismatch",
)
CSV_PARTS = ("base", "new", "h")  # per dataset; the average adds MEAN_OF_H
PART_WORDS = {"base": "base", "new": "new", "h": "H of the means", MEAN_OF_H: "mean of per-dataset H"}
INTRO = (
    "CoCoOp's protocol: each method trains on the base half of each dataset's classes (the first "
    "ceil(n/2) of its sorted labels) and is scored on the base test split among the base classes "
    "and on the new test split among the new classes, never trained on. Test top-1 (%), mean ± std "
    "over seeds (n - 1); H = 2·B·N / (B + N) of the two means. The average: the mean base, the mean "
    "new and H of those means (as CoCoOp, MaPLe, KgCoOp and ProLIP print it); its second row, the "
    "mean of per-dataset H (as GDA's repository prints it). A published average stands beside ours "
    "of its own convention, only for runs of its backbone (OpenAI weights), shots and all 11 datasets."
)


def label(report: B2NReport) -> str:
    """ "GDA [base-to-new, official, 16-shot]": the method and what is not the default."""
    parts = ["base-to-new", *report.run_protocol.parts(), f"{report.shots}-shot"]
    return f"{METHOD_LABELS.get(report.method, report.method)} [{', '.join(parts)}]"


def base_to_new_markdown(reports: Sequence[B2NReport], level: int = 2) -> list[str]:
    """The base-to-new part of the report (nothing without base-to-new runs)."""
    if not reports:
        return []
    runs = sum(r.n_runs for r in reports)
    lines = ["", f"{'#' * level} Base-to-new generalization", "", f"Method groups: {len(reports)}; runs: {runs}.", ""]
    lines += [INTRO, ""]
    lines += _side_by_side(reports, level + 1)
    for report in reports:
        lines += [""] + _section(report, level + 1)
    return lines


# ----------------------------------------------------------------------------- per method


def _ours(cell: Cell | None, comparison: Comparison | None, n_expected: int, marks: Marks) -> str:
    if cell is None:
        return MISSING
    text = paired_text(mean_text(cell), cell.mean, None, comparison, marks)
    return text + (f" [{cell.n}/{n_expected} seeds]" if cell.n < n_expected else "")


def _value(value: float | None, comparison: Comparison | None, marks: Marks) -> str:
    return MISSING if value is None else paired_text(f"{value:.2f}", value, None, comparison, marks)


def _zero_shot_texts(report: B2NReport, where: str, marks: Marks) -> list[str]:
    """The zero-shot classifier's base, new, H for one dataset or the average, published beside."""
    zs = report.zero_shot.get(where)
    return [
        _value(zs and zs.value(p), report.zero_shot_comparisons.get((where, p)), marks) for p in ("base", "new", "h")
    ]


def _our_texts(report: B2NReport, where: str, marks: Marks) -> list[str]:
    """Our base and new (mean ± std) and H of their means for one dataset or the average."""
    ours, n, pair = report.cells.get(where), len(report.expected_seeds), report.comparisons.get
    return [
        _ours(ours and ours.base, pair((where, "base")), n, marks),
        _ours(ours and ours.new, pair((where, "new")), n, marks),
        _value(ours and ours.h, pair((where, "h")), marks),
    ]


def _mean_of_h_row(report: B2NReport, marks: Marks) -> list[str]:
    zs, ours = report.zero_shot.get(AVERAGE), report.cells.get(AVERAGE)
    key = (AVERAGE, MEAN_OF_H)
    zs_text = _value(zs and zs.mean_of_h, report.zero_shot_comparisons.get(key), marks)
    ours_text = _value(ours and ours.mean_of_h, report.comparisons.get(key), marks)
    return ["**Average, mean of per-dataset H**", "", "", zs_text, "", "", ours_text]


def _section(report: B2NReport, level: int) -> list[str]:
    lines = [f"{'#' * level} {label(report)} — {report.model} / {report.pretrained}", ""]
    rules = "; ".join(f"{rule} (runs: {n})" for rule, n in report.rules.items())
    lines += [f"Runs: {report.n_runs}. New classes are scored by: {rules}.", ""]
    lines += _published_lines(report)
    marks = Marks()
    rows = [
        [where, *_zero_shot_texts(report, where, marks), *_our_texts(report, where, marks)] for where in report.datasets
    ]
    covered = f"**Average ({len(report.covered)}/{report.n_expected_datasets})**"
    average = [covered, *_zero_shot_texts(report, AVERAGE, marks), *_our_texts(report, AVERAGE, marks)]
    rows += [average, _mean_of_h_row(report, marks)]
    header = ["Dataset", "Zero-shot base", "Zero-shot new", "Zero-shot H", "Base", "New", "H"]
    lines += markdown_table(header, rows) + marks.lines()
    lines += ["", "95% confidence half-width of the mean (Student t, n - 1 dof); H: of the per-seed H:", ""]
    ci_rows = [[d, *_ci_texts(report.cells.get(d))] for d in report.datasets]
    ci_rows.append([covered, *_ci_texts(report.cells.get(AVERAGE))])
    lines += markdown_table(["Dataset", "Base", "New", "H"], ci_rows)
    if report.missing:
        seeds = ", ".join(map(str, report.expected_seeds))
        lines += ["", f"Missing runs (expected seeds {seeds}):", ""]
        lines += [f"- missing: {d} seeds {', '.join(map(str, absent))}" for d, absent in report.missing.items()]
    if report.protocol_differences:
        lines += ["", "Departures from the paper's protocol:", ""]
        lines += [f"- {text} (runs: {n})" for text, n in report.protocol_differences.items()]
    return lines


def _ci_texts(cell: B2NCell | None) -> list[str]:
    if cell is None:
        return [MISSING] * 3
    return [ci_text(cell.base), ci_text(cell.new), ci_text(cell.h_seeds) if cell.h_seeds else MISSING]


def _published_lines(report: B2NReport) -> list[str]:
    """Where the published numbers beside this table come from, or why there are none."""
    if (report.backbone, report.shots) not in published_b2n_settings():
        stored = ", ".join(f"{b} at {s} shots" for b, s in published_b2n_settings())
        return [
            f"No published base-to-new number stands beside these runs: those stored are {stored} "
            "(OpenAI weights), never set beside another backbone, weights or shot count.",
            "",
        ]
    averages = report.published_averages if report.complete else []
    lines = []
    if report.published_averages and not report.complete:
        lines = [f"Published {report.backbone} 11-dataset averages are not set beside a partial average.", ""]
    zero_shot = [p for p in published_b2n_averages(report.backbone, report.shots) if p.method == "zero-shot"]
    if report.method != "zero-shot" and report.zero_shot_comparisons:
        averages = averages + zero_shot[:1]
    per_dataset = list(report.published.values())[:1]  # one source for every dataset
    if not averages and not per_dataset:
        return lines
    lines += [f"In brackets: the published {report.backbone} number and ours minus it. Published:", ""]
    lines += [f"- {_source_line(p)}" for p in averages] + [f"- {_source_line(p, True)}" for p in per_dataset]
    return lines + [""]


def _source_line(paper: PublishedB2N, per_dataset: bool = False) -> str:
    what = "per dataset (H computed here from its base and new)" if per_dataset else "11-dataset average"
    convention = "" if per_dataset else f"; H: {h_convention_text(paper.h_convention)}"
    note = f"; {paper.note}" if paper.note else ""
    return f"{paper.label}, {what}: {paper.source} ({paper.kind}){convention}; protocol: {paper.protocol}{note}"


# ----------------------------------------------------------------------------- side by side


def _side_by_side(reports: Sequence[B2NReport], level: int) -> list[str]:
    """Every method's average; then, per backbone and shots, the published averages not beside ours."""
    lines = [f"{'#' * level} Averages side by side", ""]
    marks, rows = Marks(), []
    for report in reports:
        average = report.cells.get(AVERAGE)
        datasets = f"{len(report.covered)}/{report.n_expected_datasets}"
        h_of_h = _value(average and average.mean_of_h, report.comparisons.get((AVERAGE, MEAN_OF_H)), marks)
        rows.append([label(report), report.model, datasets, *_our_texts(report, AVERAGE, marks), h_of_h])
    others = _published_only(reports)
    for backbone, shots, paper in others:
        texts = [f"{paper.base:.2f}", f"{paper.new:.2f}", MISSING, MISSING]
        texts[3 if paper.h_convention == MEAN_OF_H else 2] = f"{paper.h:.2f}"
        rows.append([f"{paper.label} (published, {paper.kind}, {shots}-shot)", backbone, "11", *texts])
    header = ["Method", "Model", "Datasets", "Base", "New", "H (of the means)", "Mean of per-dataset H"]
    lines += markdown_table(header, rows) + marks.lines()
    if others:
        lines += ["", "Published averages (OpenAI weights):", ""]
        lines += [f"- {_source_line(paper)}" for _, _, paper in others]
    return lines


def _published_only(reports: Sequence[B2NReport]) -> list[tuple[str, int, PublishedB2N]]:
    """(backbone, shots, figure): the published averages of the reports' backbones and shots that
    no complete report of ours stands beside (other methods', e.g. CoOp's from both sources)."""
    settings = list(dict.fromkeys((r.backbone, r.shots) for r in reports if r.backbone))
    beside = {(r.backbone, r.shots, r.method) for r in reports if r.complete}
    return [(b, s, p) for b, s in settings for p in published_b2n_averages(b, s) if (b, s, p.method) not in beside]


# ----------------------------------------------------------------------------- CSV


def base_to_new_csv(reports: Sequence[B2NReport]) -> str:
    """One row per (method, dataset or ``average``, part); header first."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(B2N_CSV_COLUMNS)
    for report in reports:
        for where in [*report.datasets, AVERAGE]:
            parts = [*CSV_PARTS, MEAN_OF_H] if where == AVERAGE else CSV_PARTS
            writer.writerows(_csv_row(report, where, part) for part in parts)
    return buffer.getvalue()


def _csv_row(report: B2NReport, where: str, part: str) -> list:
    """mean: the table's number (H: of the means); std and ci95: over seeds (H: of the per-seed H)."""
    ours, zs = report.cells.get(where), report.zero_shot.get(where)
    spread = {"base": ours.base, "new": ours.new, "h": ours.h_seeds}.get(part) if ours else None
    seeds = spread or (ours.base if ours else None)
    pair, paper = report.comparisons.get((where, part)), report.papers.get((where, part))
    h_average = where == AVERAGE and part in ("h", MEAN_OF_H)
    return [
        report.model,
        report.pretrained,
        report.method,
        " ".join(report.run_protocol.parts()) or "default",
        where,
        report.shots,
        part,
        seeds.n if seeds else 0,
        " ".join(map(str, seeds.seeds)) if seeds else "",
        csv_number(ours.value(part) if ours else None),
        csv_number(spread.std if spread else None),
        csv_number(spread.ci95 if spread else None),
        csv_number(zs.value(part) if zs else None),
        csv_number(pair.published if pair else None),
        csv_number(pair.diff if pair else None),
        paper.h_convention if paper and h_average else "",
        paper.source if paper else "",
        paper.kind if paper else "",
        pair.verdict.like if pair else "",
        "; ".join(pair.verdict.reasons) if pair else "",
    ]
