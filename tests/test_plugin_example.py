"""The example plugin (examples/ncm-blend), installed as the README's install command installs
it, through the CLI like a built-in method: batch (flag and TOML table), fit, report, predict."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import cacheclip
from cacheclip.datasets.synthetic import make_dataset
from cacheclip.fit.methods import list_methods, plugin_of

SMALL = {"n_classes": 3, "n_train": 4, "n_val": 2, "n_test": 3, "image_size": 32}


@pytest.fixture(scope="module")
def example(tmp_path_factory, tiny_clip):
    if "ncm-blend" not in list_methods():
        pytest.fail("the example plugin is not installed: pip install -e examples/ncm-blend (README's install does)")
    base = tmp_path_factory.mktemp("plugin")
    make_dataset("eurosat", base / "data", **SMALL)
    model = ["--model", str(tiny_clip[0]), "--pretrained", str(tiny_clip[1])]
    return base, model


def run(*args) -> subprocess.CompletedProcess:
    """The installed `cacheclip` command, in a process of its own (entry points as a user has them)."""
    return subprocess.run([sys.executable, "-m", "cacheclip", *map(str, args)], capture_output=True, text=True)


def results(base: Path) -> list[tuple[Path, dict]]:
    return [(p, json.loads(p.read_text())) for p in (base / "results").rglob("result.json")]


def test_the_example_is_an_installed_plugin():
    plugin = plugin_of("ncm-blend")
    assert plugin is not None and plugin.package.startswith("cacheclip-ncm-blend ")


def test_batch_fit_report_and_predict_run_the_plugin(example):
    base, model = example
    where = ["--cache-dir", base / "cache", "--results-dir", base / "results"]
    toml = base / "batch.toml"
    toml.write_text('methods = ["ncm-blend", "zero-shot"]\n[ncm-blend]\nbetas = [0.0, 1.0]\n')
    batch = run(
        "batch", "--config", toml, "--root", base / "data", "--datasets", "eurosat", *model,
        "--shots", "1,2", "--seeds", "1,2", "--aug-views", "2", "--workers", "0", "--device", "cpu", *where,
    )  # fmt: skip
    assert batch.returncode == 0, batch.stderr
    ours = [r for _, r in results(base) if r["method"] == "ncm-blend"]
    assert sorted((r["shots"], r["seed"]) for r in ours) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert all(r["selection"]["on"] == "val" and len(r["selection"]["candidates"]) == 2 for r in ours)

    fit = run("fit", "--dataset", "eurosat", "--method", "ncm-blend", "--ncm-betas", "0.5", *model,
              "--shots", "2", "--seeds", "2", *where)  # fmt: skip
    assert fit.returncode == 0, fit.stderr
    [(folder, result)] = [(p.parent, r) for p, r in results(base) if r["config"].get("betas") == [0.5]]
    assert result["method"] == "ncm-blend" and result["selection"]["chosen"] == {"beta": 0.5}

    report = run("report", "--results", base / "results", "--out", base / "report")
    assert report.returncode == 0, report.stderr
    assert "ncm-blend" in (base / "report" / "report.md").read_text()
    assert any(row.startswith("ncm-blend,") or ",ncm-blend," in row for row in (base / "report" / "report.csv").open())

    with cacheclip.open_store(result["store"]["path"]) as store:  # predict on the test images the fit scored
        test = store.split("test")
        files = [Path(store.attrs["image_root"]) / p for p in test.paths]
        classnames = store.classnames
    predict = run("predict", "--run", folder, *files, "--top-k", "1", "--json")
    assert predict.returncode == 0, predict.stderr
    top = [classnames.index(p["top"][0]["class"]) for p in json.loads(predict.stdout)]
    accuracy = 100 * sum(int(t == y) for t, y in zip(top, test.labels, strict=True)) / len(top)
    assert accuracy == pytest.approx(result["metrics"]["test"]["top1"])
