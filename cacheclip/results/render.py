"""Reports -> text: the Markdown tables (mean ± std over seeds, beside the published numbers,
95% confidence intervals, missing runs, departures from the protocol) and the CSV rows."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence

from cacheclip.results.report import CSV_COLUMNS, MISSING, Cell, Report, average_row, mean_over

# ----------------------------------------------------------------------------- rendering


def _with_paper(text: str, ours: float, paper: float | None) -> str:
    return text if paper is None else f"{text} (paper {paper:.2f}, {ours - paper:+.2f})"


def _mean_text(cell: Cell) -> str:
    return f"{cell.mean:.2f}" if cell.n == 1 else f"{cell.mean:.2f} ± {cell.std:.2f}"


def _cell_text(report: Report, d: str, s: int) -> str:
    cell = report.cells.get((d, s))
    if cell is None:
        return MISSING
    text = _with_paper(_mean_text(cell), cell.mean, report.published.get((d, s)))
    if cell.n < len(report.expected_seeds):
        text += f" [{cell.n}/{len(report.expected_seeds)} seeds]"
    return text


def _zs_text(report: Report, d: str) -> str:
    if d not in report.zero_shot:
        return MISSING
    ours = report.zero_shot[d]
    return _with_paper(f"{ours:.2f}", ours, report.published_zero_shot.get(d))


def _average_texts(report: Report, row: dict[int, Cell | None]) -> tuple[str, list[str]]:
    covered = report.covered
    zs_keys = [d for d in covered if d in report.zero_shot]
    zs = mean_over(report.zero_shot, zs_keys)
    paper_zs = mean_over(report.published_zero_shot, zs_keys)
    zs_text = MISSING if zs is None else _with_paper(f"{zs:.2f}", zs, paper_zs)
    texts = []
    for s in report.shots:
        cell = row[s]
        if cell is None:
            texts.append(MISSING)
            continue
        paper = mean_over(report.published, [(d, s) for d in cell.datasets])
        text = _with_paper(_mean_text(cell), cell.mean, paper)
        if len(cell.datasets) < len(covered):
            text += f" [{len(cell.datasets)}/{report.n_expected_datasets} datasets]"
        texts.append(text)
    return zs_text, texts


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
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
    if report.provenance:
        what = "Published numbers" if report.published else "Published numbers: none shown"
        lines.append(f"{what} ({report.provenance}).")
    lines.append("")
    rows = [[d, _zs_text(report, d)] + [_cell_text(report, d, s) for s in report.shots] for d in report.datasets]
    zs_avg, avg_cells = _average_texts(report, row)
    rows.append([avg_label, zs_avg] + avg_cells)
    lines += _table(["Dataset", "Zero-shot"] + shot_cols, rows)
    if covered < report.n_expected_datasets:
        lines += ["", f"Partial: the average covers {covered} of {report.n_expected_datasets} datasets."]
    lines += ["", "95% confidence half-width of the mean (Student t, n - 1 dof):", ""]
    ci_rows = [[d] + [_ci_text(report.cells.get((d, s))) for s in report.shots] for d in report.datasets]
    ci_rows.append([avg_label] + [_ci_text(row[s]) for s in report.shots])
    lines += _table(["Dataset"] + shot_cols, ci_rows)
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


def _ci_text(cell: Cell | None) -> str:
    if cell is None:
        return MISSING
    return f"{MISSING} (n={cell.n})" if math.isnan(cell.ci95) else f"±{cell.ci95:.2f} (n={cell.n})"


def _warning_lines(warnings: Sequence[str]) -> list[str]:
    unique = list(dict.fromkeys(warnings))
    return ["", "Warnings:", ""] + [f"- {w}" for w in unique] if unique else []


def to_markdown(report: Report) -> str:
    """One report as Markdown: results table, CI table, missing runs, warnings."""
    return "\n".join(_section(report) + _warning_lines(report.warnings)) + "\n"


def render_markdown(reports: Sequence[Report], warnings: Sequence[str] = ()) -> str:
    """Several reports in one document, with their warnings gathered once at the end."""
    lines = ["# cacheclip report", ""]
    lines.append(f"Method groups: {len(reports)}; runs: {sum(r.n_runs for r in reports)}.")
    if len(reports) > 1:
        lines += [""] + _side_by_side(reports)
    for report in reports:
        lines += [""] + _section(report)
    every = list(warnings) + [w for r in reports for w in r.warnings]
    return "\n".join(lines + _warning_lines(every)) + "\n"


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
    rows = []
    for report in reports:
        texts = dict(zip(report.shots, _average_texts(report, average_row(report))[1], strict=True))
        rows.append([report.label, report.model, f"{len(report.covered)}"] + [texts.get(s, MISSING) for s in shots])
    return lines + _table(["Method", "Model", "Datasets"] + [f"{s}-shot" for s in shots], rows)


def _num(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.4f}"


def to_csv(report: Report, header: bool = True) -> str:
    """One row per (dataset, shots), missing cells included (empty numbers)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(CSV_COLUMNS)
    for d in report.datasets:
        for s in report.shots:
            cell = report.cells.get((d, s))
            paper = report.published.get((d, s))
            diff = None if cell is None or paper is None else cell.mean - paper
            writer.writerow(
                [
                    report.model,
                    report.pretrained,
                    report.method,
                    d,
                    s,
                    0 if cell is None else cell.n,
                    "" if cell is None else " ".join(map(str, cell.seeds)),
                    _num(cell and cell.mean),
                    _num(cell and cell.std),
                    _num(cell and cell.ci95),
                    _num(report.zero_shot.get(d)),
                    _num(paper),
                    _num(diff),
                ]
            )
    return buffer.getvalue()
