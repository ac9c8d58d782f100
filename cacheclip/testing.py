"""What a method's own test suite needs, public: a synthetic feature store and the method contract tests.

A plugin's tests check it against the contract every built-in method keeps with one line::

    from cacheclip.testing import method_contract_tests

    TestMyMethod = method_contract_tests("my-method")

(the name must start with ``Test`` for pytest to collect it). The stores are written through the
real store code from generated arrays: no model, no images, no network.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cacheclip.errors import ConfigError
from cacheclip.features import store as st
from cacheclip.features.models import resolve_model
from cacheclip.fit.methods import CONTRACT_VERSION, broken_plugins, builtin_methods, get_method, list_methods
from cacheclip.fit.stage import FitConfig, fit_dataset
from cacheclip.results.runs import load_adapter
from cacheclip.settings import settings_of

__all__ = ["D", "K", "REF", "V", "MethodContract", "clustered", "method_contract_tests", "quick", "write_store"]

REF = resolve_model("RN50", "none")  # what `--model RN50 --pretrained none` names: no weights needed
K, D, V = 6, 32, 3


def write_store(
    cache: Path, dataset: str, text: np.ndarray, splits: dict, aug_scale=(0.08, 1.0), templates: int = 1
) -> Path:
    """A committed store from arrays: splits maps name -> (features (N, D), labels (N,), aug (N, V, D) | None).
    ``templates`` > 1 gives each extra template the text embeddings plus a little noise."""
    path = st.store_path(cache, REF.model_id, REF.weights_id, dataset)
    listings = {}
    for name in ("train", "val", "test"):
        feats, labels, aug = splits.get(name, (None, np.zeros(0, np.int64), None))
        listings[name] = st.SplitListing([f"{name}/{i}.jpg" for i in range(len(labels))], list(map(int, labels)))
        if feats is not None and len(labels):
            st.write_part(
                path,
                st.Chunk(
                    name,
                    np.arange(len(labels)),
                    feats.astype(np.float32),
                    None if aug is None else aug.astype(np.float32),
                ),
            )
    views = next(iter(a.shape[1] for _, _, a in splits.values() if a is not None), 0)
    attrs = {
        "dataset": dataset,
        **REF.identity(),
        "logit_scale": 100.0,
        "dtype": "float32",
        "aug_views": views,
        "aug_scale": json.dumps(list(aug_scale)),
        "templates_spec": "default",
    }
    classnames = [f"class {k}" for k in range(text.shape[0])]
    rng = np.random.default_rng(len(classnames))
    per_template = np.stack([text] + [text + 0.1 * rng.standard_normal(text.shape) for _ in range(templates - 1)])
    unit = per_template / np.linalg.norm(per_template, axis=-1, keepdims=True)
    ensemble = unit.mean(0) / np.linalg.norm(unit.mean(0), axis=-1, keepdims=True)
    names = ["a photo of a {}."] + [f"template {t} of a {{}}." for t in range(1, templates)]
    single = templates == 1
    st.commit(
        path,
        st.StoreContents(
            attrs,
            classnames,
            listings,
            names,
            per_template.astype(np.float32),
            (text if single else ensemble).astype(np.float32),
        ),
        "float32",
    )
    return path


def clustered(
    cache: Path,
    dataset: str = "eurosat",
    *,
    per_class=(10, 5, 20),
    with_val=True,
    views=V,
    text_noise=3.0,
    seed=0,
    aug_scale=(0.08, 1.0),
    templates=1,
    classes=K,
) -> Path:
    """``classes`` Gaussian clusters on a shared direction (CLIP-like: all cosines high), raw norms
    2-4; the text classifier is the cluster centres plus noise, so zero-shot is weak."""
    rng = np.random.default_rng(seed)
    common = rng.standard_normal(D)
    centers = common + 0.8 * rng.standard_normal((classes, D))
    splits = {}
    for name, n in zip(("train", "val", "test"), per_class, strict=False):
        if name == "val" and not with_val:
            continue
        labels = np.repeat(np.arange(classes), n)
        feats = (centers[labels] + 0.5 * rng.standard_normal((len(labels), D))) * rng.uniform(2, 4, (len(labels), 1))
        aug = None
        if name == "train" and views:
            aug = feats[:, None] + 0.3 * rng.standard_normal((len(labels), views, D))
        splits[name] = (feats, labels, aug)
    text = centers + text_noise * rng.standard_normal((classes, D))
    return write_store(cache, dataset, text, splits, aug_scale, templates)


# ---------------------------------------------------------------- the method contract


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


def contract_config(tmp_path: Path, method: str, **kw) -> FitConfig:
    """A 2-shot, one-seed fit of ``method`` (``quick`` settings) into ``tmp_path``."""
    base = {"method": method, "method_config": quick(method), "shots": (2,), "seeds": (1,)}
    base |= {"cache_dir": str(tmp_path / "cache"), "results_dir": str(tmp_path / "results")}
    return FitConfig(**{**base, **kw})


class MethodContract:
    """The contract every method keeps, for the method named by the ``method`` fixture (a subclass
    gives it: ``method_contract_tests`` for one method, the built-in suite for each of its own)."""

    def test_is_registered_and_keeps_this_contract(self, method):
        problems = [b.problem for b in broken_plugins() if b.plugin.name == method]
        assert not problems, f"{method}: {problems[0]}"
        assert method in list_methods()
        stated = get_method(method).contract
        assert stated in (None, CONTRACT_VERSION) and (stated is None) == (method in builtin_methods())

    def test_settings_are_declared_with_help_and_a_flag(self, method):
        m = get_method(method)
        assert dataclasses.is_dataclass(m.config) and m.config.__dataclass_params__.frozen
        assert m.summary and "(" in m.summary, "the summary names its source, e.g. 'Nearest mean (Doe 2025)'"
        fields = {f.name for f in dataclasses.fields(m.config)}
        settings = settings_of(m.config)
        assert set(settings) == fields, "every field is a setting (TOML key and option)"
        for name, (_, spec, _) in settings.items():
            assert spec.help and spec.flag and spec.flag.startswith("--"), f"{method}.{name}"
        m.validate(m.config())  # the defaults are valid

    def test_selects_on_val_and_reads_test_once_after_training(self, tmp_path, method, monkeypatch):
        clustered(tmp_path / "cache", templates=3)
        reads = []
        real_read = st.FeatureStore.read

        def spy_read(self, split, indices=None, *, aug=False):
            reads.append(split)
            return real_read(self, split, indices, aug=aug)

        monkeypatch.setattr(st.FeatureStore, "read", spy_read)
        [result] = fit_dataset("eurosat", REF, contract_config(tmp_path, method))
        assert reads.count("test") == 1 and "train" not in reads[reads.index("test") :], reads  # after training
        assert result["method"] == method and result["selection"]["on"] in ("val", "none")
        assert result["metrics"]["val"] is not None and 0 <= result["metrics"]["test"]["top1"] <= 100
        assert isinstance(result["protocol"]["differences"], list)
        assert result["protocol"]["matches_paper"] == (not result["protocol"]["differences"])
        assert json.dumps(result)  # plain JSON, nothing opaque

    def test_reruns_are_skipped_and_forced_reruns_are_identical(self, tmp_path, method):
        clustered(tmp_path / "cache", templates=3)
        cfg = contract_config(tmp_path, method)
        [first] = fit_dataset("eurosat", REF, cfg)
        [again] = fit_dataset("eurosat", REF, cfg)
        assert again["run_key"] == first["run_key"] and again["wall_time_s"] == first["wall_time_s"]
        [forced] = fit_dataset("eurosat", REF, dataclasses.replace(cfg, force=True))
        assert forced["metrics"] == first["metrics"] and forced["selection"]["chosen"] == first["selection"]["chosen"]

    def test_the_artifact_rebuilds_the_recorded_accuracy(self, tmp_path, method):
        m = get_method(method)
        if m.from_artifact is None:
            pytest.skip(f"{method} saves no artifact (Method.from_artifact is None): nothing to rebuild")
        path = clustered(tmp_path / "cache", templates=3)
        [result] = fit_dataset("eurosat", REF, contract_config(tmp_path, method))
        [folder] = {p.parent for p in (tmp_path / "results").rglob("result.json")}
        tensors, class_weights, meta = load_adapter(folder / result["adapter_file"])
        assert meta["method"] == method and meta["shots"] == 2 and meta["seed"] == 1
        predict = m.from_artifact(tensors, meta, class_weights, meta["logit_scale"], "cpu")
        with st.open_store(path) as store:
            feats, labels, _ = store.read("test")
        accuracy = (predict(torch.from_numpy(feats)).argmax(1).numpy() == labels).mean() * 100
        assert accuracy == pytest.approx(result["metrics"]["test"]["top1"], abs=1e-6)

    def test_without_val_nothing_is_chosen_on_test(self, tmp_path, method):
        """ImageNet has no few-shot val: the method keeps fixed values, or refuses clearly."""
        clustered(tmp_path / "cache", "imagenet", with_val=False, per_class=(6, 0, 5), templates=3)
        try:
            [result] = fit_dataset("imagenet", REF, contract_config(tmp_path, method))
        except ConfigError as e:
            assert e.hint, "a refusal names the fix"
            return
        assert result["selection"]["on"] == "none" and result["metrics"]["val"] is None
        assert np.isfinite(result["metrics"]["test"]["top1"])

    def test_base_to_new_records_its_rule_or_refuses(self, tmp_path, method):
        """fit --classes base-to-new: the method's rule recorded, base and new scored on their own
        classes (an odd class count: 3 base, 2 new of 5); a method without a rule refuses clearly."""
        clustered(tmp_path / "cache", classes=5, templates=3)
        cfg = contract_config(tmp_path, method, classes="base-to-new")
        rule = get_method(method).new_classes
        if rule is None:
            with pytest.raises(ConfigError) as refused:
                fit_dataset("eurosat", REF, cfg)
            assert refused.value.hint, "a refusal names the fix"
            return
        [result] = fit_dataset("eurosat", REF, cfg)
        assert result["classes"]["new_class_rule"] == rule.rule
        assert len(result["classes"]["base"]) == 3 and len(result["classes"]["new"]) == 2
        for half in ("base", "new"):
            assert 0 <= result["metrics"][half]["top1"] <= 100 and result["metrics"][half]["n"] > 0
        assert "test" not in result["metrics"] and json.dumps(result)


def method_contract_tests(name: str) -> type:
    """The contract tests for method ``name``, as a test class: assign it to a name starting with
    ``Test`` in a test module (``TestMine = method_contract_tests("mine")``)."""

    @pytest.fixture
    def method(self) -> str:
        return name

    return type(f"TestContract_{name}", (MethodContract,), {"method": method, "__module__": __name__})
