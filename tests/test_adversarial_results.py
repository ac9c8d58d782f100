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


# ---------------------------------------------------------------- a run that diverged


def test_a_run_that_diverges_is_flagged_in_its_result_and_in_the_report(tmp_path):
    from stores import REF, clustered

    from cacheclip.fit.methods.clip_adapter import ClipAdapterConfig
    from cacheclip.fit.stage import FitConfig, fit_dataset

    clustered(tmp_path / "cache", "eurosat")
    results = {}
    for lr in (1e30, 1e-3):
        cfg = FitConfig(
            shots=(2,), seeds=(1,), cache_dir=str(tmp_path / "cache"), results_dir=str(tmp_path / f"r{lr:g}"),
            method_config=ClipAdapterConfig(epochs=3, lr=lr),
        )  # fmt: skip
        (results[lr],) = fit_dataset("eurosat", REF, cfg)
    assert "training diverged" in results[1e30]["diverged"] and "lower the learning rate" in results[1e30]["diverged"]
    assert "diverged" not in results[1e-3]  # a normal run is not flagged
    (written,) = (tmp_path / "r1e+30").rglob("result.json")
    assert json.loads(written.read_text())["diverged"] == results[1e30]["diverged"]
    report = _report([tmp_path / "r1e+30"])
    assert any(str(written) in w and "training diverged" in w for w in report.warnings)


def test_divergence_is_read_from_the_saved_adapter(tmp_path):
    import torch

    from cacheclip.results import runs as rr

    weights = torch.ones(3, 4)
    for tensor, flagged in ((torch.full((4, 4), 0.5), None), (torch.full((4, 4), 3e9), "reaches 3e+09")):
        rr.save_adapter(tmp_path / "adapter.safetensors", {"fc.weight": tensor}, weights, {})
        result = {"adapter_file": "adapter.safetensors"}
        rr.write_result(tmp_path, result)
        assert (flagged is None and "diverged" not in result) or flagged in result["diverged"]
    rr.save_adapter(tmp_path / "adapter.safetensors", {"fc.weight": torch.tensor([float("nan")])}, weights, {})
    assert "NaN or inf" in rr.divergence(tmp_path, {"adapter_file": "adapter.safetensors"})


def test_a_result_json_nested_too_deeply_is_skipped_not_a_crash(grid, tmp_path):
    from cacheclip.results import runs as rr

    deep = grid / "deep"
    deep.mkdir()
    (deep / "result.json").write_text("[" * 100_000 + "]" * 100_000)
    report = _report([grid])
    assert report.n_runs == 12 and any(
        f"skipped {deep / 'result.json'}: not readable as JSON" in w for w in report.warnings
    )
    assert not rr.is_done(deep, "key")  # fit's resume check reads it too
    (deep / "result.json").write_text("[1]")
    assert not rr.is_done(deep, "key")


def test_fit_says_which_run_diverged(cli, tmp_path):
    from stores import clustered

    clustered(tmp_path / "cache", "eurosat")
    code, out, err = cli(
        "fit", "-d", "eurosat", "--model", "RN50", "--pretrained", "none", "--shots", "2", "--seeds", "1",
        "--epochs", "2", "--lr", "1e30", "--cache-dir", tmp_path / "cache", "--results-dir", tmp_path / "r",
    )  # fmt: skip
    assert code == 0, out + err
    assert "warning: eurosat clip-adapter 2-shot seed 1: training diverged" in err


def test_a_result_json_too_large_for_a_result_is_skipped_unread(grid, monkeypatch):
    from cacheclip.results import loading

    monkeypatch.setattr(loading, "MAX_RESULT_BYTES", 1000)  # the real bound is 64 MB
    big = grid / "big"
    big.mkdir()
    (big / "result.json").write_text(json.dumps({**make_result("dtd", 1, 1, 50.0), "pad": "x" * 2000}))
    report = _report([grid])
    assert report.n_runs == 12 and any("too large for a result" in w for w in report.warnings)
