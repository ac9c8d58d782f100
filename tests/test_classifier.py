"""Named text classifiers: ImageNet stores hold CoOp's single template and the 7-template
ensemble; each method uses its paper's (``--classifier paper``) unless told otherwise, and every
result records which. Checked against an independent numpy computation of both classifiers."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest

from cacheclip.datasets.layouts import load_dataset
from cacheclip.datasets.templates import IMAGENET7
from cacheclip.errors import ConfigError, StoreDamagedError
from cacheclip.features import store as st
from cacheclip.features.extract import ExtractConfig, extract_dataset
from cacheclip.fit.stage import FitConfig, fit_dataset, load_fit_data

SINGLE = "a photo of a {}."


def _extract(coop_root: Path, loaded, tmp_path: Path, dataset: str = "imagenet", **kw):
    cfg = ExtractConfig(
        cache_dir=str(tmp_path / "cache"), workers=0, batch_size=16, shots=(1,), seeds=(1,), aug_views=1, **kw
    )
    return extract_dataset(dataset, coop_root, loaded, cfg)


def _fit_cfg(tmp_path: Path, method: str, **kw) -> FitConfig:
    return FitConfig(
        method=method,
        shots=(1,),
        seeds=(1,),
        cache_dir=str(tmp_path / "cache"),
        results_dir=str(tmp_path / "results"),
        **kw,
    )


def _independent(raw: np.ndarray) -> np.ndarray:
    """Normalise each template's embedding, average, normalise: in float64 numpy."""
    unit = raw / np.linalg.norm(raw, axis=-1, keepdims=True)
    mean = unit.mean(0)
    return mean / np.linalg.norm(mean, axis=-1, keepdims=True)


def _top1(feats: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> float:
    return float((np.argmax(feats @ weights.T, axis=1) == labels).mean() * 100)


@pytest.fixture
def imagenet_store(tiny_loaded, coop_root, tmp_path) -> Path:
    return _extract(coop_root, tiny_loaded, tmp_path).store


def test_an_imagenet_store_holds_both_classifiers(imagenet_store):
    with st.open_store(imagenet_store) as s:
        templates, named = s.templates, s.classifiers
        per_template, ensemble = s.text_features()
    assert templates == [SINGLE, *IMAGENET7]
    assert named == {"single": [0], "ensemble": list(range(1, 8))}
    np.testing.assert_allclose(ensemble, _independent(per_template[1:].astype(np.float64)), atol=1e-6)


def test_other_datasets_hold_their_single_template(tiny_loaded, coop_root, tmp_path):
    path = _extract(coop_root, tiny_loaded, tmp_path, "eurosat").store
    with st.open_store(path) as s:
        assert s.templates == ["a centered satellite photo of {}."] and s.classifiers == {"single": [0]}
        data = load_fit_data(s, "eurosat", _fit_cfg(tmp_path, "tip-adapter"))
    assert data.text_classifier.name == "single" and not data.text_classifier.departure


@pytest.mark.parametrize(
    "method, rows, name",
    [
        ("zero-shot", list(range(1, 8)), "ensemble"),
        ("tip-adapter", list(range(1, 8)), "ensemble"),
        ("gda", list(range(1, 8)), "ensemble"),
        ("clip-adapter", [0], "single"),
        ("taskres", list(range(8)), "single+ensemble"),
    ],
)
def test_each_method_takes_its_papers_classifier(imagenet_store, tmp_path, method, rows, name):
    with st.open_store(imagenet_store) as s:
        raw = s.text_features()[0]
        data = load_fit_data(s, "imagenet", _fit_cfg(tmp_path, method))
    assert data.text_classifier.name == name and data.text_classifier.rule == "paper"
    assert data.templates == [([SINGLE, *IMAGENET7])[i] for i in rows]
    np.testing.assert_array_equal(data.per_template.numpy(), raw[rows])
    expected = raw[0] if len(rows) == 1 else _independent(raw[rows].astype(np.float64))
    np.testing.assert_allclose(data.class_weights.numpy(), expected, atol=1e-6)


def test_results_record_the_classifier_and_zero_shot_uses_it(imagenet_store, tiny_loaded, tmp_path):
    [result] = fit_dataset("imagenet", tiny_loaded.ref, _fit_cfg(tmp_path, "zero-shot"))
    assert result["classifier"] == {
        "name": "ensemble",
        "templates": list(IMAGENET7),
        "rule": "paper",
        "paper": "ensemble",
    }
    assert not any("classifier" in d for d in result["protocol"]["differences"])
    with st.open_store(imagenet_store) as s:
        raw = s.text_features()[0].astype(np.float64)
        feats, labels, _ = s.read("test")
    ours = result["metrics"]["test"]["top1"]
    assert ours == pytest.approx(_top1(feats, labels, _independent(raw[1:])))
    [single] = fit_dataset("imagenet", tiny_loaded.ref, replace(_fit_cfg(tmp_path, "zero-shot"), classifier="single"))
    assert single["classifier"]["name"] == "single" and single["classifier"]["rule"] == "--classifier"
    assert single["run_key"] != result["run_key"]
    assert single["metrics"]["test"]["top1"] == pytest.approx(_top1(feats, labels, raw[0]))
    assert "classifier single (zero-shot's paper: ensemble)" in single["protocol"]["differences"]


def test_a_classifier_the_store_lacks_is_refused(imagenet_store, tiny_loaded, tmp_path):
    with pytest.raises(ConfigError, match="--classifier photo: the store of imagenet holds single, ensemble"):
        fit_dataset("imagenet", tiny_loaded.ref, _fit_cfg(tmp_path, "zero-shot", classifier="photo"))
    with pytest.raises(ConfigError, match="names no classifier"):
        _fit_cfg(tmp_path, "zero-shot", classifier="+").validate()


def test_a_store_from_before_the_ensemble_falls_back_and_says_how_to_add_it(
    imagenet_store, tiny_loaded, coop_root, tmp_path
):
    _as_schema_2_with_one_template(imagenet_store)
    [result] = fit_dataset("imagenet", tiny_loaded.ref, _fit_cfg(tmp_path, "tip-adapter"))
    assert result["classifier"]["name"] == "single" and result["classifier"]["paper"] == "ensemble"
    [note] = [d for d in result["protocol"]["differences"] if d.startswith("classifier single")]
    assert "the store predates the ImageNet ensemble (tip-adapter's paper: ensemble)" in note
    assert "cacheclip extract --dataset imagenet" in note
    again = _extract(coop_root, tiny_loaded, tmp_path)  # the text is added; no image is encoded again
    assert again.text_updated and again.encoded == {}
    with st.open_store(imagenet_store) as s:
        assert s.classifiers == {"single": [0], "ensemble": list(range(1, 8))}


def _as_schema_2_with_one_template(path: Path) -> None:
    """Rewrite the text as stores before schema 3 held it: the single template, no names."""
    with h5py.File(path, "r+") as f:
        raw = f["text/per_template"][()]
        del f["text"]
        f.create_dataset("text/templates", data=np.array([SINGLE], dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("text/per_template", data=raw[:1], fletcher32=True)
        f.create_dataset("text/ensemble", data=raw[0], fletcher32=True)
        f.attrs["schema_version"] = 2


def test_named_classifiers_that_do_not_index_the_templates_are_refused(imagenet_store):
    with h5py.File(imagenet_store, "r+") as f:
        f["text"].attrs["classifiers"] = json.dumps({"single": [0], "ensemble": [1, 8]})
    with pytest.raises(StoreDamagedError, match="named text classifiers"):
        st.open_store(imagenet_store).close()


def test_a_templates_set_of_the_users_is_used_as_extracted(tiny_loaded, coop_root, tmp_path):
    path = _extract(coop_root, tiny_loaded, tmp_path, templates="imagenet80").store
    ds = load_dataset("imagenet", coop_root)
    with st.open_store(path) as s:
        assert len(s.templates) == 80 and s.classifiers["imagenet80"] == list(range(80))
        data = load_fit_data(s, ds.name, _fit_cfg(tmp_path, "tip-adapter"))
        assert data.text_classifier.rule == "--templates imagenet80" and len(data.templates) == 80
        explicit = load_fit_data(s, ds.name, _fit_cfg(tmp_path, "tip-adapter", classifier="ensemble"))
    assert explicit.templates == list(IMAGENET7)  # the 80 include the 7


def test_the_report_reads_older_results_with_each_methods_paper_classifier():
    """results/ cannot import fit/: its table for results that do not record ``classifier.paper``
    must agree with every registered method."""
    from cacheclip.fit.methods import get_method, list_methods
    from cacheclip.results.protocol import PAPER_IMAGENET_CLASSIFIER

    for name in list_methods():
        assert PAPER_IMAGENET_CLASSIFIER.get(name, "single") == get_method(name).paper_classifier, name
