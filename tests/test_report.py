"""Report library: result JSONs -> Markdown, CSV, PNG; published numbers."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from cacheclip.errors import ConfigError
from cacheclip.results.loading import load_results
from cacheclip.results.published import (
    PAPER_DATASETS,
    PUBLISHED_SHOTS,
    published_available,
    published_curve,
    published_numbers,
)
from cacheclip.results.render import render_markdown, to_csv, to_markdown
from cacheclip.results.report import Cell, average_row, build_reports, summarize, t_quantile_975
from cacheclip.results.write import write_report

RN50 = ("RN50-quickgelu", "openai")
OTHER = ("ViT-B-32", "laion2b_s34b_b79k")
DATASETS = ("eurosat", "dtd")
SHOTS = (1, 4)
SEEDS = (1, 2, 3)
ZS = {"eurosat": 37.0, "dtd": 42.5}


def accuracy(dataset: str, shots: int, seed: int) -> float:
    """Known, uneven test top-1 for each run."""
    base = {"eurosat": 60.0, "dtd": 45.0}[dataset]
    return base + 3.0 * shots + (0.7, -1.1, 2.3)[seed - 1] * (1 + shots / 8)


def make_result(dataset, shots, seed, top1, method="clip-adapter", model=RN50, zs=None, differences=()):
    zs_top1 = ZS.get(dataset, 50.0) if zs is None else zs
    return {
        "schema": "cacheclip.result/1",
        "run_key": f"{method}-{dataset}-{shots}-{seed}-{top1}",
        "method": method,
        "dataset": dataset,
        "shots": shots,
        "seed": seed,
        "model": model[0],
        "pretrained": model[1],
        "config": {},
        "selection": {},
        "store": {},
        "versions": {},
        "fewshot": {},
        "protocol": {"matches_paper": not differences, "differences": list(differences)},
        "zero_shot": {"val": None, "test": {"top1": zs_top1, "mean_per_class": zs_top1, "n": 100}},
        "metrics": {
            "val": {"top1": top1, "mean_per_class": top1, "n": 10},
            "test": {"top1": top1, "mean_per_class": top1 - 0.5, "n": 100},
        },
        "wall_time_s": 1.0,
    }


def write(folder: Path, result: dict, name: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name or f"{result['method']}_{result['dataset']}_{result['shots']}_{result['seed']}.json")
    path.write_text(json.dumps(result))
    return path


def write_grid(folder: Path, model=RN50, method="clip-adapter", skip=()) -> None:
    for d in DATASETS:
        for s in SHOTS:
            for seed in SEEDS:
                if (d, s, seed) not in skip:
                    write(folder / method / d, make_result(d, s, seed, accuracy(d, s, seed), method, model))


def expected_cell(dataset: str, shots: int, seeds=SEEDS) -> tuple[float, float, float]:
    values = [accuracy(dataset, shots, seed) for seed in seeds]
    std = statistics.stdev(values)
    return statistics.fmean(values), std, 4.303 * std / math.sqrt(len(values))


@pytest.fixture()
def grid(tmp_path: Path) -> Path:
    write_grid(tmp_path / "runs")
    return tmp_path / "runs"


def test_t_quantiles_and_single_seed_cell():
    assert t_quantile_975(1) == 12.706 and t_quantile_975(2) == 4.303 and t_quantile_975(30) == 2.042
    assert t_quantile_975(31) == 1.96
    one = summarize([71.5], [4])
    assert (one.n, one.mean, one.std, one.seeds) == (1, 71.5, 0.0, (4,)) and math.isnan(one.ci95)


def test_cells_match_recomputation(grid: Path):
    (report,) = build_reports(load_results([grid]))
    assert report.datasets == ["dtd", "eurosat"]  # CoOp order: dtd before eurosat
    assert report.shots == list(SHOTS) and not report.missing and not report.warnings
    for d in DATASETS:
        assert report.zero_shot[d] == ZS[d]
        for s in SHOTS:
            mean, std, ci = expected_cell(d, s)
            cell = report.cells[(d, s)]
            assert cell.seeds == SEEDS and cell.n == 3
            assert cell.mean == pytest.approx(mean) and cell.std == pytest.approx(std)
            assert cell.ci95 == pytest.approx(ci)


def test_markdown_and_csv_numbers(grid: Path):
    (report,) = build_reports(load_results([grid]))
    markdown, rows = to_markdown(report), list(csv.DictReader(io.StringIO(to_csv(report))))
    assert len(rows) == len(DATASETS) * len(SHOTS)
    for row in rows:
        d, s = row["dataset"], int(row["shots"])
        mean, std, ci = expected_cell(d, s)
        assert f"{mean:.2f} ± {std:.2f}" in markdown and f"±{ci:.2f} (n=3)" in markdown
        assert float(row["mean"]) == pytest.approx(mean, abs=1e-4)
        assert float(row["std"]) == pytest.approx(std, abs=1e-4)
        assert float(row["ci95"]) == pytest.approx(ci, abs=1e-4)
        assert (row["n_seeds"], row["seeds"], row["method"]) == ("3", "1 2 3", "clip-adapter")
        assert float(row["zero_shot"]) == ZS[d]


def test_published_column_for_rn50_only(tmp_path: Path):
    write_grid(tmp_path / "a")
    write_grid(tmp_path / "b", model=OTHER)
    rn50, other = sorted(build_reports(load_results([tmp_path])), key=lambda r: r.model != RN50[0])
    mean, _, _ = expected_cell("eurosat", 4)
    paper = published_curve("eurosat", "clip-adapter")[4]
    assert rn50.published[("eurosat", 4)] == paper == 73.38
    assert f"(paper {paper:.2f}, {mean - paper:+.2f})" in to_markdown(rn50)
    assert "37.00 (paper 37.52, -0.52)" in to_markdown(rn50)  # zero-shot column
    row = next(r for r in csv.DictReader(io.StringIO(to_csv(rn50))) if r["dataset"] == "eurosat" and r["shots"] == "4")
    assert float(row["published"]) == paper and float(row["diff"]) == pytest.approx(mean - paper, abs=1e-4)
    assert other.published == {} and "paper" not in to_markdown(other)
    assert all(r["published"] == "" and r["diff"] == "" for r in csv.DictReader(io.StringIO(to_csv(other))))


def test_partial_results_are_marked(tmp_path: Path):
    write_grid(tmp_path, skip={("eurosat", 4, 3), ("dtd", 4, 1), ("dtd", 4, 2), ("dtd", 4, 3)})
    (report,) = build_reports(
        load_results([tmp_path]), expected_datasets=["eurosat", "dtd", "oxford_pets"], expected_shots=[1, 4, 16]
    )
    assert report.shots == [1, 4, 16] and report.datasets == ["oxford_pets", "dtd", "eurosat"]
    assert report.missing[("eurosat", 4)] == (3,) and report.missing[("dtd", 4)] == SEEDS
    markdown = to_markdown(report)
    mean, std, _ = expected_cell("eurosat", 4, seeds=(1, 2))
    assert f"{mean:.2f} ± {std:.2f}" in markdown and "[2/3 seeds]" in markdown
    assert "- missing: eurosat 4-shot seeds 3" in markdown
    assert "- missing: dtd 4-shot seeds 1, 2, 3" in markdown
    assert "- missing: oxford_pets 1-shot seeds 1, 2, 3" in markdown
    assert "| oxford_pets | — | — | — | — |" in markdown
    assert "**Average (2/3)**" in markdown and "[1/3 datasets]" in markdown


def test_average_row(tmp_path: Path):
    write_grid(tmp_path, skip={("dtd", 4, seed) for seed in SEEDS})
    (report,) = build_reports(load_results([tmp_path]))
    row = average_row(report)
    cells = [report.cells[(d, 1)] for d in DATASETS]
    one = row[1]
    assert one.mean == pytest.approx(statistics.fmean(c.mean for c in cells))
    assert one.std == pytest.approx(math.sqrt(sum(c.std**2 for c in cells)) / 2)
    assert one.datasets == ("dtd", "eurosat") and one.seeds == SEEDS
    assert one.partial  # 2 of the paper's 11 datasets
    assert row[4].datasets == ("eurosat",) and row[4].mean == pytest.approx(report.cells[("eurosat", 4)].mean)
    # The paper average is taken over the same datasets as ours.
    paper = statistics.fmean(published_curve(d, "clip-adapter")[1] for d in DATASETS)
    assert f"(paper {paper:.2f}, {one.mean - paper:+.2f})" in to_markdown(report)
    full = build_reports(load_results([tmp_path]), expected_datasets=["dtd", "eurosat"])[0]
    assert not average_row(full)[1].partial and average_row(full)[4].partial
    assert "**Average (2/2)**" in to_markdown(full)


def test_duplicates_keep_newest_and_warn(grid: Path):
    older = write(grid / "old", make_result("eurosat", 1, 1, 10.0), "a.json")
    newer = write(grid / "new", make_result("eurosat", 1, 1, 99.0), "b.json")
    original = grid / "clip-adapter" / "eurosat" / "clip-adapter_eurosat_1_1.json"
    os.utime(original, (500_000, 500_000))
    os.utime(older, (1_000_000, 1_000_000))
    os.utime(newer, (2_000_000, 2_000_000))
    (report,) = build_reports(load_results([grid]))
    assert report.cells[("eurosat", 1)].n == 3
    values = [accuracy("eurosat", 1, 2), accuracy("eurosat", 1, 3), 99.0]
    assert report.cells[("eurosat", 1)].mean == pytest.approx(statistics.fmean(values))
    duplicates = [w for w in report.warnings if w.startswith("duplicate run")]
    assert len(duplicates) == 2 and any(f"kept {newer}" in w for w in duplicates)
    assert "duplicate run clip-adapter eurosat 1-shot seed 1" in to_markdown(report)


def test_corrupt_and_foreign_json(grid: Path):
    (grid / "broken.json").write_text("{not json")
    (grid / "other.json").write_text(json.dumps({"hello": 1}))
    (grid / "bad_result.json").write_text(json.dumps({**make_result("dtd", 1, 9, 1.0), "metrics": {}}))
    (grid / "future.json").write_text(json.dumps({"schema": "cacheclip.result/2"}))
    results = load_results([grid])
    assert len(results) == 13
    assert len(results.warnings) == 2  # broken + future; other.json is silently ignored
    assert any("broken.json" in w for w in results.warnings)
    (report,) = build_reports(results)
    assert sum(c.n for c in report.cells.values()) == 12 and 9 not in report.expected_seeds
    assert any("bad_result.json" in w and "metrics.test.top1" in w for w in report.warnings)
    assert "broken.json" in to_markdown(report)
    with pytest.raises(ConfigError):
        load_results([grid / "does-not-exist"])


def test_protocol_differences_and_methods_side_by_side(grid: Path, tmp_path: Path):
    write_grid(grid, method="tip-adapter-f")
    write(grid / "lp", make_result("dtd", 1, 1, 50.0, method="linear-probe", differences=["no val split"]))
    reports = build_reports(load_results([grid]))
    assert [r.method for r in reports] == ["linear-probe", "clip-adapter", "tip-adapter-f"]
    assert reports[0].protocol_differences == {"no val split": 1}
    assert "- no val split (runs: 1)" in to_markdown(reports[0])
    assert reports[2].published[("dtd", 1)] == published_curve("dtd", "tip-adapter-f")[1]
    paths = write_report([grid], tmp_path / "out")
    markdown = paths["md"].read_text()
    assert "## CLIP-Adapter — RN50-quickgelu / openai" in markdown and "## Tip-Adapter-F" in markdown
    assert len(list(csv.DictReader(io.StringIO(paths["csv"].read_text())))) == 2 * 4 + 1


def test_write_report_files(grid: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    paths = write_report([grid], out, expected_shots=[1, 2, 4, 8, 16])
    assert set(paths) == {"md", "csv", "png"}
    assert sorted(p.name for p in out.iterdir()) == ["report.csv", "report.md", "report.png"]  # no temp files
    data = paths["png"].read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert "- missing: eurosat 16-shot seeds 1, 2, 3" in paths["md"].read_text()
    assert capsys.readouterr() == ("", "")
    with pytest.raises(ConfigError):
        write_report([tmp_path / "out"], tmp_path / "empty")


def test_published_module():
    numbers = published_numbers()
    assert tuple(numbers) == PAPER_DATASETS
    assert published_available("RN50", "openai") and published_available("RN50-quickgelu", "openai")
    assert not published_available("RN50", "yfcc15m") and not published_available("ViT-B-32", "openai")
    assert published_curve("eurosat", "clip-adapter") == dict(
        zip(PUBLISHED_SHOTS, [61.4, 63.9, 73.38, 77.93, 84.43], strict=True)
    )
    assert published_curve("dtd", "zero-shot") == dict.fromkeys(PUBLISHED_SHOTS, 42.2)
    assert published_curve("imagefolder-x", "clip-adapter") is None and published_curve("dtd", "linear-probe") is None
    # The paper's "mean" row (REFERENCE.md section 6) is the plain mean over the 11 datasets.
    for key, mean_row in {
        "CLIP-A": [62.67, 65.55, 68.61, 71.40, 74.44],
        "Tip-F": [64.60, 66.65, 69.67, 72.45, 75.83],
    }.items():
        assert [round(statistics.fmean(numbers[d][key][i] for d in PAPER_DATASETS), 2) for i in range(5)] == mean_row
    numbers["dtd"]["zs"] = 0.0
    assert published_numbers()["dtd"]["zs"] == 42.2  # callers get a copy


def test_import_is_cheap():
    code = "import sys, cacheclip.results.report; assert 'matplotlib' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cell_constructor_matches_spec():
    cell = Cell(n=2, mean=1.0, std=0.5, ci95=4.5, seeds=(1, 2))
    assert cell.datasets == () and cell.partial is False


def test_published_numbers_come_with_their_source_and_protocol(tmp_path):
    """GDA's verified per-dataset curve is shown beside ours with its source and protocol; a
    method with only a secondary average says so instead of showing a per-dataset number."""
    for seed in SEEDS:
        write(tmp_path / "r", make_result("eurosat", 16, seed, 80.0, method="gda"))
        write(tmp_path / "r", make_result("eurosat", 16, seed, 70.0, method="clap"))
    text = render_markdown(build_reports(load_results([tmp_path / "r"])))
    gda = text[text.index("## GDA") : text.index("## CLAP")] if text.index("## GDA") < text.index("## CLAP") else None
    gda = gda or text[text.index("## GDA") :]
    assert "86.12" in gda and "mrflogs/ICLR24" in gda and "FULL val split" in gda
    clap = text[text.index("## CLAP") :]
    assert "secondary source" in clap and "86.12" not in clap
    assert "## Methods side by side" in text
