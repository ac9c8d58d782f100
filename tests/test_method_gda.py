"""GDA: the math against numpy float64 written here from the reference's formulas (np.cov, pinv),
then the registered method through ``fit_dataset`` on synthetic stores."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from stores import REF, clustered, reads_while_training

from cacheclip.features import store as st
from cacheclip.fit.methods import gda
from cacheclip.fit.stage import FitConfig, fit_dataset
from cacheclip.results.runs import load_adapter


def unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def numpy_gda(x: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """W (K, D), b (K,) from the formulas: S = cov(x - mu_y), P = D pinv((M-1) S + tr(S) I)."""
    m, d = x.shape
    mu = np.stack([x[y == c].mean(axis=0) for c in range(k)])
    s = np.cov((x - mu[y]).T)  # (D, D), unbiased
    p = d * np.linalg.pinv((m - 1) * s + np.trace(s) * np.eye(d))
    w = np.stack([p @ mu[c] for c in range(k)])
    b = np.array([math.log(1.0 / k) - 0.5 * mu[c] @ p @ mu[c] for c in range(k)])
    return w, b


def small_case(seed: int = 0):
    rng = np.random.default_rng(seed)
    k, d = 3, 6
    y = np.repeat(np.arange(k), 4)  # 12 views, 4 per class
    x = unit(rng.normal(size=(k, d))[y] + 0.7 * rng.normal(size=(y.size, d)))
    return x, y, k, rng.normal(size=(5, d)) * 3.0, rng.normal(size=(k, d))  # + raw queries, text


def _t(*arrays):
    return [torch.from_numpy(a).float() if a.dtype.kind == "f" else torch.from_numpy(a) for a in arrays]


# ---------------------------------------------------------------- the math


def test_fit_and_logits_match_independent_numpy(monkeypatch):
    x, y, k, feats, text = small_case()
    w_ref, b_ref = numpy_gda(x, y, k)
    monkeypatch.setattr(gda, "ROWS", 5)  # the scatter over 3 row chunks
    fit = gda.fit_gda(*_t(x * 3.0, y), k)  # raw rows: normalised inside
    assert not fit.degenerate and fit.weight.dtype == fit.bias.dtype == torch.float32
    np.testing.assert_allclose(fit.weight.numpy(), w_ref, rtol=1e-5, atol=1e-5 * np.abs(w_ref).max())
    np.testing.assert_allclose(fit.bias.numpy(), b_ref, rtol=1e-5, atol=1e-5 * np.abs(b_ref).max())
    alpha = 0.37
    ref = 100.0 * unit(feats) @ unit(text).T + alpha * (unit(feats) @ w_ref.T + b_ref)
    out = gda.gda_logits(*_t(feats, text), 100.0, fit.weight, fit.bias, alpha)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-4)


def test_alpha_zero_is_exactly_zero_shot():
    x, y, k, feats, text = small_case(2)
    fit = gda.fit_gda(*_t(x, y), k)
    f, t = _t(feats, text)
    zero_shot = 100.0 * (F.normalize(f, dim=-1) @ F.normalize(t, dim=-1).t())
    assert torch.equal(gda.gda_logits(f, t, 100.0, fit.weight, fit.bias, 0.0), zero_shot)


def test_one_vector_per_class_is_degenerate_and_equals_pinv_of_zero():
    """1 shot, clean view: S = 0, pinv(0) = 0, so W = 0 and b = log(1/K), as numpy's pinv gives."""
    x, y, k, _, _ = small_case(3)
    first = [int(np.flatnonzero(y == c)[0]) for c in range(k)]
    w_ref, b_ref = numpy_gda(x[first], y[first], k)
    fit = gda.fit_gda(*_t(x[first], y[first]), k)
    assert fit.degenerate and torch.equal(fit.weight, torch.zeros_like(fit.weight))
    np.testing.assert_allclose(fit.weight.numpy(), w_ref, atol=1e-12)
    np.testing.assert_allclose(fit.bias.numpy(), b_ref, rtol=1e-6)
    with pytest.raises(ValueError):
        gda.fit_gda(*_t(x, y), k + 1)  # a class without support vectors


def test_official_values():
    assert gda.GDA_ALPHAS == (1e-4, 1e-3, 1e-2, 0.1, 1, 10, 100) and gda.GdaConfig().alphas == gda.GDA_ALPHAS
    assert gda.GDA_ALPHA_NO_VAL == 10.0 and gda.GDA_LOGIT_SCALE == 100.0 and gda.GDA_VIEWS == 10
    assert gda.candidate_alphas(gda.GdaConfig(), has_val=False) == [10.0]
    assert gda.candidate_alphas(gda.GdaConfig(alphas=(0.5,)), has_val=False) == [0.5]


# ---------------------------------------------------------------- the registered method


def _cfg(tmp_path: Path, **kw) -> FitConfig:
    base = {"method": "gda", "shots": (4,), "seeds": (1,)}
    base |= {"cache_dir": str(tmp_path / "cache"), "results_dir": str(tmp_path / "results")}
    return FitConfig(**{**base, **kw})


def _adapter(tmp_path: Path) -> dict:
    [path] = (tmp_path / "results").rglob("adapter.safetensors")
    return load_adapter(path)[0]


def test_fit_beats_zero_shot_with_alpha_chosen_on_val(tmp_path):
    path = clustered(tmp_path / "cache", templates=3)
    [result] = fit_dataset("eurosat", REF, _cfg(tmp_path))
    test, zs = result["metrics"]["test"]["top1"], result["zero_shot"]["test"]["top1"]
    assert test > zs + 20, (test, zs)
    sel = result["selection"]
    assert sel["on"] == "val" and [c["alpha"] for c in sel["candidates"]] == list(gda.GDA_ALPHAS)
    scores = [c["val_top1"] for c in sel["candidates"]]
    assert sel["chosen"] == {"alpha": gda.GDA_ALPHAS[scores.index(max(scores))]}  # the first best
    assert result["metrics"]["val"]["top1"] == max(scores)
    # the artifact is the discriminant of every cached view of the run's images, each normalised
    idx = sorted(int(p.split("/")[1].split(".")[0]) for p in result["fewshot"]["train_paths"])
    with st.open_store(path) as s:
        _, labels, views = s.read("train", idx, aug=True)  # (N, V, D)
    n, v, d = views.shape
    w_ref, b_ref = numpy_gda(unit(views.reshape(n * v, d).astype(np.float64)), np.repeat(labels, v), 6)
    tensors = _adapter(tmp_path)
    np.testing.assert_allclose(tensors["weight"].numpy(), w_ref, rtol=1e-4, atol=1e-4 * np.abs(w_ref).max())
    np.testing.assert_allclose(tensors["bias"].numpy(), b_ref, rtol=1e-4, atol=1e-4 * np.abs(b_ref).max())
    assert float(tensors["alpha"]) == sel["chosen"]["alpha"]


def test_selection_reads_train_and_val_never_test(tmp_path, monkeypatch):
    clustered(tmp_path / "cache")
    reads = reads_while_training(monkeypatch, "gda", lambda: fit_dataset("eurosat", REF, _cfg(tmp_path)))
    assert {s for s, during in reads if during} == {"train", "val"} and ("test", False) in reads


def test_same_seed_same_bits(tmp_path):
    clustered(tmp_path / "cache")
    cfg = _cfg(tmp_path)
    [first] = fit_dataset("eurosat", REF, cfg)
    a = _adapter(tmp_path)
    [again] = fit_dataset("eurosat", REF, dataclasses.replace(cfg, force=True))
    b = _adapter(tmp_path)
    assert again["metrics"] == first["metrics"] and again["selection"] == first["selection"]
    assert all(torch.equal(a[k], b[k]) for k in ("weight", "bias", "alpha"))


def test_one_shot_clean_view_is_zero_shot_and_says_so(tmp_path):
    clustered(tmp_path / "cache")
    [result] = fit_dataset("eurosat", REF, _cfg(tmp_path, shots=(1,), views="clean"))
    assert result["metrics"]["test"] == result["zero_shot"]["test"]
    assert result["selection"]["chosen"] == {"alpha": 0.0} and "degenerate" in result["selection"]["reason"]
    assert result["config"]["degenerate"] is True
    assert any("covariance is 0" in d for d in result["protocol"]["differences"])


def test_without_val_alpha_is_the_fixed_value(tmp_path):
    clustered(tmp_path / "cache", "imagenet", with_val=False, per_class=(6, 0, 5))
    [result] = fit_dataset("imagenet", REF, _cfg(tmp_path, shots=(2,)))
    sel = result["selection"]
    assert sel["on"] == "none" and sel["chosen"] == {"alpha": 10.0} and "test" in sel["reason"]
    assert any(d.startswith("alpha fixed without val: alpha = 10") for d in result["protocol"]["differences"])
