"""The report's base-to-new table: hand-written ``fit --classes base-to-new`` results -> base, new
and H per dataset and on average, beside published numbers of the same backbone only."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path

import pytest
from test_report import RN50, make_result, write

from cacheclip.results.base_to_new import AVERAGE, build_base_to_new
from cacheclip.results.loading import load_results, result_problem
from cacheclip.results.published import (
    MEAN_OF_H,
    PAPER_DATASETS,
    published_b2n_averages,
    published_b2n_datasets,
)
from cacheclip.results.render_base_to_new import base_to_new_csv, base_to_new_markdown
from cacheclip.results.report import build_reports
from cacheclip.results.write import write_report

VIT16 = ("ViT-B-16", "openai")
SEEDS = (1, 2, 3)
ZS = (70.0, 74.0)  # zero-shot base, new on every dataset


def h(b: float, n: float) -> float:
    return 2 * b * n / (b + n)


def scores(dataset: str, seed: int) -> tuple[float, float]:
    """Known, uneven base and new top-1 per (dataset, seed)."""
    index = PAPER_DATASETS.index(dataset) if dataset in PAPER_DATASETS else 5
    base = 80.0 + index + (0.6, -1.3, 2.1, 0.2, -0.4)[seed - 1]
    new = 60.0 + 1.5 * index + (-0.8, 1.7, 0.3, -1.1, 0.9)[seed - 1]
    return base, new


def block(base: float, new: float) -> dict:
    return {
        "val": {"top1": base, "mean_per_class": base, "n": 10},
        "base": {"top1": base, "mean_per_class": base, "n": 50},
        "new": {"top1": new, "mean_per_class": new, "n": 50},
        "harmonic_mean": {"top1": h(base, new), "mean_per_class": h(base, new)},
    }


def b2n_result(dataset: str, seed: int, method: str = "gda", model=VIT16, shots: int = 16) -> dict:
    """A result as ``fit --classes base-to-new`` writes it (no ``metrics.test``)."""
    result = make_result(dataset, shots, seed, 0.0, method, model)
    base, new = scores(dataset, seed)
    result["config"] = {"classes": "base-to-new"}
    result["classes"] = {"mode": "base-to-new", "base": ["a", "b"], "new": ["c"], "new_class_rule": "zero-shot weights"}
    result["metrics"] = block(base, new)
    result["zero_shot"] = block(*ZS)
    result["run_key"] += "-b2n"
    if dataset == "imagenet":  # its paper's classifier there: otherwise a run protocol of its own
        result["store"] = {"attrs": {"templates_spec": "imagenet7"}}
    return result


def grid(datasets=PAPER_DATASETS, seeds=SEEDS, method="gda", model=VIT16, drop=()) -> list[dict]:
    return [b2n_result(d, s, method, model) for d in datasets for s in seeds if (d, s) not in drop]


def expected(values: list[float]) -> tuple[float, float, float]:
    """Mean, std (n - 1) and the 95% Student t half-width, written out here."""
    t975 = {2: 12.706, 3: 4.303, 5: 2.776}[len(values)]
    std = statistics.stdev(values)
    return statistics.fmean(values), std, t975 * std / math.sqrt(len(values))


# --------------------------------------------------------------------------- numbers


def test_results_validate_without_a_test_split():
    result = b2n_result("dtd", 1)
    assert result_problem(result) is None
    del result["metrics"]["new"]
    assert "metrics.new.top1" in result_problem(result)
    broken = b2n_result("dtd", 1)
    broken["metrics"]["base"]["top1"] = 140.0
    assert "metrics.base.top1" in result_problem(broken)


def test_dataset_cells_equal_an_independent_computation_with_an_odd_seed_count():
    seeds = (1, 2, 3, 4, 5)
    (report,) = build_base_to_new(grid(("dtd", "eurosat"), seeds))
    assert (report.method, report.shots, report.datasets) == ("gda", 16, ["dtd", "eurosat"])
    for d in ("dtd", "eurosat"):
        bases, news = zip(*(scores(d, s) for s in seeds), strict=True)
        cell = report.cells[d]
        for got, values in ((cell.base, bases), (cell.new, news)):
            mean, std, ci = expected(list(values))
            assert (got.n, got.seeds) == (5, seeds)
            assert (got.mean, got.std, got.ci95) == pytest.approx((mean, std, ci))
        assert cell.h == pytest.approx(h(statistics.fmean(bases), statistics.fmean(news)))  # H of the means
        per_seed_h = [h(b, n) for b, n in zip(bases, news, strict=True)]
        assert cell.h_seeds.ci95 == pytest.approx(expected(per_seed_h)[2])
        assert report.zero_shot[d].h == pytest.approx(h(*ZS))


def test_a_missing_seed_is_listed_and_the_cell_uses_the_others():
    results = grid(("dtd", "eurosat"), drop={("dtd", 2)})
    results[0]["protocol"]["differences"] = ["fits the base classes with a shared covariance"]
    (report,) = build_base_to_new(results)
    assert report.missing == {"dtd": (2,)} and report.cells["dtd"].base.seeds == (1, 3)
    bases = [scores("dtd", s)[0] for s in (1, 3)]
    assert report.cells["dtd"].base.mean == pytest.approx(statistics.fmean(bases))
    assert report.cells["dtd"].base.ci95 == pytest.approx(expected(bases)[2])
    text = "\n".join(base_to_new_markdown([report]))
    assert "[2/3 seeds]" in text and "- missing: dtd seeds 2" in text
    assert "- fits the base classes with a shared covariance (runs: 1)" in text


def test_average_row_is_mean_base_mean_new_and_h_of_the_means():
    (report,) = build_base_to_new(grid())
    means = {d: [statistics.fmean(scores(d, s)[i] for s in SEEDS) for i in (0, 1)] for d in PAPER_DATASETS}
    base = statistics.fmean(b for b, _ in means.values())
    new = statistics.fmean(n for _, n in means.values())
    average = report.cells[AVERAGE]
    assert average.base.mean == pytest.approx(base) and average.new.mean == pytest.approx(new)
    assert average.h == pytest.approx(h(base, new))
    assert average.mean_of_h == pytest.approx(statistics.fmean(h(b, n) for b, n in means.values()))
    assert average.mean_of_h < average.h  # the two conventions differ: the table keeps them apart
    ci = math.sqrt(sum(report.cells[d].base.ci95 ** 2 for d in PAPER_DATASETS)) / len(PAPER_DATASETS)
    assert average.base.ci95 == pytest.approx(ci)  # the few-shot average's spread rule


def test_ordinary_and_base_to_new_results_are_kept_apart(tmp_path: Path):
    ordinary = [make_result("dtd", 16, s, 65.0 + s, "gda", VIT16) for s in SEEDS]
    results = ordinary + grid(("dtd",))
    (few_shot,) = build_reports(results)
    assert few_shot.n_runs == 3 and few_shot.cells[("dtd", 16)].mean == pytest.approx(67.0)
    (b2n,) = build_base_to_new(results)
    assert b2n.n_runs == 3 and b2n.cells["dtd"].base.mean == pytest.approx(
        statistics.fmean(scores("dtd", s)[0] for s in SEEDS)
    )
    for i, result in enumerate(results):
        write(tmp_path / "runs", result, f"run{i}.json")
    paths = write_report([tmp_path / "runs"], tmp_path / "out")
    markdown = paths["md"].read_text("utf-8")
    assert markdown.index("## GDA — ViT-B-16") < markdown.index("## Base-to-new generalization")
    assert "### GDA [base-to-new, 16-shot] — ViT-B-16 / openai" in markdown
    few_rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text("utf-8"))))
    assert {r["dataset"] for r in few_rows} == {"dtd"} and {r["mean"] for r in few_rows} == {"67.0000"}
    b2n_rows = list(csv.DictReader(io.StringIO(paths["base_to_new_csv"].read_text("utf-8"))))
    assert {r["dataset"] for r in b2n_rows} == {"dtd", AVERAGE}


def test_only_base_to_new_results_still_report(tmp_path: Path):
    for i, result in enumerate(grid(("dtd",))):
        write(tmp_path / "runs", result, f"run{i}.json")
    paths = write_report([tmp_path / "runs"], tmp_path / "out")
    assert set(paths) == {"md", "csv", "base_to_new_csv"} and "Base-to-new" in paths["md"].read_text("utf-8")
    assert paths["csv"].read_text("utf-8").splitlines()[1:] == []  # no few-shot row, not a stale file
    assert load_results([tmp_path / "runs"])  # read like any result


def test_csv_rows_carry_the_table_numbers():
    (report,) = build_base_to_new(grid(("dtd", "eurosat")))
    rows = {(r["dataset"], r["part"]): r for r in csv.DictReader(io.StringIO(base_to_new_csv([report])))}
    bases, news = zip(*(scores("dtd", s) for s in SEEDS), strict=True)
    mean, std, ci = expected(list(news))
    assert float(rows[("dtd", "new")]["mean"]) == pytest.approx(mean, abs=1e-4)
    assert float(rows[("dtd", "new")]["ci95"]) == pytest.approx(ci, abs=1e-4)
    assert float(rows[("dtd", "h")]["mean"]) == pytest.approx(h(statistics.fmean(bases), mean), abs=1e-4)
    assert float(rows[("dtd", "h")]["zero_shot"]) == pytest.approx(h(*ZS), abs=1e-4)
    assert rows[("dtd", "base")]["published"] == "80.6300"  # GDA's per-dataset number
    assert rows[(AVERAGE, MEAN_OF_H)]["published"] == ""  # a partial average: no 11-dataset figure


# --------------------------------------------------------------------------- published numbers

PUBLISHED_AVERAGES = {  # base-to-new.md, the averages table: method -> (base, new, H, source, kind)
    ("zero-shot", "maple-readme"): (69.34, 74.22, 71.70),
    ("coop", "maple-readme"): (82.69, 63.22, 71.66),
    ("coop", "kgcoop-readme"): (82.63, 67.99, 74.60),
    ("cocoop", "maple-readme"): (80.47, 71.69, 75.83),
    ("kgcoop", "kgcoop-readme"): (80.73, 73.6, 77.0),
    ("maple", "maple-readme"): (82.28, 75.14, 78.55),
    ("gda", "gda-log"): (83.96, 74.53, 78.72),
    ("prolip", "prolip-readme"): (84.01, 73.86, 78.61),
}
GDA_PER_DATASET = {  # base-to-new.md, GDA per dataset (ViT-B/16): base, new
    "imagenet": (75.95, 69.79),
    "caltech101": (98.04, 94.51),
    "oxford_pets": (94.10, 97.15),
    "stanford_cars": (78.71, 66.92),
    "oxford_flowers": (97.78, 72.46),
    "food101": (90.63, 91.21),
    "fgvc_aircraft": (45.88, 34.09),
    "sun397": (81.95, 75.62),
    "dtd": (80.63, 59.82),
    "eurosat": (93.28, 79.21),
    "ucf101": (86.63, 79.09),
}


def _data() -> dict:
    path = Path(__file__).parents[1] / "cacheclip/results/data/published_base_to_new.json"
    return json.loads(path.read_text("utf-8"))


def test_the_data_file_holds_exactly_the_reference_numbers():
    data = _data()
    stored = {(e["method"], e["source"]): (e["base"], e["new"], e["h"]) for e in data["averages"]}
    assert stored == PUBLISHED_AVERAGES
    assert all(e["backbone"] == "ViT-B/16" and e["shots"] == 16 for e in data["averages"])
    assert all(e["kind"] in ("primary", "official repo", "secondary") for e in data["averages"])
    (gda,) = data["per_dataset"]
    assert {d: tuple(v) for d, v in gda["base_new"].items()} == GDA_PER_DATASET


def test_each_published_h_convention_is_the_one_its_numbers_follow():
    """H of the printed base and new (to their rounding) for all but GDA, whose H is the mean of
    its per-dataset H; GDA's base and new averages are the means of its per-dataset lines."""
    for paper in published_b2n_averages("ViT-B/16", 16):
        if paper.h_convention == MEAN_OF_H:
            assert paper.method == "gda"
            per_dataset = GDA_PER_DATASET.values()
            assert paper.h == pytest.approx(statistics.fmean(h(b, n) for b, n in per_dataset), abs=0.005)
            assert paper.base == pytest.approx(statistics.fmean(b for b, _ in per_dataset), abs=0.005)
            assert paper.new == pytest.approx(statistics.fmean(n for _, n in per_dataset), abs=0.005)
        else:
            assert paper.h == pytest.approx(h(paper.base, paper.new), abs=0.05)


def test_published_numbers_beside_a_vit_b16_run_with_source_and_kind():
    (report,) = build_base_to_new(grid())
    paper = published_b2n_datasets("gda", "ViT-B/16", 16)["dtd"]
    pair = report.comparisons[("dtd", "base")]
    assert (pair.published, pair.value) == (80.63, report.cells["dtd"].base.mean)
    assert pair.verdict.like == "uncertain" and pair.verdict.reasons  # what the source does not record
    assert report.comparisons[("dtd", "h")].published == pytest.approx(h(80.63, 59.82))
    # GDA's average H is the mean of per-dataset H: beside ours of that convention, not H of means
    assert report.comparisons[(AVERAGE, MEAN_OF_H)].published == 78.72
    assert report.comparisons[(AVERAGE, MEAN_OF_H)].value == pytest.approx(report.cells[AVERAGE].mean_of_h)
    assert (AVERAGE, "h") not in report.comparisons
    assert report.zero_shot_comparisons[(AVERAGE, "h")].published == 71.70
    text = "\n".join(base_to_new_markdown([report]))
    ours = report.cells["dtd"].base.mean
    assert f"(paper 80.63, {ours - 80.63:+.2f}) ?" in text
    assert "GDA official log (mrflogs/ICLR24 logs/base2new.log" in text and "(official repo)" in text
    assert "the mean over the 11 datasets of each dataset's H" in text
    # other methods' averages: published-only rows, both CoOp sources, with kind
    assert "| CoOp (published, secondary, 16-shot) | ViT-B/16 | 11 | 82.69 | 63.22 | 71.66 | — |" in text
    assert "| CoOp (published, secondary, 16-shot) | ViT-B/16 | 11 | 82.63 | 67.99 | 74.60 | — |" in text
    assert "| GDA (published" not in text  # ours stands beside it instead
    rows = {(r["dataset"], r["part"]): r for r in csv.DictReader(io.StringIO(base_to_new_csv([report])))}
    assert rows[("dtd", "base")]["published_kind"] == "official repo" and rows["dtd", "base"]["published"] == "80.6300"
    assert rows[(AVERAGE, MEAN_OF_H)]["published_h_convention"] == MEAN_OF_H
    assert paper.source in rows[("dtd", "base")]["published_source"]


def test_published_numbers_never_beside_another_backbone_or_shot_count():
    for results in (grid(model=RN50), [r | {"shots": 4} for r in grid()], grid(model=("ViT-B-16", "laion2b"))):
        (report,) = build_base_to_new(results)
        assert not report.comparisons and not report.zero_shot_comparisons and not report.published
        text = "\n".join(base_to_new_markdown([report]))
        assert "paper " not in text and "published," not in text
        assert "No published base-to-new number stands beside these runs" in text


def test_a_partial_average_is_not_set_beside_an_11_dataset_figure():
    (report,) = build_base_to_new(grid(PAPER_DATASETS[:5]))
    assert (AVERAGE, MEAN_OF_H) not in report.comparisons and ("dtd", "base") not in report.comparisons
    assert ("imagenet", "base") in report.comparisons  # per-dataset numbers still pair
    text = "\n".join(base_to_new_markdown([report]))
    assert "| GDA (published, official repo, 16-shot) | ViT-B/16 | 11 |" in text  # shown apart, not beside ours


def test_the_report_command_shows_the_table_for_a_results_folder(cli, tmp_path: Path):
    """What `cacheclip report` prints for a batch's results folder holding base-to-new runs."""
    for i, result in enumerate(grid(("dtd", "eurosat")) + [make_result("dtd", 16, 1, 61.0, "gda", VIT16)]):
        write(tmp_path / "results" / result["dataset"], result, f"run{i}.json")
    code, out, err = cli("report", "--results", str(tmp_path / "results"), "--datasets", "dtd,eurosat")
    assert code == 0, err
    assert "### GDA [base-to-new, 16-shot] — ViT-B-16 / openai" in out and "## GDA — ViT-B-16" in out
    assert (tmp_path / "results" / "report" / "base_to_new.csv").is_file()


def test_the_report_page_lists_the_stored_averages():
    page = (Path(__file__).parents[1] / "docs/report.md").read_text("utf-8")
    table = page.split("| method | base / new / H |")[1].split("\n\n")[0].splitlines()[2:]
    shown = {(tuple(float(v) for v in row.split(" | ")[1].split(" / ")), row.split(" | ")[-1][:-2]) for row in table}
    assert shown == {((p.base, p.new, p.h), p.kind) for p in published_b2n_averages("ViT-B/16", 16)}
