"""`--protocol official`: each method as its paper ran it, never choosing on test. Tip-Adapter(-F):
the whole val split and the dataset's config (grid, Tip-F's init, epochs, lr); CLIP-Adapter: the
fixed ratio 0.2; every result records the protocol and its departures, and the run key differs."""

from __future__ import annotations

import dataclasses

import pytest
from stores import REF, clustered, store_reads

from cacheclip.errors import ConfigError
from cacheclip.fit.methods import get_method
from cacheclip.fit.stage import FitConfig, fit_dataset

VAL_PER_CLASS, K = 5, 6  # clustered()'s default val size and classes

# Tip-Adapter's configs/dtd.yaml (gaopengcuhk/Tip-Adapter@4e29134): search_scale [13, 13], search_step
# [200, 20], init_alpha 2, init_beta 1, lr 0.001, train_epoch 20; imagenet.yaml: [7, 3], init_alpha 1.17.
DTD_BETAS = [0.1 + i * 12.9 / 200 for i in range(200)]
DTD_ALPHAS = [0.1 + i * 12.9 / 20 for i in range(20)]
IMAGENET_BETAS = [0.1 + i * 6.9 / 200 for i in range(200)]
IMAGENET_ALPHAS = [0.1 + i * 2.9 / 20 for i in range(20)]


def _cfg(tmp_path, method, settings=None, **fit_kw):
    config = get_method(method).config(**(settings or {}))
    base = {"shots": (2,), "seeds": (1,), "cache_dir": str(tmp_path / "cache"), "results_dir": str(tmp_path / "r")}
    return FitConfig(method=method, method_config=config, **{**base, **fit_kw})


def _val_reads_while_training(monkeypatch, method, fit) -> list[list[int]]:
    """The val indices each store read asked for while ``method`` trained."""
    reads = store_reads(monkeypatch, method, fit)
    return [sorted(int(i) for i in indices) for split, training, indices in reads if split == "val" and training]


@pytest.mark.parametrize("method", ["tip-adapter", "gda", "proker"])
def test_official_selects_on_the_whole_val_split(tmp_path, monkeypatch, method):
    clustered(tmp_path / "cache", "dtd")
    whole = list(range(K * VAL_PER_CLASS))
    official = _val_reads_while_training(
        monkeypatch, method, lambda: fit_dataset("dtd", REF, _cfg(tmp_path, method, protocol="official"))
    )
    fewshot = _val_reads_while_training(monkeypatch, method, lambda: fit_dataset("dtd", REF, _cfg(tmp_path, method)))
    assert official == [whole]
    assert len(fewshot) == 1 and len(fewshot[0]) == K * 2  # min(shots, 4) = 2 per class
    [result] = fit_dataset("dtd", REF, _cfg(tmp_path, method, protocol="official"))  # read back
    assert result["selection"]["on"] == "full val split"
    assert result["metrics"]["val"]["n"] == len(whole)
    assert result["zero_shot"]["val"]["n"] == len(whole)  # zero-shot scored on the same val
    assert result["fewshot"]["val_paths"] == f"all {len(whole)} images of the val split"


def test_lpp_official_chooses_on_k_val_images_per_class(tmp_path, monkeypatch):
    """LP++ picks its epoch on K val images per class (ours: min(K, 4)): 8 at 8 shots."""
    clustered(tmp_path / "cache", "dtd", per_class=(10, 12, 20))
    small = {"epochs": 20}

    def fit(**kw):
        return fit_dataset("dtd", REF, _cfg(tmp_path, "lp++", small, shots=(8,), **kw))

    official = _val_reads_while_training(monkeypatch, "lp++", lambda: fit(protocol="official"))
    fewshot = _val_reads_while_training(monkeypatch, "lp++", fit)
    labels = [i // 12 for i in official[0]]
    assert len(official) == 1 and all(labels.count(k) == 8 for k in range(K))
    assert len(fewshot) == 1 and len(fewshot[0]) == 4 * K
    [result] = fit(protocol="official")  # read back
    assert result["fewshot"]["val_source"] == "8 val images per class"
    assert len(result["fewshot"]["val_paths"]) == 8 * K and result["metrics"]["val"]["n"] == 8 * K
    assert result["zero_shot"]["val"]["n"] == 8 * K
    assert not any("per class" in d for d in result["protocol"]["differences"])


def test_tip_official_searches_the_dataset_grid(tmp_path):
    clustered(tmp_path / "cache", "dtd")
    [result] = fit_dataset("dtd", REF, _cfg(tmp_path, "tip-adapter", protocol="official"))
    grid = result["selection"]["candidates"]
    assert grid["beta"] == pytest.approx(DTD_BETAS) and grid["alpha"] == pytest.approx(DTD_ALPHAS)
    assert len(result["selection"]["val_top1"]) == 200 and len(result["selection"]["val_top1"][0]) == 20
    diffs = result["protocol"]["differences"]
    assert not any("grid" in d or "few-shot val" in d for d in diffs), diffs
    assert result["protocol"]["name"] == "official" and result["config"]["protocol"] == "official"


def test_tip_f_official_trains_with_the_dataset_config(tmp_path):
    clustered(tmp_path / "cache", "dtd")
    small = {"epochs": 3, "lr": 0.01, "init": (1.0, 1.0)}  # all replaced by dtd.yaml's values
    [result] = fit_dataset("dtd", REF, _cfg(tmp_path, "tip-adapter-f", small, protocol="official"))
    finetune = result["config"]["finetune"]
    assert finetune["epochs"] == 20 and finetune["lr"] == 0.001 and finetune["train_alpha_beta"] == [2, 1]
    assert not any("epochs" in d or "trained with alpha" in d for d in result["protocol"]["differences"])
    assert any("best epoch on test" in d for d in result["protocol"]["differences"])


def test_tip_official_on_imagenet_never_follows_its_test_search(tmp_path):
    clustered(tmp_path / "cache", "imagenet", with_val=False)
    [fixed] = fit_dataset("imagenet", REF, _cfg(tmp_path, "tip-adapter", protocol="official"))
    assert fixed["selection"]["chosen"] == {"alpha": 1.17, "beta": 1.0}  # imagenet.yaml's init values
    assert any("searched on test" in d for d in fixed["protocol"]["differences"])
    [held] = fit_dataset("imagenet", REF, _cfg(tmp_path, "tip-adapter", protocol="official", no_val="holdout"))
    grid = held["selection"]["candidates"]
    assert grid["beta"] == pytest.approx(IMAGENET_BETAS) and grid["alpha"] == pytest.approx(IMAGENET_ALPHAS)
    assert held["selection"]["on"] == "holdout"
    assert any("held out from train" in d and "on test" in d for d in held["protocol"]["differences"])


def test_clip_adapter_official_uses_the_fixed_ratio_without_selection(tmp_path):
    clustered(tmp_path / "cache")
    grid = {"alphas": (0.1, 0.6), "epochs": 3, "batch_size": 8}
    [ours] = fit_dataset("eurosat", REF, _cfg(tmp_path, "clip-adapter", grid))
    [official] = fit_dataset("eurosat", REF, _cfg(tmp_path, "clip-adapter", grid, protocol="official"))
    assert len(ours["selection"]["candidates"]) == 2 and ours["selection"]["on"] == "val"
    assert official["selection"]["on"] == "none" and official["selection"]["candidates"] == [{"alpha": 0.2}]
    assert official["config"]["chosen"]["alpha"] == 0.2 and official["config"]["alphas"] == [0.2]
    assert not any("alpha from" in d for d in official["protocol"]["differences"])
    assert any("alpha from" in d for d in ours["protocol"]["differences"])
    assert ours["protocol"]["name"] == "fewshot" and official["protocol"]["name"] == "official"
    assert ours["run_key"] != official["run_key"]


def test_unknown_protocol_is_refused():
    with pytest.raises(ConfigError, match="--protocol"):
        dataclasses.replace(FitConfig(), protocol="paper").validate()
