"""The public Python API (``cacheclip.__all__``): each function against what the CLI and the store
hold, on a generated store."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import cacheclip
from cacheclip.errors import ConfigError
from cacheclip.features import store as st
from cacheclip.testing import REF, clustered

WHERE = {"model": "RN50", "pretrained": "none"}  # the model the generated stores name (cacheclip.testing.REF)


@pytest.fixture
def cache(tmp_path):
    clustered(tmp_path / "cache", templates=3)
    return tmp_path / "cache"


def test_every_public_name_resolves_and_import_stays_light():
    assert all(getattr(cacheclip, name) is not None for name in cacheclip.__all__)
    probe = "import sys, cacheclip; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # the names load on first use
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cacheclip.nope  # noqa: B018


def test_open_store_by_name_and_by_path_reads_what_the_store_holds(cache):
    path = cacheclip.store_path("eurosat", cache_dir=cache, **WHERE)
    assert path == st.store_path(cache, REF.model_id, REF.weights_id, "eurosat")
    with cacheclip.open_store("eurosat", cache_dir=cache, **WHERE) as store, st.open_store(path) as raw:
        train = store.split("train", views=True)
        feats, labels, views = raw.read("train", aug=True)
        np.testing.assert_array_equal(train.features, feats)
        np.testing.assert_array_equal(train.labels, labels)
        np.testing.assert_array_equal(train.views, views)
        assert train.paths == raw.listing("train").paths and store.classnames == raw.classnames
        assert store.splits == ["test", "train", "val"] and store.logit_scale == 100.0
        assert store.attrs["dataset"] == "eurosat" and store.classifiers == list(raw.classifiers)
    with cacheclip.open_store(path) as store:
        test = store.split("test", torch=True)
        assert isinstance(test.features, torch.Tensor) and test.views is None and len(test.paths) == len(test.labels)


def test_text_classifiers_are_a_template_or_the_normalised_mean_of_several(tmp_path):
    one, three = clustered(tmp_path / "one"), clustered(tmp_path / "three", templates=3)
    with cacheclip.open_store(one) as store, st.open_store(one) as raw:
        assert store.classifiers == ["single"]
        np.testing.assert_array_equal(store.text_classifier(), raw.text_features()[0][0])
    with cacheclip.open_store(three) as store, st.open_store(three) as raw:
        [name] = store.classifiers
        per_template = raw.text_features()[0]
        unit = per_template / np.linalg.norm(per_template, axis=-1, keepdims=True)
        mean = unit.mean(0) / np.linalg.norm(unit.mean(0), axis=-1, keepdims=True)
        weights = store.text_classifier(name, torch=True)
        assert isinstance(weights, torch.Tensor)
        np.testing.assert_allclose(weights.numpy(), mean, rtol=1e-5, atol=1e-6)
        with pytest.raises(ConfigError, match="holds no classifier 'nope'"):
            store.text_classifier("nope")


def test_run_fit_is_the_cli_fit(cache, tmp_path, cli):
    results = cacheclip.run_fit(
        "eurosat", "tip-adapter", shots=(2,), seeds=(1, 2), settings={"alphas": [1.0], "betas": [5.0]},
        cache_dir=cache, results_dir=tmp_path / "api", **WHERE,
    )  # fmt: skip
    assert [(r["shots"], r["seed"]) for r in results] == [(2, 1), (2, 2)]
    code, _, err = cli(
        "fit", "--dataset", "eurosat", "--method", "tip-adapter", "--tip-alpha", "1", "--tip-beta", "5",
        "--shots", "2", "--seeds", "1,2", "--cache-dir", cache, "--results-dir", tmp_path / "cli",
        "--model", "RN50", "--pretrained", "none",
    )  # fmt: skip
    assert code == 0, err
    by_cli = {(r["seed"]): r for r in cacheclip.load_results(tmp_path / "cli")}
    for r in results:
        assert r["run_key"] == by_cli[r["seed"]]["run_key"] and r["metrics"] == by_cli[r["seed"]]["metrics"]
    with pytest.raises(ConfigError, match="unknown key 'nope'"):
        cacheclip.run_fit("eurosat", "tip-adapter", settings={"nope": 1}, cache_dir=cache, **WHERE)


def test_results_as_records_rows_and_a_frame(cache, tmp_path, monkeypatch):
    folder = tmp_path / "all"
    cacheclip.run_fit("eurosat", "zero-shot", shots=(1, 2), seeds=(1,), cache_dir=cache, results_dir=folder, **WHERE)
    (folder / "junk.json").write_text("{not json")
    records = cacheclip.load_results(folder)
    assert sorted(r["shots"] for r in records) == [1, 2] and len(records.warnings) == 1
    rows = list(cacheclip.result_rows(records))
    assert rows[0]["method"] == "zero-shot" and rows[0]["test_top1"] == records[0]["metrics"]["test"]["top1"]
    assert rows[0]["classes"] == "all" and rows[0]["base_top1"] is None
    [split] = cacheclip.run_fit(
        "eurosat", "zero-shot", shots=(2,), seeds=(1,), classes="base-to-new", cache_dir=cache,
        results_dir=tmp_path / "b2n", **WHERE,
    )  # fmt: skip
    [row] = cacheclip.result_rows([split])
    assert row["classes"] == "base-to-new" and row["test_top1"] is None
    assert (row["base_top1"], row["new_top1"]) == (split["metrics"]["base"]["top1"], split["metrics"]["new"]["top1"])
    assert row["harmonic_mean_top1"] == split["metrics"]["harmonic_mean"]["top1"]
    frame = cacheclip.results_frame(folder)
    assert list(frame["shots"].sort_values()) == [1, 2] and "test_top1" in frame.columns
    monkeypatch.setitem(sys.modules, "pandas", None)  # as without pandas installed
    with pytest.raises(ConfigError, match="needs pandas") as e:
        cacheclip.results_frame(folder)
    assert e.value.hint == "pip install pandas"
