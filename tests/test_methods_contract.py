"""The contract every registered method keeps, parametrised over ``list_methods()``: a method is
tested here the moment it is registered, with its default settings."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from stores import REF, clustered

from cacheclip.errors import ConfigError
from cacheclip.features import store as st
from cacheclip.fit.methods import get_method, list_methods
from cacheclip.fit.stage import FitConfig, fit_dataset
from cacheclip.results.runs import load_adapter
from cacheclip.settings import settings_of

METHODS = list_methods()


def quick(method: str):
    """The method's defaults with its training length capped (any int setting named epochs or
    iters, or ending in _every, at most 20; an unset epochs policy, 20), so the contract stays
    fast for every method."""
    settings = get_method(method).config()
    capped = {
        f.name: 20
        for f in dataclasses.fields(settings)
        if (f.name in ("epochs", "iters") or f.name.endswith("_every"))
        and (getattr(settings, f.name) is None or getattr(settings, f.name) > 20)
    }
    return dataclasses.replace(settings, **capped)


def config(tmp_path, method: str, **kw) -> FitConfig:
    base = {"method": method, "method_config": quick(method), "shots": (2,), "seeds": (1,)}
    base |= {"cache_dir": str(tmp_path / "cache"), "results_dir": str(tmp_path / "results")}
    return FitConfig(**{**base, **kw})


def test_builtin_methods_are_registered():
    assert {"zero-shot", "clip-adapter", "linear-probe", "tip-adapter", "tip-adapter-f"} <= set(METHODS)


@pytest.mark.parametrize("method", METHODS)
def test_settings_are_declared_once_with_help_and_a_flag(method):
    m = get_method(method)
    assert dataclasses.is_dataclass(m.config) and m.config.__dataclass_params__.frozen
    assert m.summary and "(" in m.summary, "the summary names its source"
    fields = {f.name for f in dataclasses.fields(m.config)}
    settings = settings_of(m.config)
    assert set(settings) == fields, "every field is a setting (TOML key and option)"
    for name, (_, spec, _) in settings.items():
        assert spec.help and spec.flag and spec.flag.startswith("--"), f"{method}.{name}"
    m.validate(m.config())  # the defaults are valid


def test_a_flag_means_one_setting():
    owners: dict[str, set[str]] = {}
    for method in METHODS:
        for name, (_, spec, _) in settings_of(get_method(method).config).items():
            owners.setdefault(spec.flag, set()).add(name)
    shared = {flag: names for flag, names in owners.items() if len(names) > 1}
    assert not shared, f"one flag, several settings: {shared}"


@pytest.mark.parametrize("method", METHODS)
def test_fit_selects_on_val_reads_test_once_and_records_the_protocol(tmp_path, method, monkeypatch):
    clustered(tmp_path / "cache", templates=3)
    reads = []
    real_read = st.FeatureStore.read

    def spy_read(self, split, indices=None, *, aug=False):
        reads.append(split)
        return real_read(self, split, indices, aug=aug)

    monkeypatch.setattr(st.FeatureStore, "read", spy_read)
    [result] = fit_dataset("eurosat", REF, config(tmp_path, method))
    assert reads.count("test") == 1 and "train" not in reads[reads.index("test") :], reads  # after training
    assert result["method"] == method and result["selection"]["on"] in ("val", "none")
    assert result["metrics"]["val"] is not None and 0 <= result["metrics"]["test"]["top1"] <= 100
    assert isinstance(result["protocol"]["differences"], list)
    assert result["protocol"]["matches_paper"] == (not result["protocol"]["differences"])
    assert json.dumps(result)  # plain JSON, nothing opaque


@pytest.mark.parametrize("method", METHODS)
def test_reruns_are_skipped_and_forced_reruns_are_identical(tmp_path, method):
    clustered(tmp_path / "cache", templates=3)
    cfg = config(tmp_path, method)
    [first] = fit_dataset("eurosat", REF, cfg)
    [again] = fit_dataset("eurosat", REF, cfg)
    assert again["run_key"] == first["run_key"] and again["wall_time_s"] == first["wall_time_s"]
    [forced] = fit_dataset("eurosat", REF, dataclasses.replace(cfg, force=True))
    assert forced["metrics"] == first["metrics"] and forced["selection"]["chosen"] == first["selection"]["chosen"]


@pytest.mark.parametrize("method", [m for m in METHODS if get_method(m).from_artifact is not None])
def test_the_artifact_rebuilds_the_classifier(tmp_path, method):
    path = clustered(tmp_path / "cache", templates=3)
    [result] = fit_dataset("eurosat", REF, config(tmp_path, method))
    [folder] = {p.parent for p in (tmp_path / "results").rglob("result.json")}
    tensors, class_weights, meta = load_adapter(folder / result["adapter_file"])
    assert meta["method"] == method and meta["shots"] == 2 and meta["seed"] == 1
    predict = get_method(method).from_artifact(tensors, meta, class_weights, meta["logit_scale"], "cpu")
    with st.open_store(path) as store:
        feats, labels, _ = store.read("test")
    accuracy = (predict(torch.from_numpy(feats)).argmax(1).numpy() == labels).mean() * 100
    assert accuracy == pytest.approx(result["metrics"]["test"]["top1"], abs=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_without_val_nothing_is_chosen_on_test(tmp_path, method):
    """ImageNet has no few-shot val: the method keeps fixed values, or refuses clearly."""
    clustered(tmp_path / "cache", "imagenet", with_val=False, per_class=(6, 0, 5), templates=3)
    try:
        [result] = fit_dataset("imagenet", REF, config(tmp_path, method))
    except ConfigError as e:
        assert e.hint, "a refusal names the fix"
        return
    assert result["selection"]["on"] == "none" and result["metrics"]["val"] is None
    assert np.isfinite(result["metrics"]["test"]["top1"])
