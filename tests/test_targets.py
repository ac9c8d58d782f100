"""Issue 17: an ImageNet fit evaluated on ImageNet-V2 and -A (more than ten classes, so V2's
integer folders are live; A keeps a subset), checked against an independent computation from
the exported target features and the saved classifier."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from stores import REF, clustered

from cacheclip.errors import ConfigError, MissingFeaturesError, StoreMismatchError
from cacheclip.features import store as st
from cacheclip.features.export import export_split
from cacheclip.features.extract import ExtractConfig, extract_dataset
from cacheclip.fit.predict import load_run
from cacheclip.fit.stage import FitConfig, fit_dataset

CLASSES = 12


@pytest.fixture
def shift_data(tmp_path, make_data, tiny_loaded):
    for name in ("imagenet", "imagenet-v2", "imagenet-a"):
        make_data(name, n_classes=CLASSES, n_train=2, n_test=2)
    root = tmp_path / "data"
    cfg = ExtractConfig(
        cache_dir=str(tmp_path / "cache"), workers=0, batch_size=32, shots=(1,), seeds=(1,), aug_views=0
    )
    for name in ("imagenet", "imagenet-v2", "imagenet-a"):
        extract_dataset(name, root, tiny_loaded, cfg)
    return root, cfg


def _fit(tmp_path, tiny_loaded, **kw):
    cfg = FitConfig(
        method="linear-probe",
        shots=(1,),
        seeds=(1,),
        views="clean",
        cache_dir=str(tmp_path / "cache"),
        results_dir=str(tmp_path / "results"),
        targets=("imagenet-v2", "imagenet-a"),
    )
    return fit_dataset("imagenet", tiny_loaded.ref, replace(cfg, **kw))


def _wnids(root: Path) -> list[str]:
    return [line.split()[0] for line in (root / "imagenet" / "classnames.txt").read_text().splitlines()]


def test_target_top1_equals_an_independent_computation(tmp_path, shift_data, tiny_loaded):
    root, _ = shift_data
    [result] = _fit(tmp_path, tiny_loaded)
    run = load_run(next((tmp_path / "results").rglob("adapter.safetensors")))  # the saved classifier
    imagenet_wnids = sorted(_wnids(root))  # ImageNet's labels follow sorted wnids
    for name in ("imagenet-v2", "imagenet-a"):
        target_store = st.store_path(tmp_path / "cache", tiny_loaded.model_id, tiny_loaded.weights_id, name)
        export_split(target_store, "test", tmp_path / f"{name}.npz")
        data = np.load(tmp_path / f"{name}.npz")
        # the true ImageNet class of each image, from its path alone
        if name == "imagenet-v2":
            truth = [int(Path(p).parts[-2]) for p in data["paths"]]  # folder <i> is ImageNet's class i
            classes = list(range(len(imagenet_wnids)))
        else:
            wnids = [Path(p).parts[-2] for p in data["paths"]]
            classes = sorted({imagenet_wnids.index(w) for w in wnids})  # A's subset, ImageNet order
            truth = [imagenet_wnids.index(w) for w in wnids]
        logits = run.predict(torch.from_numpy(data["features"])).numpy()
        restricted = logits[:, classes]
        predicted = [classes[i] for i in restricted.argmax(1)]
        top1 = 100 * np.mean([p == t for p, t in zip(predicted, truth, strict=True)])
        got = result["metrics"]["targets"][name]
        assert got["top1"] == pytest.approx(top1) and got["n"] == len(truth)
        assert "top1" in result["zero_shot"]["targets"][name]
    assert len(classes) < CLASSES  # A really is a subset


def test_targets_are_read_only_after_selection(tmp_path, shift_data, tiny_loaded, monkeypatch):
    reads = []
    original = st.FeatureStore.read

    def spy(self, split, *args, **kwargs):
        reads.append((self.path.stem, split))
        return original(self, split, *args, **kwargs)

    monkeypatch.setattr(st.FeatureStore, "read", spy)
    _fit(tmp_path, tiny_loaded)
    first_target = min(i for i, (store, _) in enumerate(reads) if store != "imagenet")
    assert ("imagenet", "test") in reads[:first_target]  # the source's own test comes first: selection is done
    assert all(split == "test" for store, split in reads if store != "imagenet")


def test_a_finished_run_lacking_a_target_is_evaluated_not_refitted(tmp_path, shift_data, tiny_loaded):
    [first] = _fit(tmp_path, tiny_loaded, targets=("imagenet-v2",))
    [again] = _fit(tmp_path, tiny_loaded, targets=("imagenet-v2", "imagenet-a"))
    assert again["run_key"] == first["run_key"] and again["wall_time_s"] == first["wall_time_s"]
    assert set(again["metrics"]["targets"]) == {"imagenet-v2", "imagenet-a"}
    assert again["metrics"]["targets"]["imagenet-v2"] == first["metrics"]["targets"]["imagenet-v2"]


def test_missing_and_mismatched_targets_and_a_non_imagenet_source_are_refused(tmp_path, shift_data, tiny_loaded):
    with pytest.raises(MissingFeaturesError, match="no finished feature store for target imagenet-r") as e:
        _fit(tmp_path, tiny_loaded, targets=("imagenet-r",))
    assert "cacheclip extract --dataset imagenet-r" in e.value.hint
    path = st.store_path(tmp_path / "cache", tiny_loaded.model_id, tiny_loaded.weights_id, "imagenet-a")
    with h5py.File(path, "r+") as f:
        f.attrs["preprocess"] = '{"protocol": "coop-2021"}'
    with pytest.raises(StoreMismatchError, match="preprocess"):
        _fit(tmp_path, tiny_loaded, targets=("imagenet-a",))
    clustered(tmp_path / "c2", "eurosat")
    with pytest.raises(ConfigError, match="is not ImageNet"):
        fit_dataset(
            "eurosat",
            REF,
            FitConfig(
                shots=(1,),
                seeds=(1,),
                cache_dir=str(tmp_path / "c2"),
                results_dir=str(tmp_path / "r2"),
                targets=("imagenet-a",),
            ),
        )


def test_cli_fit_with_the_shift_group_names_the_missing_extract(tmp_path, shift_data, tiny_clip, cli):
    args = ["fit", "-d", "imagenet", "--method", "zero-shot", "--shots", "1", "--seeds", "1"]
    args += ["-m", tiny_clip[0], "-p", tiny_clip[1], "--cache-dir", tmp_path / "cache", "--results-dir", tmp_path / "r"]
    code, _, err = cli(*args, "--targets", "imagenet-shift")
    assert code == 1 and "target imagenet-sketch" in err and "cacheclip extract --dataset imagenet-sketch" in err
    assert "unexpected" not in err
    code, out, err = cli(*args, "--targets", "imagenet-v2,imagenet-a")
    assert code == 0, err


def test_a_test_only_set_cannot_be_fitted(tmp_path, shift_data, tiny_loaded):
    cfg = FitConfig(shots=(1,), seeds=(1,), cache_dir=str(tmp_path / "cache"), results_dir=str(tmp_path / "r"))
    with pytest.raises(ConfigError, match="imagenet-a is a test-only set") as e:
        fit_dataset("imagenet-a", tiny_loaded.ref, cfg)
    assert "--targets imagenet-a" in e.value.hint


def test_the_report_shows_the_fitted_targets(tmp_path, shift_data, tiny_loaded):
    from cacheclip.results.write import write_report

    [result] = _fit(tmp_path, tiny_loaded)
    paths = write_report([tmp_path / "results"], tmp_path / "report")
    markdown = paths["md"].read_text("utf-8")
    assert "Distribution shift" in markdown
    a_top1 = f"{result['metrics']['targets']['imagenet-a']['top1']:.2f}"
    assert a_top1 in markdown or f"{float(a_top1):.1f}" in markdown
