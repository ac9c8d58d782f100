"""`cacheclip predict`: a fitted run classifies new images as the fit scored them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cacheclip.errors import ModelLoadError, StoreError
from cacheclip.features.extract import ExtractConfig, extract_dataset
from cacheclip.features.store import open_store
from cacheclip.fit.methods.clip_adapter import ClipAdapterConfig
from cacheclip.fit.predict import classify, list_images, load_model_for, load_run
from cacheclip.fit.stage import FitConfig, fit_dataset

CLI = [sys.executable, "-m", "cacheclip"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, tiny_clip, tiny_loaded):
    tmp = tmp_path_factory.mktemp("predict")
    from cacheclip.datasets.synthetic import make_dataset

    make_dataset("eurosat", tmp / "data", n_classes=3, n_train=4, n_val=2, n_test=3)
    cfg = ExtractConfig(cache_dir=str(tmp / "cache"), dtype="float32", aug_views=2, shots=(2,), seeds=(1,), workers=0)
    summary = extract_dataset("eurosat", tmp / "data", tiny_loaded, cfg)
    [result] = fit_dataset(
        "eurosat",
        tiny_loaded.ref,
        FitConfig(
            shots=(2,),
            seeds=(1,),
            method_config=ClipAdapterConfig(alphas=(0.5,), epochs=3),
            cache_dir=str(tmp / "cache"),
            results_dir=str(tmp / "results"),
        ),
    )
    folder = next((tmp / "results").rglob("2shot-seed1-*"))
    return tmp, summary.store, folder, result


def test_predict_matches_the_fit_on_test_images(fitted, tiny_loaded):
    tmp, store_path, folder, result = fitted
    run = load_run(folder)
    with open_store(store_path) as store:
        feats, labels, _ = store.read("test")
        paths = store.listing("test").paths
        root = Path(store.attrs["image_root"])
    expected = run.predict(torch.from_numpy(feats)).argmax(-1)
    preds = classify(run, tiny_loaded, [root / p for p in paths], top_k=3)
    got = [run.classnames.index(p["top"][0]["class"]) for p in preds]
    assert got == expected.tolist()
    accuracy = 100 * sum(g == y for g, y in zip(got, labels.tolist(), strict=False)) / len(got)
    assert accuracy == pytest.approx(result["metrics"]["test"]["top1"])
    assert all(abs(sum(t["prob"] for t in p["top"]) - 1) < 1e-5 for p in preds)  # 3 classes, top-3


def test_run_rebuilds_its_model_from_the_adapter_file(fitted):
    _, _, folder, _ = fitted
    run = load_run(folder / "result.json")
    loaded = load_model_for(run)
    assert loaded.ref.weights_sha256 == run.model["weights_sha256"]


def test_moved_checkpoint_and_wrong_model_are_clear_errors(fitted, tiny_clip_rn):
    _, _, folder, _ = fitted
    run = load_run(folder)
    moved = dict(run.model, checkpoint_path="/nowhere/model.pt")
    with pytest.raises(ModelLoadError, match="not here"):
        load_model_for(type(run)(run.folder, run.method, run.classnames, run.predict, moved))
    with pytest.raises(ModelLoadError, match="not the one the run was trained on"):
        load_model_for(run, str(tiny_clip_rn[0]), str(tiny_clip_rn[1]))
    with pytest.raises(StoreError, match="no adapter file"):
        load_run(folder.parent)


def test_cli_predict_json_and_folder(fitted):
    tmp, _, folder, _ = fitted
    images = tmp / "data" / "eurosat" / "2750"
    out = subprocess.run(
        [*CLI, "predict", "--run", str(folder), str(images), "--top-k", "2", "--json"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
    )
    assert out.returncode == 0, out.stderr
    predictions = json.loads(out.stdout)
    assert len(predictions) == len(list_images([images])) and len(predictions[0]["top"]) == 2
    bad = subprocess.run(
        [*CLI, "predict", "--run", str(folder), str(tmp / "missing.jpg")],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
    )
    assert bad.returncode == 1 and "error: no such image or folder" in bad.stderr
    assert "Traceback" not in bad.stderr
