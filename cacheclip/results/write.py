"""Write a report's three files (Markdown, CSV, figure) from result JSONs, atomically."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from cacheclip.common import write_atomic
from cacheclip.errors import ConfigError
from cacheclip.results.base_to_new import build_base_to_new
from cacheclip.results.loading import ResultSet, load_results
from cacheclip.results.plots import plot_report
from cacheclip.results.render import render_markdown, to_csv
from cacheclip.results.render_base_to_new import base_to_new_csv, base_to_new_markdown
from cacheclip.results.report import CSV_COLUMNS, build_reports


def write_report(
    result_paths: Sequence[Path],
    out_dir: Path,
    expected_datasets: Sequence[str] | None = None,
    expected_shots: Sequence[int] | None = None,
    expected_seeds: Sequence[int] | None = None,
    keep: Callable[[dict], bool] | None = None,
) -> dict[str, Path]:
    """Write report.md, report.csv and report.png into ``out_dir``, and with base-to-new
    results base_to_new.csv (their tables are in report.md, after the few-shot ones).

    ``keep`` (optional) selects the results to report, e.g. some datasets only.
    Returns the paths written: ``md``, ``csv`` (its header only without few-shot results),
    ``png`` (only with few-shot results), ``base_to_new_csv`` (only with base-to-new results).
    Raises ``ConfigError`` when no result is found.
    """
    results = load_results(result_paths)
    if keep is not None:
        results = ResultSet([r for r in results if keep(r)], results.warnings)
    reports = build_reports(results, expected_datasets, expected_shots, expected_seeds)
    base_to_new = build_base_to_new(results, expected_datasets, expected_seeds)
    if not reports and not base_to_new:
        skipped = f"; {len(results.warnings)} file(s) skipped" if results.warnings else ""
        raise ConfigError(
            f"no cacheclip results found in {', '.join(map(str, result_paths))}{skipped}",
            hint="run `cacheclip fit` first, or point at the folder holding its result JSONs",
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_text = "".join(to_csv(r, header=(i == 0)) for i, r in enumerate(reports)) or ",".join(CSV_COLUMNS) + "\n"
    markdown = render_markdown(reports, [w for r in base_to_new for w in r.warnings], base_to_new_markdown(base_to_new))
    paths = {"md": write_atomic(out_dir / "report.md", markdown)}
    paths["csv"] = write_atomic(out_dir / "report.csv", csv_text)  # header only without few-shot runs
    if reports:
        paths["png"] = plot_report(reports, out_dir / "report.png")
    if base_to_new:
        paths["base_to_new_csv"] = write_atomic(out_dir / "base_to_new.csv", base_to_new_csv(base_to_new))
    return paths
