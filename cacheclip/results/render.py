"""Reports -> text: the Markdown tables (mean ± std over seeds, beside the published numbers
with a mark where that is not like for like, 95% confidence intervals, missing runs, departures
from the protocol) and the CSV rows."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence

from cacheclip.results.protocol import NO, UNCERTAIN, YES, Verdict
from cacheclip.results.published import (
    PublishedShift,
    backbone_of,
    published_shift_entries,
    published_shift_note,
    published_shift_setting,
)
from cacheclip.results.report import (
    CSV_COLUMNS,
    MISSING,
    Cell,
    Comparison,
    Report,
    ShiftRow,
    average_comparison,
    average_row,
    mean_over,
    target_order,
)

SYMBOLS = {NO: "≠", UNCERTAIN: "?"}  # the mark beside a published number that is not like for like


class Marks:
    """Footnote marks of one table: a symbol (≠ not like for like, ? uncertain) and a letter per
    distinct verdict, in order of first use; ``lines`` lists them with their reasons."""

    def __init__(self) -> None:
        self.letters: dict[tuple[str, tuple[str, ...]], str] = {}

    def mark(self, verdict: Verdict) -> str:
        if verdict.like == YES:
            return ""
        key = (verdict.like, verdict.reasons)
        letter = self.letters.setdefault(key, _letter(len(self.letters)))
        return f" {SYMBOLS[verdict.like]}{letter}"

    def lines(self) -> list[str]:
        if not self.letters:
            return []
        head = "Beside a published number: ≠ not like for like, ? uncertain (no mark: like for like). Why:"
        items = [f"- {SYMBOLS[like]}{letter}: {'; '.join(reasons)}" for (like, reasons), letter in self.letters.items()]
        return ["", head, "", *items]


def _letter(index: int) -> str:
    """a, b, ..., z, aa, ab, ..."""
    text = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        text = chr(ord("a") + rest) + text
    return text


# ----------------------------------------------------------------------------- rendering


def _with_paper(text: str, ours: float, paper: float | None) -> str:
    return text if paper is None else f"{text} (paper {paper:.2f}, {ours - paper:+.2f})"


def mean_text(cell: Cell) -> str:
    return f"{cell.mean:.2f}" if cell.n == 1 else f"{cell.mean:.2f} ± {cell.std:.2f}"


def paired_text(text: str, ours: float, paper: float | None, comparison: Comparison | None, marks: Marks) -> str:
    """Our text with the published number beside it: "(paper P, ours - P)", or where the paper ran
    seed 1 only "(seed 1 V; paper P, V - P)"; then the mark when that is not like for like."""
    if comparison is None:
        return _with_paper(text, ours, paper)
    seed = f"{comparison.compared_with} {comparison.value:.2f}; " if comparison.compared_with == "seed 1" else ""
    text += f" ({seed}paper {comparison.published:.2f}, {comparison.diff:+.2f})"
    return text + marks.mark(comparison.verdict)


def _cell_text(report: Report, d: str, s: int, marks: Marks) -> str:
    cell = report.cells.get((d, s))
    if cell is None:
        return MISSING
    paper, comparison = report.published.get((d, s)), report.comparisons.get((d, s))
    text = paired_text(mean_text(cell), cell.mean, paper, comparison, marks)
    if cell.n < len(report.expected_seeds):
        text += f" [{cell.n}/{len(report.expected_seeds)} seeds]"
    return text


def _zs_text(report: Report, d: str, marks: Marks) -> str:
    if d not in report.zero_shot:
        return MISSING
    ours = report.zero_shot[d]
    paper, comparison = report.published_zero_shot.get(d), report.zero_shot_comparisons.get(d)
    return paired_text(f"{ours:.2f}", ours, paper, comparison, marks)


def _average_texts(report: Report, row: dict[int, Cell | None], marks: Marks) -> tuple[str, list[str]]:
    covered = report.covered
    zs_keys = [d for d in covered if d in report.zero_shot]
    zs = mean_over(report.zero_shot, zs_keys)
    paper_zs = mean_over(report.published_zero_shot, zs_keys)
    zs_pair = average_comparison(report.zero_shot_comparisons, zs_keys)
    zs_text = MISSING if zs is None else paired_text(f"{zs:.2f}", zs, paper_zs, zs_pair, marks)
    texts = []
    for s in report.shots:
        cell = row[s]
        if cell is None:
            texts.append(MISSING)
            continue
        keys = [(d, s) for d in cell.datasets]
        paper = mean_over(report.published, keys)
        text = paired_text(mean_text(cell), cell.mean, paper, average_comparison(report.comparisons, keys), marks)
        if len(cell.datasets) < len(covered):
            text += f" [{len(cell.datasets)}/{report.n_expected_datasets} datasets]"
        texts.append(text)
    return zs_text, texts


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    rule = ["---"] + ["---:"] * (len(header) - 1)
    return ["| " + " | ".join(r) + " |" for r in [header, rule, *rows]]


def _section(report: Report, level: int = 2) -> list[str]:
    shot_cols = [f"{s}-shot" for s in report.shots]
    row = average_row(report)
    covered = len(report.covered)
    avg_label = f"**Average ({covered}/{report.n_expected_datasets})**"
    lines = [f"{'#' * level} {report.label} — {report.model} / {report.pretrained}", ""]
    lines.append(f"Test top-1 accuracy (%), mean ± std over seeds (n - 1); runs: {report.n_runs}.")
    if report.published or report.published_zero_shot:
        lines.append(
            "In brackets: the published RN50 number and ours minus it (paper averages: over the same datasets as ours)."
        )
    if any(c.compared_with == "seed 1" for c in report.comparisons.values()):
        lines.append("Where the paper ran seed 1 only, ours beside it is our seed-1 run (shown first in the brackets).")
    if report.provenance:
        what = "Published numbers" if report.published else "Published numbers: none shown"
        lines.append(f"{what} ({report.provenance}).")
    if report.published and report.published_protocol:
        lines.append(f"Published protocol: {report.published_protocol}.")
    if report.zero_shot_comparisons and report.published_zero_shot_protocol and report.method != "zero-shot":
        lines.append(f"Published zero-shot protocol: {report.published_zero_shot_protocol}.")
    lines.append("")
    marks = Marks()
    rows = [
        [d, _zs_text(report, d, marks)] + [_cell_text(report, d, s, marks) for s in report.shots]
        for d in report.datasets
    ]
    zs_avg, avg_cells = _average_texts(report, row, marks)
    rows.append([avg_label, zs_avg] + avg_cells)
    lines += markdown_table(["Dataset", "Zero-shot"] + shot_cols, rows)
    lines += marks.lines()
    if covered < report.n_expected_datasets:
        lines += ["", f"Partial: the average covers {covered} of {report.n_expected_datasets} datasets."]
    lines += ["", "95% confidence half-width of the mean (Student t, n - 1 dof):", ""]
    ci_rows = [[d] + [ci_text(report.cells.get((d, s))) for s in report.shots] for d in report.datasets]
    ci_rows.append([avg_label] + [ci_text(row[s]) for s in report.shots])
    lines += markdown_table(["Dataset"] + shot_cols, ci_rows)
    if report.missing:
        seeds = ", ".join(map(str, report.expected_seeds))
        lines += ["", f"Missing runs (expected seeds {seeds}):", ""]
        lines += [
            f"- missing: {d} {s}-shot seeds {', '.join(map(str, absent))}" for (d, s), absent in report.missing.items()
        ]
    if report.protocol_differences:
        lines += ["", "Departures from the paper's protocol:", ""]
        lines += [f"- {text} (runs: {n})" for text, n in report.protocol_differences.items()]
    return lines


def ci_text(cell: Cell | None) -> str:
    if cell is None:
        return MISSING
    return f"{MISSING} (n={cell.n})" if math.isnan(cell.ci95) else f"±{cell.ci95:.2f} (n={cell.n})"


def _warning_lines(warnings: Sequence[str]) -> list[str]:
    unique = list(dict.fromkeys(warnings))
    return ["", "Warnings:", ""] + [f"- {w}" for w in unique] if unique else []


def to_markdown(report: Report) -> str:
    """One report as Markdown: results table, CI table, missing runs, distribution shift, warnings."""
    return "\n".join(_section(report) + shift_markdown([report], level=3) + _warning_lines(report.warnings)) + "\n"


def render_markdown(reports: Sequence[Report], warnings: Sequence[str] = (), more: Sequence[str] = ()) -> str:
    """Several reports in one document, then ``more`` (lines: the base-to-new part), with every
    warning gathered once at the end."""
    lines = ["# cacheclip report", ""]
    lines.append(f"Method groups: {len(reports)}; runs: {sum(r.n_runs for r in reports)}.")
    if len(reports) > 1:
        lines += [""] + _side_by_side(reports)
    lines += shift_markdown(reports)
    for report in reports:
        lines += [""] + _section(report)
    every = list(warnings) + [w for r in reports for w in r.warnings]
    return "\n".join(lines + list(more) + _warning_lines(every)) + "\n"


def _side_by_side(reports: Sequence[Report]) -> list[str]:
    """Every method's average over its datasets per shot count, the published average beside it
    (over the same datasets) where one is verified."""
    shots = sorted({s for r in reports for s in r.shots})
    lines = [
        "## Methods side by side",
        "",
        "Average test top-1 (%) over each method's datasets; in brackets the "
        "published RN50 average over the same datasets and the difference (see each section for its source).",
        "",
    ]
    rows, marks = [], Marks()
    for report in reports:
        texts = dict(zip(report.shots, _average_texts(report, average_row(report), marks)[1], strict=True))
        rows.append([report.label, report.model, f"{len(report.covered)}"] + [texts.get(s, MISSING) for s in shots])
    return lines + markdown_table(["Method", "Model", "Datasets"] + [f"{s}-shot" for s in shots], rows) + marks.lines()


def csv_number(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.4f}"


def to_csv(report: Report, header: bool = True) -> str:
    """One row per (dataset, shots), missing cells included (empty numbers)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(CSV_COLUMNS)
    for d in report.datasets:
        zs = report.zero_shot_comparisons.get(d)
        zs_columns = [csv_number(report.published_zero_shot.get(d)), zs.verdict.like if zs else "", _reasons(zs)]
        for s in report.shots:
            cell = report.cells.get((d, s))
            paper = report.published.get((d, s))
            pair = report.comparisons.get((d, s))
            diff = pair.diff if pair else None if cell is None or paper is None else cell.mean - paper
            writer.writerow(
                [
                    *_cell_columns(report, d, s, cell),
                    csv_number(report.zero_shot.get(d)),
                    csv_number(paper),
                    csv_number(diff),
                    *_comparison_columns(pair),
                    *zs_columns,
                ]
            )
    writer.writerows(shift_csv_rows(report))
    return buffer.getvalue()


def _cell_columns(report: Report, dataset: str, shots: int, cell: Cell | None) -> list:
    """model, pretrained, method, dataset, shots, n, seeds, mean, std, ci95: the columns every row starts with."""
    if cell is None:
        return [report.model, report.pretrained, report.method, dataset, shots, 0, "", "", "", ""]
    seeds = " ".join(map(str, cell.seeds))
    return [
        report.model,
        report.pretrained,
        report.method,
        dataset,
        shots,
        cell.n,
        seeds,
        csv_number(cell.mean),
        csv_number(cell.std),
        csv_number(cell.ci95),
    ]


def _reasons(pair: Comparison | None) -> str:
    return "; ".join(pair.verdict.reasons) if pair else ""


def _comparison_columns(pair: Comparison | None) -> list[str]:
    """published_protocol, compared_with, compared_value, like_for_like, mismatch."""
    if pair is None:
        return ["", "", "", "", ""]
    return [pair.protocol, pair.compared_with, csv_number(pair.value), pair.verdict.like, _reasons(pair)]


# ----------------------------------------------------------------------------- distribution shift

SHIFT_MEAN = "imagenet-shift"  # the CSV's dataset name for the mean over the shift sets
_SHIFT_HEADERS = {
    "imagenet": "ImageNet",
    "imagenet-v2": "-V2",
    "imagenet-sketch": "-Sketch",
    "imagenet-a": "-A",
    "imagenet-r": "-R",
}

ShiftGroup = tuple[str, str, str, int]  # (model, pretrained, source, shots)


def _shift_groups(reports: Sequence[Report]) -> dict[ShiftGroup, list[tuple[Report, ShiftRow]]]:
    """(model, pretrained, source, shots) -> the (report, row) of every method with targets there."""
    groups: dict[ShiftGroup, list[tuple[Report, ShiftRow]]] = {}
    for report in reports:
        for (source, shots), row in report.shift.items():
            groups.setdefault((report.model, report.pretrained, source, shots), []).append((report, row))
    return groups


def _shift_text(cell: Cell | None, paper: float | None, n_expected: int) -> str:
    if cell is None:
        return MISSING if paper is None else f"{MISSING} (paper {paper:.2f})"
    text = _with_paper(mean_text(cell), cell.mean, paper)
    return text + (f" [{cell.n}/{n_expected} seeds]" if cell.n < n_expected else "")


NamedRow = tuple[str, ShiftRow, Report, str]  # (label, row, report, method the row shows)


def _named_rows(pairs: list[tuple[Report, ShiftRow]]) -> list[NamedRow]:
    """Zero-shot first (the zero-shot method's runs, else the zero-shot classifier recorded with
    the first method's runs: the same classifier on the same sets), then each method."""
    named = [(r.label, row, r, r.method) for r, row in pairs if r.method == "zero-shot"]
    first, row = pairs[0]
    if not named and row.zero_shot:
        paper = row.zero_shot_entry
        zs = ShiftRow(row.source, row.shots, row.targets, row.zero_shot, row.zero_shot_mean, {}, None, row.templates)
        zs.published, zs.published_entry = (dict(paper.top1), paper) if paper else ({}, None)
        named.append((f"Zero-shot CLIP (recorded with the {first.label} runs)", zs, first, "zero-shot"))
    return named + [(r.label, row, r, r.method) for r, row in pairs if r.method != "zero-shot"]


def _paper_only(key: ShiftGroup, named: list[NamedRow]) -> list[PublishedShift]:
    """The published rows of this backbone and setting that stand beside none of ours (every
    source of a method that has two, e.g. CoOp's)."""
    model, pretrained, source, shots = key
    if (source, shots) != published_shift_setting():
        return []
    beside = [row.published_entry for _, row, _, _ in named]
    return [e for e in published_shift_entries(backbone_of(model, pretrained)) if e not in beside]


def _shift_table(key: ShiftGroup, pairs: list[tuple[Report, ShiftRow]], level: int) -> list[str]:
    model, pretrained, source, shots = key
    targets = target_order({t for _, row in pairs for t in row.targets})
    columns = [source, *targets]
    headers = [_SHIFT_HEADERS.get(c, c) for c in columns] + [f"Mean ({len(targets)} targets)"]
    named = _named_rows(pairs)
    lines = [f"{'#' * level} Distribution shift — {model} / {pretrained}, fitted on {source} ({shots}-shot)", ""]
    lines.append(
        f"Test top-1 accuracy (%) of the classifier fitted on {source}, tested unchanged on each target "
        "(classes matched by wnid); mean ± std over seeds (n - 1). Mean: over the targets per seed, then over seeds."
    )
    paper_only = _paper_only(key, named)
    if paper_only or any(row.published for _, row, _, _ in named):
        lines.append(
            "In brackets: the published number of this backbone and ours minus it; beside each run the "
            "source that fits its method and templates, the others as rows of their own (sources below)."
        )
    lines.append("")
    rows, ci_rows, notes = [], [], {}
    for label, row, report, method in named:
        n_expected = len(report.expected_seeds)
        texts = [_shift_text(row.cells.get(c), row.published.get(c), n_expected) for c in columns]
        texts.append(_shift_text(row.mean, mean_over(row.published, targets), n_expected))
        rows.append([label, ", ".join(row.templates)] + texts)
        ci_rows.append([label] + [ci_text(row.cells.get(c)) for c in columns] + [ci_text(row.mean)])
        entry = row.published_entry
        notes[label] = entry.provenance() if entry else published_shift_note(method) or ""
    for paper in paper_only:
        texts = [_shift_text(None, paper.top1.get(c), 0) for c in columns]
        texts.append(_shift_text(None, mean_over(paper.top1, targets), 0))
        label = f"{paper.name} (published only, {paper.kind})"
        rows.append([label, MISSING] + texts)
        notes[label] = paper.provenance()
    lines += markdown_table(["Method", "Templates"] + headers, rows)
    lines += ["", "95% confidence half-width of the mean (Student t, n - 1 dof):", ""]
    lines += markdown_table(["Method"] + headers, ci_rows)
    notes = {label: text for label, text in notes.items() if text}
    if notes:
        lines += ["", "Published numbers (source (kind); protocol), or why none is shown:", ""]
        lines += [f"- {label}: {text}" for label, text in notes.items()]
    return lines


def shift_markdown(reports: Sequence[Report], level: int = 2) -> list[str]:
    """The distribution-shift tables (one per model, weights, source and shots), or nothing."""
    lines: list[str] = []
    for key, pairs in sorted(_shift_groups(reports).items()):
        lines += [""] + _shift_table(key, pairs, level)
    return lines


def shift_csv_rows(report: Report) -> list[list]:
    """CSV rows (``CSV_COLUMNS``) for each target and their mean (dataset ``imagenet-shift``);
    the source's own row is the main table's. ``published_protocol``: the published row's source
    (kind) and protocol."""
    out = []
    for row in report.shift.values():
        cells = [(t, row.cells.get(t), row.zero_shot.get(t), row.published.get(t)) for t in row.targets]
        cells.append((SHIFT_MEAN, row.mean, row.zero_shot_mean, mean_over(row.published, row.targets)))
        for name, cell, zs, paper in cells:
            diff = None if cell is None or paper is None else cell.mean - paper
            out.append(
                [
                    *_cell_columns(report, name, row.shots, cell),
                    csv_number(zs and zs.mean),
                    csv_number(paper),
                    csv_number(diff),
                    row.published_entry.provenance() if paper is not None and row.published_entry else "",
                    *[""] * (len(CSV_COLUMNS) - 14),  # no like-for-like judgement of shift numbers yet
                ]
            )
    return out
