"""The fit stage end to end on synthetic feature stores (no open_clip needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cacheclip.datasets.fewshot import needed_train_indices
from cacheclip.errors import ConfigError, MissingFeaturesError, UnknownNameError
from cacheclip.features import store as st
from cacheclip.features.models import ModelRef
from cacheclip.fit.methods.clip_adapter import ClipAdapterConfig
from cacheclip.fit.stage import FitConfig, fit_dataset
from cacheclip.results.runs import load_adapter

REF = ModelRef("synthetic", "none", None, None, None, False)
K, D, V = 5, 16, 3


def _features(labels: np.ndarray, centers: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    return (centers[labels] + noise * rng.standard_normal((len(labels), D))).astype(np.float32)


def make_store(
    cache: Path,
    dataset: str = "toy",
    *,
    per_class=(12, 6, 20),
    with_val: bool = True,
    train_subset: list[int] | None = None,
    seed: int = 0,
) -> Path:
    """A separable K-class problem whose text classifier is only weakly aligned with it."""
    rng = np.random.default_rng(seed)
    centers = 4 * rng.standard_normal((K, D))
    text = centers + 12 * rng.standard_normal((K, D))  # weak zero-shot
    listings, chunks = {}, []
    for split, n in zip(("train", "val", "test"), per_class, strict=False):
        if split == "val" and not with_val:
            listings[split] = st.SplitListing([], [])
            continue
        labels = np.repeat(np.arange(K), n)
        rng.shuffle(labels)
        listings[split] = st.SplitListing([f"{split}/c{y}/{i}.jpg" for i, y in enumerate(labels)], labels.tolist())
        keep = np.arange(len(labels)) if split != "train" or train_subset is None else np.array(train_subset)
        feats = _features(labels[keep], centers, rng, 1.5)
        aug = None
        if split == "train":
            aug = np.stack([_features(labels[keep], centers, rng, 2.0) for _ in range(V)], 1)
        chunks.append(st.Chunk(split, keep, feats, aug))
    path = st.store_path(cache, REF.model_id, REF.weights_id, dataset)
    for chunk in chunks:
        st.write_part(path, chunk)
    attrs = {
        "dataset": dataset,
        **REF.identity(),
        "logit_scale": 100.0,
        "dtype": "float32",
        "aug_views": V,
        "aug_scale": "[0.08, 1.0]",
        "templates_spec": "default",
    }
    st.commit(
        path,
        st.StoreContents(
            attrs,
            [f"class{k}" for k in range(K)],
            listings,
            ["a photo of a {}."],
            text[None].astype(np.float32),
            text.astype(np.float32),
        ),
        "float32",
    )
    return path


def small_cfg(tmp_path: Path, **kw) -> FitConfig:
    """CLIP-Adapter, 20 epochs; keywords that name ClipAdapterConfig fields go to the method."""
    method_kw = {"epochs": 20, **{k: kw.pop(k) for k in list(kw) if k in ClipAdapterConfig.__dataclass_fields__}}
    base = {"shots": (2, 4), "seeds": (1, 2), "cache_dir": str(tmp_path / "cache")}
    base["results_dir"] = str(tmp_path / "results")
    base.update(kw)
    if base.get("method", "clip-adapter") == "clip-adapter":
        base["method_config"] = ClipAdapterConfig(**method_kw)
    return FitConfig(**base)


def test_fit_beats_zero_shot_and_writes_results(tmp_path):
    make_store(tmp_path / "cache")
    cfg = small_cfg(tmp_path, shots=(4,), alphas=(0.6,), epochs=30, lr=0.05)
    results = fit_dataset("toy", REF, cfg)
    assert len(results) == 2
    for r in results:
        assert r["metrics"]["test"]["top1"] > r["zero_shot"]["test"]["top1"] + 15
        assert r["metrics"]["test"]["n"] == K * 20
        assert len(r["fewshot"]["train_paths"]) == K * 4 and len(r["fewshot"]["val_paths"]) == K * 4
        assert r["config"]["train"]["epochs"] == 30
        assert r["selection"]["on"] == "val"
        assert "epochs 30 (CoOp: 100)" in r["protocol"]["differences"]
        folder = next(Path(tmp_path / "results").rglob(f"4shot-seed{r['seed']}-*"))
        assert json.loads((folder / "result.json").read_text())["run_key"] == r["run_key"]
        state, class_weights, meta = load_adapter(folder / "adapter.safetensors")
        assert set(state) == {"visual.w1", "visual.w2"} and class_weights.shape == (K, D)
        assert meta["classnames"][0] == "class0" and meta["adapter"]["alpha"] == 0.6


def test_identical_runs_are_skipped_and_deterministic(tmp_path):
    make_store(tmp_path / "cache")
    cfg = small_cfg(tmp_path, shots=(2,))
    first = fit_dataset("toy", REF, cfg)
    mtimes = {p: p.stat().st_mtime_ns for p in Path(tmp_path / "results").rglob("result.json")}
    again = fit_dataset("toy", REF, cfg)
    assert [r["run_key"] for r in again] == [r["run_key"] for r in first]
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # skipped, not rewritten
    forced = fit_dataset("toy", REF, FitConfig(**{**cfg.__dict__, "force": True}))
    assert [r["metrics"] for r in forced] == [r["metrics"] for r in first]  # same numbers on CPU


def test_alpha_grid_is_chosen_on_val_only(tmp_path, monkeypatch):
    make_store(tmp_path / "cache")
    events = []
    real_read = st.FeatureStore.read

    def spy_read(self, split, indices=None, *, aug=False):
        events.append(("read", split))
        return real_read(self, split, indices, aug=aug)

    import cacheclip.fit.methods.clip_adapter as ca

    real_train = ca.train_runs

    def spy_train(*args, **kwargs):
        events.append(("train", None))
        return real_train(*args, **kwargs)

    monkeypatch.setattr(st.FeatureStore, "read", spy_read)
    monkeypatch.setattr(ca, "train_runs", spy_train)
    results = fit_dataset("toy", REF, small_cfg(tmp_path, alphas=(0.0, 0.5, 0.9)))
    # every test read comes after the training of its shot count, and before the next one trains
    assert events.index(("read", "test")) > events.index(("train", None))
    trains = [i for i, e in enumerate(events) if e[0] == "train"]
    tests = [i for i, e in enumerate(events) if e == ("read", "test")]
    assert len(trains) == len(tests) == 2 and trains[0] < tests[0] < trains[1] < tests[1]
    for r in results:
        scores = {c["alpha"]: c["val_top1"] for c in r["selection"]["candidates"]}
        assert r["selection"]["chosen"]["alpha"] == max(scores, key=lambda a: (scores[a], -list(scores).index(a)))


def test_alpha_zero_run_equals_zero_shot(tmp_path):
    make_store(tmp_path / "cache")
    [r] = fit_dataset("toy", REF, small_cfg(tmp_path, shots=(2,), seeds=(1,), alphas=(0.0,)))
    assert r["metrics"]["test"] == r["zero_shot"]["test"]


def test_missing_features_name_the_extract_command(tmp_path):
    labels_train = np.repeat(np.arange(K), 12)
    make_store(tmp_path / "cache", train_subset=list(range(3)))
    with pytest.raises(MissingFeaturesError) as err:
        fit_dataset("toy", REF, small_cfg(tmp_path), model_arg="M.json", pretrained_arg="w.pt")
    assert "have no features" in err.value.message
    assert err.value.hint.startswith("run: cacheclip extract --dataset toy --model M.json --pretrained w.pt")
    assert "--shots 2,4 --seeds 1,2" in err.value.hint
    assert len(needed_train_indices(labels_train.tolist(), [], (2, 4), (1, 2))) > 3
    with pytest.raises(MissingFeaturesError, match="does not exist"):
        fit_dataset("other", REF, small_cfg(tmp_path))


def test_no_val_dataset_needs_one_alpha_or_holdout(tmp_path):
    make_store(tmp_path / "cache", with_val=False)
    with pytest.raises(ConfigError, match="no few-shot val"):
        fit_dataset("toy", REF, small_cfg(tmp_path, alphas=(0.2, 0.4)))
    [r] = fit_dataset("toy", REF, small_cfg(tmp_path, shots=(2,), seeds=(1,)))
    assert r["selection"]["on"] == "none" and r["metrics"]["val"] is None
    [h] = fit_dataset("toy", REF, small_cfg(tmp_path, shots=(2,), seeds=(1,), alphas=(0.2, 0.4), no_val="holdout"))
    assert h["selection"]["on"] == "holdout" and h["fewshot"]["val_source"] == "holdout"
    assert not set(h["fewshot"]["val_paths"]) & set(h["fewshot"]["train_paths"])
    assert any("held out" in d for d in h["protocol"]["differences"])


def test_text_and_both_adapters_train(tmp_path):
    make_store(tmp_path / "cache")
    for kind in ("text", "both"):
        results = fit_dataset("toy", REF, small_cfg(tmp_path, shots=(4,), seeds=(1,), adapter=kind, betas=(0.3, 0.6)))
        assert results[0]["config"]["adapter"]["kind"] == kind
        assert {c["beta"] for c in results[0]["selection"]["candidates"]} == {0.3, 0.6}


def test_bad_config_is_rejected(tmp_path):
    make_store(tmp_path / "cache")
    with pytest.raises(UnknownNameError, match="unknown method"):
        fit_dataset("toy", REF, small_cfg(tmp_path, method="nope"))
    with pytest.raises(ConfigError):
        fit_dataset("toy", REF, small_cfg(tmp_path, alphas=(1.5,)))
    with pytest.raises(ConfigError):
        fit_dataset("toy", REF, small_cfg(tmp_path, no_val="maybe"))


def test_clean_views_when_store_has_no_augmentation(tmp_path):
    make_store(tmp_path / "cache")
    [r] = fit_dataset("toy", REF, small_cfg(tmp_path, shots=(2,), seeds=(1,), epochs=5, views="clean"))
    assert r["config"]["train_views"].startswith("the clean")
    assert torch.isfinite(torch.tensor(r["metrics"]["test"]["top1"]))
