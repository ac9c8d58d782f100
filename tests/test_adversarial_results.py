"""Issue 27, junk result files: every number the report reads is validated (type, range,
finite) and a result that fails is listed as skipped, never averaged; a result.json that is
not an object, a folder or a FIFO is skipped by name; thousands of bad files are counted."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_report import accuracy, expected_cell, make_result, write, write_grid

from cacheclip.results.loading import SHOWN_SKIPPED, load_results
from cacheclip.results.render import to_markdown
from cacheclip.results.report import build_reports


@pytest.fixture()
def grid(tmp_path: Path) -> Path:
    write_grid(tmp_path / "runs")
    return tmp_path / "runs"


def _report(paths):
    (report,) = build_reports(load_results(paths))
    return report


def _set(result: dict, dotted: str, value) -> dict:
    *parents, last = dotted.split(".")
    block = result
    for key in parents:
        block = block[key]
    block[last] = value
    return result


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("metrics.test.top1", 250.0, "metrics.test.top1 is 250.0"),
        ("metrics.test.top1", -3.0, "metrics.test.top1 is -3.0"),
        ("metrics.test.top1", "70", "metrics.test.top1 is '70'"),
        ("metrics.test.top1", True, "metrics.test.top1 is True"),
        ("metrics.test.mean_per_class", 1e9, "metrics.test.mean_per_class is 1000000000.0"),
        ("metrics.val.top1", float("nan"), "metrics.val.top1 is nan"),
        ("metrics.test.n", -1, "metrics.test.n is -1"),
        ("zero_shot.test.top1", 250.0, "zero_shot.test.top1 is 250.0"),
        ("metrics.targets", {"imagenet-a": {"top1": 101.0}}, "metrics.targets.imagenet-a.top1 is 101.0"),
        ("shots", -4, "invalid 'shots'"),
        ("seed", 2**40, "invalid 'seed'"),
        ("metrics.test", [70.0], "metrics.test is list"),
    ],
)
def test_an_impossible_number_is_skipped_never_averaged(grid, field, value, message):
    bad = _set(make_result("eurosat", 1, 1, accuracy("eurosat", 1, 1)), field, value)
    write(grid / "junk", bad, "result.json")  # the newest copy of eurosat 1-shot seed 1
    report = _report([grid])
    mean, std, _ = expected_cell("eurosat", 1)
    cell = report.cells[("eurosat", 1)]
    assert cell.mean == pytest.approx(mean) and cell.std == pytest.approx(std) and cell.n == 3
    assert report.zero_shot["eurosat"] == 37.0
    assert any(str(grid / "junk" / "result.json") in w and message in w for w in report.warnings)
    assert not any(w.startswith("duplicate") for w in report.warnings)  # skipped before grouping


def test_a_result_json_that_is_not_an_object_a_folder_or_a_fifo_is_listed_as_skipped(grid, tmp_path):
    (grid / "a").mkdir()
    (grid / "a" / "result.json").write_text("[1, 2, 3]")
    (grid / "b" / "result.json").mkdir(parents=True)
    (grid / "c").mkdir()
    os.mkfifo(grid / "c" / "result.json")  # opening it would block until a writer comes
    report = _report([grid])
    assert report.n_runs == 12
    text = "\n".join(report.warnings)
    assert f"skipped {grid / 'a' / 'result.json'}: a JSON list, not a cacheclip result" in text
    assert f"skipped {grid / 'b' / 'result.json'}: a folder, not a file" in text
    assert f"skipped {grid / 'c' / 'result.json'}: not a regular file (a FIFO" in text
    fifo = load_results([grid / "c" / "result.json"])  # named on the command line: skipped, not a hang
    assert not fifo and "not a regular file" in fifo.warnings[0]


def test_thousands_of_bad_files_give_a_count_and_the_first_few(grid):
    junk = grid / "junk"
    junk.mkdir()
    for i in range(1500):
        (junk / f"{i:04d}.json").write_text(json.dumps({**make_result("dtd", 1, 1, 50.0), "metrics": {}}))
    report = _report([grid])
    skipped = [w for w in report.warnings if w.startswith("skipped ")]
    assert len(skipped) == SHOWN_SKIPPED + 1
    assert skipped[-1] == f"skipped {1500 - SHOWN_SKIPPED} more files (the first {SHOWN_SKIPPED} are named above)"
    assert to_markdown(report).count("\n- skipped ") == SHOWN_SKIPPED + 1
