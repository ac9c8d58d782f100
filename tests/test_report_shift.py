"""The report's distribution-shift table: results that carry ``metrics.targets`` and
``zero_shot.targets`` -> mean and CI over seeds per target and their mean, beside published numbers."""

from __future__ import annotations

import copy
import csv
import io
import math
import statistics

import pytest
from test_report import OTHER, RN50, make_result

import cacheclip.results.published as published
from cacheclip.results.published import published_shift_entries, published_shift_note, published_shift_setting
from cacheclip.results.render import render_markdown, to_csv
from cacheclip.results.report import build_reports

TARGETS = ("imagenet-v2", "imagenet-sketch", "imagenet-a", "imagenet-r")
SEEDS = (1, 2, 3)
BASE = {"imagenet": 62.0, "imagenet-v2": 54.0, "imagenet-sketch": 35.0, "imagenet-a": 22.0, "imagenet-r": 57.0}
ZS = {"imagenet": 58.2, "imagenet-v2": 51.3, "imagenet-sketch": 33.3, "imagenet-a": 21.7, "imagenet-r": 56.0}
METHOD_GAIN = {"clip-adapter": 1.0, "tip-adapter-f": 2.5}


def top1(method: str, dataset: str, seed: int) -> float:
    """Known, uneven accuracies per (method, dataset, seed)."""
    return BASE[dataset] + METHOD_GAIN[method] + (0.4, -0.9, 1.7)[seed - 1] * (1 + len(dataset) / 10)


def shift_result(method: str, seed: int, model=RN50, targets=TARGETS) -> dict:
    result = make_result("imagenet", 16, seed, top1(method, "imagenet", seed), method, model, zs=ZS["imagenet"])
    metric = {t: {"top1": top1(method, t, seed), "mean_per_class": 0.0, "n": 100} for t in targets}
    result["metrics"]["targets"] = metric
    result["zero_shot"]["targets"] = {t: {"top1": ZS[t], "mean_per_class": 0.0, "n": 100} for t in targets}
    result["store"] = {"attrs": {"templates_spec": "imagenet7"}}
    return result


def grid(model=RN50, drop=()) -> list[dict]:
    """clip-adapter and tip-adapter-f, 3 seeds; ``drop`` = (method, seed, target) left out."""
    out = []
    for method in METHOD_GAIN:
        for seed in SEEDS:
            targets = [t for t in TARGETS if (method, seed, t) not in drop]
            out.append(shift_result(method, seed, model, targets))
    return out


def expected(values: list[float]) -> tuple[float, float, float]:
    std = statistics.stdev(values)
    return statistics.fmean(values), std, 4.303 * std / math.sqrt(len(values))


@pytest.fixture()
def with_published(monkeypatch):
    """Published data with verified shift numbers for clip-adapter and a paper-only 'coop' row."""
    data = copy.deepcopy(published._load_shift())
    entry = {"variant": "", "backbone": "RN50", "templates": None}
    data["entries"] = [
        entry
        | {
            "method": "clip-adapter",
            "label": "CLIP-Adapter",
            "top1": {
                "imagenet": 63.0,
                "imagenet-v2": 55.0,
                "imagenet-sketch": 35.5,
                "imagenet-a": 22.5,
                "imagenet-r": 57.5,
            },
            "source": "Test paper, Table 9",
            "kind": "primary",
            "protocol": "7 templates, 3 seeds",
        },
        entry
        | {
            "method": "coop",
            "label": "coop",
            "top1": {"imagenet": 63.3, "imagenet-v2": 55.4},
            "source": "Other paper, Table 1",
            "kind": "secondary",
            "protocol": "learned context, 3 seeds",
        },
    ]
    monkeypatch.setattr(published, "_load_shift", lambda: data)
    return data


# --------------------------------------------------------------------------- numbers


def test_cells_and_mean_match_an_independent_computation():
    reports = build_reports(grid())
    assert [r.method for r in reports] == ["clip-adapter", "tip-adapter-f"]
    for report in reports:
        row = report.shift[("imagenet", 16)]
        assert row.targets == list(TARGETS) and row.templates == ("imagenet7",)
        for column in ("imagenet", *TARGETS):
            mean, std, ci = expected([top1(report.method, column, s) for s in SEEDS])
            cell = row.cells[column]
            assert (cell.n, cell.seeds) == (3, SEEDS)
            assert (
                cell.mean == pytest.approx(mean) and cell.std == pytest.approx(std) and cell.ci95 == pytest.approx(ci)
            )
        per_seed = [statistics.fmean(top1(report.method, t, s) for t in TARGETS) for s in SEEDS]
        mean, std, ci = expected(per_seed)
        assert row.mean.mean == pytest.approx(mean) and row.mean.std == pytest.approx(std)
        assert row.mean.ci95 == pytest.approx(ci)
        assert (
            row.zero_shot["imagenet-a"].mean == pytest.approx(ZS["imagenet-a"]) and row.zero_shot["imagenet-a"].std == 0
        )
        assert row.zero_shot_mean.mean == pytest.approx(statistics.fmean(ZS[t] for t in TARGETS))


def test_a_seed_missing_a_target_leaves_the_mean_and_that_cell_only():
    (report, _) = build_reports(grid(drop={("clip-adapter", 2, "imagenet-a")}))
    row = report.shift[("imagenet", 16)]
    assert row.cells["imagenet-a"].seeds == (1, 3) and row.cells["imagenet-r"].seeds == SEEDS
    per_seed = [statistics.fmean(top1("clip-adapter", t, s) for t in TARGETS) for s in (1, 3)]
    assert row.mean.seeds == (1, 3) and row.mean.mean == pytest.approx(statistics.fmean(per_seed))
    assert "[2/3 seeds]" in render_markdown([report])


def test_results_without_targets_have_no_shift_table():
    plain = [make_result("imagenet", 16, s, 60.0 + s) for s in SEEDS]
    (report,) = build_reports(plain)
    assert report.shift == {} and "Distribution shift" not in render_markdown([report])
    assert all(r["dataset"] == "imagenet" for r in csv.DictReader(io.StringIO(to_csv(report))))


# --------------------------------------------------------------------------- rendering


def test_markdown_table_rows_and_columns():
    reports = build_reports(grid())
    text = render_markdown(reports)
    section = text[text.index("## Distribution shift — RN50-quickgelu / openai, fitted on imagenet (16-shot)") :]
    header = next(line for line in section.splitlines() if line.startswith("| Method | Templates"))
    assert header == "| Method | Templates | ImageNet | -V2 | -Sketch | -A | -R | Mean (4 targets) |"
    table = section.split("95% confidence")[0]
    rows = {line.split(" | ")[0][2:]: line for line in table.splitlines() if line.startswith("| ")}
    assert "Zero-shot CLIP (recorded with the CLIP-Adapter [ensemble] runs)" in rows  # imagenet7: not its paper's
    assert (
        f"| {ZS['imagenet-sketch']:.2f} ± 0.00 (paper 35.44, {ZS['imagenet-sketch'] - 35.44:+.2f}) |"  # Table 5's
        in rows["Zero-shot CLIP (recorded with the CLIP-Adapter [ensemble] runs)"]
    )
    mean, std, _ = expected([top1("tip-adapter-f", "imagenet-r", s) for s in SEEDS])
    assert f"{mean:.2f} ± {std:.2f}" in rows["Tip-Adapter-F"] and "imagenet7" in rows["Tip-Adapter-F"]
    v2 = statistics.fmean(top1("tip-adapter-f", "imagenet-v2", s) for s in SEEDS)
    assert f"(paper 57.11, {v2 - 57.11:+.2f})" in rows["Tip-Adapter-F"]  # the shipped RN50 Table 5 row
    assert "- Tip-Adapter-F: Tip-Adapter (arXiv 2207.09519) Table 5 (primary)" in section.split("## CLIP-Adapter")[0]


def test_csv_rows_for_targets_and_their_mean():
    (report, _) = build_reports(grid())
    rows = [r for r in csv.DictReader(io.StringIO(to_csv(report))) if r["dataset"] != "imagenet"]
    assert [r["dataset"] for r in rows] == [*TARGETS, "imagenet-shift"]
    sketch = rows[1]
    mean, std, ci = expected([top1("clip-adapter", "imagenet-sketch", s) for s in SEEDS])
    assert (sketch["method"], sketch["shots"], sketch["n_seeds"], sketch["seeds"]) == (
        "clip-adapter",
        "16",
        "3",
        "1 2 3",
    )
    assert float(sketch["mean"]) == pytest.approx(mean, abs=1e-4) and float(sketch["ci95"]) == pytest.approx(
        ci, abs=1e-4
    )
    assert float(sketch["zero_shot"]) == pytest.approx(ZS["imagenet-sketch"]) and sketch["published"] == "35.6800"
    assert sketch["published_protocol"].startswith("Tip-Adapter (arXiv 2207.09519) Table 5 (primary)")
    assert float(rows[-1]["zero_shot"]) == pytest.approx(statistics.fmean(ZS[t] for t in TARGETS), abs=1e-4)


def test_published_numbers_beside_ours_with_their_protocol(with_published):
    reports = build_reports(grid())
    row = reports[0].shift[("imagenet", 16)]
    assert row.published["imagenet-v2"] == 55.0
    text = render_markdown(reports)
    ours = statistics.fmean(top1("clip-adapter", "imagenet-v2", s) for s in SEEDS)
    assert f"(paper 55.00, {ours - 55.0:+.2f})" in text
    paper_mean = statistics.fmean([55.0, 35.5, 22.5, 57.5])
    assert f"(paper {paper_mean:.2f}" in text
    assert "- CLIP-Adapter [ensemble]: Test paper, Table 9 (primary); protocol: 7 templates, 3 seeds" in text
    assert "| coop (published only, secondary) | — | — (paper 63.30) | — (paper 55.40) | — |" in text
    assert "- coop (published only, secondary): Other paper, Table 1 (secondary); protocol: learned context" in text
    csv_rows = {r["dataset"]: r for r in csv.DictReader(io.StringIO(to_csv(reports[0])))}
    assert float(csv_rows["imagenet-v2"]["diff"]) == pytest.approx(ours - 55.0, abs=1e-4)
    assert float(csv_rows["imagenet-shift"]["published"]) == pytest.approx(paper_mean)


def test_published_numbers_only_for_the_same_backbone_and_setting(with_published):
    other = build_reports(grid(model=OTHER))
    assert all(not r.shift[("imagenet", 16)].published for r in other)
    assert "paper" not in render_markdown(other) and "published only" not in render_markdown(other)
    eight = [shift_result("clip-adapter", s) | {"shots": 8} for s in SEEDS]
    (report,) = build_reports(eight)
    assert report.shift[("imagenet", 8)].published == {} and "published only" not in render_markdown([report])


def test_shipped_published_shift_data_is_well_formed():
    assert published_shift_setting() == ("imagenet", 16)
    data = published._load_shift()
    assert data["targets"] == list(TARGETS)
    for backbone in ("RN50", "ViT-B/32", "ViT-B/16"):  # every number names its source, kind and protocol
        for entry in published_shift_entries(backbone):
            assert entry.source and entry.protocol and entry.kind in ("primary", "official repo", "secondary")
            assert set(entry.top1) <= {"imagenet", *TARGETS}
    for method in ("proker", "lp++", "taskres"):  # what is known, when nothing is verified
        assert published_shift_note(method)
