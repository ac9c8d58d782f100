"""ProKeR: the coefficients against numpy direct solves of the reference's formula (both solver
paths), the logits, the grid scorer, the memory estimate and guard, then the registered method
through ``fit_dataset`` on synthetic stores."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from stores import REF, clustered, reads_while_training

from cacheclip.errors import ConfigError
from cacheclip.features import store as st
from cacheclip.fit.methods import proker as pk
from cacheclip.fit.stage import FitConfig, fit_dataset
from cacheclip.results.runs import load_adapter


def unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def numpy_coef(x, y, text, beta, lam):
    """A = (K_SS / lam + I)^-1 (Y - f0(X)) by a direct solve, float64."""
    x, t = unit(x), unit(text)
    gram = np.exp(-beta * (1.0 - x @ x.T))
    return np.linalg.solve(gram / lam + np.eye(len(x)), np.eye(len(t))[y] - x @ t.T)


def numpy_logits(feats, x, coef, text, beta):
    f, x, t = unit(feats), unit(x), unit(text)
    return f @ t.T + np.exp(-beta * (1.0 - f @ x.T)) @ coef


def small_case(seed: int = 0):
    rng = np.random.default_rng(seed)
    k, d = 3, 6
    y = np.repeat(np.arange(k), 4)  # 12 support vectors
    x = unit(rng.normal(size=(k, d))[y] + 0.6 * rng.normal(size=(y.size, d)))
    return x, y, rng.normal(size=(7, d)) * 2.0, rng.normal(size=(k, d))  # + raw queries, text


def _t(*arrays):
    return [torch.from_numpy(a).float() if a.dtype.kind == "f" else torch.from_numpy(a) for a in arrays]


def _path(x, y, text, beta, lambdas):
    """A(lambda) for each lambda through the module's solver (its path set by len(lambdas))."""
    x64 = F.normalize(torch.from_numpy(x), dim=-1)
    t64 = F.normalize(torch.from_numpy(text), dim=-1)
    residual = F.one_hot(torch.from_numpy(y), len(text)).double() - x64 @ t64.t()
    return list(pk.coefficient_path(pk.kernel(x64, x64, beta), residual, lambdas))


# ---------------------------------------------------------------- the math


@pytest.mark.parametrize("eigen", [False, True])
def test_both_solvers_match_direct_solves(eigen, monkeypatch):
    monkeypatch.setattr(pk, "eigh_pays", lambda m, lambdas: eigen)
    x, y, _, text = small_case()
    lambdas, beta = (0.001, 0.05, 1.0, 10.0), 2.0
    gram, residual = np.exp(-beta * (1.0 - x @ x.T)), np.eye(3)[y] - x @ unit(text).T
    for lam, coef in zip(lambdas, _path(x, y, text, beta, lambdas), strict=True):
        assert coef.dtype == torch.float64
        np.testing.assert_allclose(coef.numpy(), numpy_coef(x, y, text, beta, lam), rtol=1e-8, atol=1e-10)
        # the reference's lambda is not a plain ridge: (K/lam + I)^-1 = lam (K + lam I)^-1
        ridge = lam * np.linalg.solve(gram + lam * np.eye(len(x)), residual)
        np.testing.assert_allclose(coef.numpy(), ridge, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("eigen", [False, True])
def test_lambda_zero_is_exactly_zero_shot(eigen, monkeypatch):
    monkeypatch.setattr(pk, "eigh_pays", lambda m, lambdas: eigen)
    x, y, feats, text = small_case(2)
    coef = _path(x, y, text, 1.0, [0.0, 0.5])[0].float()
    assert torch.equal(coef, torch.zeros_like(coef))
    f, xs, t = _t(feats, x, text)
    t = F.normalize(t, dim=-1)
    assert torch.equal(pk.proker_logits(f, xs, coef, t, 1.0), F.normalize(f, dim=-1) @ t.t())


def test_logits_match_independent_numpy_in_any_chunks(monkeypatch):
    x, y, feats, text = small_case(1)
    beta, lam = 3.0, 0.3
    coef = _path(x, y, text, beta, [lam])[0].float()
    f, xs, t = _t(feats, x, text)
    out = pk.proker_logits(f, xs, coef, F.normalize(t, dim=-1), beta)
    ref = numpy_logits(feats, x, numpy_coef(x, y, text, beta, lam), text, beta)
    assert out.shape == ref.shape and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(pk, "ROW_BYTES", 4 * len(x) * 2)  # 2 query rows per chunk
    assert pk.chunk_rows(len(x)) == 2
    chunked = pk.proker_logits(f, xs, coef, F.normalize(t, dim=-1), beta)
    np.testing.assert_allclose(chunked.numpy(), out.numpy(), rtol=1e-6, atol=1e-7)  # a row's sums may round apart


def test_grid_scores_are_proker_logits_and_ties_go_first():
    x, y, _, text = small_case(4)
    rng = np.random.default_rng(4)
    val = _t(rng.normal(size=(25, 6)), rng.integers(0, 3, 25))
    xs, ys, t = _t(x * 2.0, y, text)
    t = F.normalize(t, dim=-1)
    betas, lambdas = [0.5, 2.0, 6.0], [0.0, 0.01, 1.0]
    fit = pk.fit_grid(xs, ys, t, betas, lambdas, val)
    flat = [s for row in fit.scores for s in row]
    for i, beta in enumerate(betas):
        for j, coef in enumerate(_path(x, y, text, beta, lambdas)):
            pred = pk.proker_logits(val[0], fit.support, coef.float(), t, beta).argmax(1)
            assert fit.scores[i][j] == pytest.approx(pred.eq(val[1]).double().mean().item() * 100)
    first = flat.index(max(flat))  # beta-major, the first maximum
    assert (fit.beta, fit.lam) == (betas[first // 3], lambdas[first % 3])
    best = pk.proker_logits(val[0], fit.support, fit.coef, t, fit.beta).argmax(1).eq(val[1]).double().mean()
    assert best.item() * 100 == pytest.approx(max(flat))


def test_official_grids_and_fixed_values():
    betas, lambdas = pk.official_grid("dtd")
    assert len(betas) == 20 and len(lambdas) == 100 and (betas[0], lambdas[-1]) == pytest.approx((0.1, 10.0))
    assert [len(g) for g in pk.official_grid("oxford_pets")] == [40, 20]
    assert pk.official_grid("imagefolder:/photos") == pk.official_grid("caltech101")  # the generic grid
    cfg = pk.ProkerConfig()
    assert pk.fixed_values(cfg, 16)[:2] == (1.7, 0.1) and pk.fixed_values(cfg, 3)[:2] == (2.6, 0.05)
    assert pk.fixed_values(pk.ProkerConfig(betas=(2.0,), lambdas=(0.2,)), 16) == (2.0, 0.2, "as given")


@pytest.mark.parametrize(
    ("m", "lambdas", "eigen"),
    [
        (500, 10, False),  # the 5-10 lambda grids: Cholesky at every size
        (16_000, 10, False),  # ImageNet 16-shot
        (500, 20, True),  # Pets' 20 lambdas: the eigen sweep while M is small ...
        (5_920, 20, False),  # ... Cholesky at 16 shots x 10 views (the eigh costs ~23 Cholesky there)
        (7_520, 100, True),  # DTD 16 shots x 10 views
        (16_320, 100, True),  # Flowers: beyond the last measured size, along its last slope (~78)
        (30_000, 100, False),
    ],
)
def test_solver_by_size(m, lambdas, eigen):
    assert pk.eigh_pays(m, lambdas) is eigen
    assert pk.memory_bytes(m, 10, 64, 0, lambdas) - pk.memory_bytes(m, 10, 64, 0, 1) == (8 * m * m if eigen else 0)


def test_memory_estimate():
    small, large = (pk.memory_bytes(m, 397, 1024, 0, 10) - pk.ROW_BYTES for m in (50_000, 100_000))
    assert 3.8 < large / small <= 4.0
    # SUN397 16-shot x 10 views: K_SS and the factor alone are 16 M^2 = 65 GB
    assert pk.memory_bytes(63_520, 397, 1024, 1588, 10) > 16 * 63_520**2
    assert pk.available_bytes() is None or pk.available_bytes() > 0


def _rss(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
@pytest.mark.parametrize("lambdas", [[0.01, 0.1], [0.01 * i for i in range(1, 17)]])
def test_memory_estimate_within_factor_two_of_measured_peak(lambdas):
    """Peak RSS growth of one fit (M = 1200, K = 20, D = 64), Cholesky and eigen paths, vs the estimate.
    glibc's mmap threshold pinned at 1 MiB so every large buffer is a fresh mapping; a tiny fit first
    pages in LAPACK's code; then the peak-RSS mark is reset and read back after the fit."""
    import ctypes

    try:
        if ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20) != 1:  # M_MMAP_THRESHOLD
            pytest.skip("mallopt refused")
    except OSError:
        pytest.skip("not glibc")
    m, k, d = 1200, 20, 64
    g = torch.Generator().manual_seed(0)
    x, y, t = torch.randn(m, d, generator=g), torch.randint(k, (m,), generator=g), torch.randn(k, d, generator=g)
    t = F.normalize(t, dim=-1)
    pk.fit_grid(x[:50], y[:50], t, [1.5], lambdas)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # peak (VmHWM) := current RSS
    except OSError:
        pytest.skip("cannot reset the peak RSS here")
    before = _rss("VmRSS")
    pk.fit_grid(x, y, t, [1.5], lambdas)
    measured, estimate = _rss("VmHWM") - before, pk.memory_bytes(m, k, d, 0, len(lambdas)) - pk.ROW_BYTES
    assert 0.5 * estimate <= measured <= 2.0 * estimate, (measured, estimate)


# ---------------------------------------------------------------- the registered method


def _cfg(tmp_path: Path, shots=(4,), **settings) -> FitConfig:
    return FitConfig(
        method="proker",
        method_config=pk.ProkerConfig(**settings),
        shots=shots,
        seeds=(1,),
        cache_dir=str(tmp_path / "cache"),
        results_dir=str(tmp_path / "results"),
    )


def _adapter(tmp_path: Path):
    [path] = (tmp_path / "results").rglob("adapter.safetensors")
    return load_adapter(path)


def test_fit_beats_zero_shot_with_beta_lambda_chosen_on_val(tmp_path):
    clustered(tmp_path / "cache", templates=3)
    [result] = fit_dataset("eurosat", REF, _cfg(tmp_path))  # eurosat's official grid: 20 x 100
    test, zs = result["metrics"]["test"]["top1"], result["zero_shot"]["test"]["top1"]
    assert test > zs + 20, (test, zs)
    sel, (betas, lambdas) = result["selection"], pk.official_grid("eurosat")
    assert sel["on"] == "val" and sel["candidates"] == {"beta": betas, "lambda": lambdas}
    flat = [s for row in sel["val_top1"] for s in row]
    first = flat.index(max(flat))
    assert sel["chosen"] == {"beta": betas[first // 100], "lambda": lambdas[first % 100]}
    assert result["metrics"]["val"]["top1"] == pytest.approx(max(flat))
    tensors, class_weights, meta = _adapter(tmp_path)
    assert tensors["support"].shape == (6 * 4 * 3, 32) and tensors["coef"].shape == (72, 6)
    assert torch.allclose(tensors["text"], F.normalize(class_weights, dim=-1))
    assert meta["method_config"]["support_views"] == 3 and result["config"]["solver"].endswith("per beta")


def test_selection_reads_train_and_val_never_test(tmp_path, monkeypatch):
    clustered(tmp_path / "cache")
    reads = reads_while_training(
        monkeypatch, "proker", lambda: fit_dataset("eurosat", REF, _cfg(tmp_path, betas=(1.0, 2.0), lambdas=(0.1, 1.0)))
    )
    assert {s for s, during in reads if during} == {"train", "val"} and ("test", False) in reads


def test_same_seed_same_bits(tmp_path):
    clustered(tmp_path / "cache")
    cfg = _cfg(tmp_path, betas=(1.0, 2.0), lambdas=(0.01, 0.1, 1.0))
    [first] = fit_dataset("eurosat", REF, cfg)
    a = _adapter(tmp_path)[0]
    [again] = fit_dataset("eurosat", REF, dataclasses.replace(cfg, force=True))
    b = _adapter(tmp_path)[0]
    assert again["metrics"] == first["metrics"] and again["selection"] == first["selection"]
    assert all(torch.equal(a[k], b[k]) for k in ("support", "coef", "text", "beta"))


def test_memory_guard_stops_before_reading_and_names_the_views_that_fit(tmp_path, monkeypatch):
    clustered(tmp_path / "cache")
    reads = []
    real_read = st.FeatureStore.read
    monkeypatch.setattr(st.FeatureStore, "read", lambda self, *a, **kw: reads.append(a) or real_read(self, *a, **kw))
    n = 6 * 4  # 2 of the 3 views fit (all 3 are read, then sliced)
    budget = (pk.memory_bytes(n * 2, 6, 32, n, 10) + 4 * n * 3 * 32) / 1e9
    with pytest.raises(ConfigError) as err:
        fit_dataset("eurosat", REF, _cfg(tmp_path, betas=(1.0,), lambdas=(0.1,), memory_gb=budget))
    assert f"M = {n * 3} support vectors" in err.value.message and "GB" in err.value.message
    assert "--proker-views 2" in err.value.hint and reads == []
    [result] = fit_dataset("eurosat", REF, _cfg(tmp_path, betas=(1.0,), lambdas=(0.1,), memory_gb=budget, views=2))
    assert result["config"]["support_views"] == 2 and len(_adapter(tmp_path)[0]["support"]) == n * 2
    assert any("--proker-views 2" in d for d in result["protocol"]["differences"])


def test_imagenet_without_val_uses_the_clean_view_and_fixed_values(tmp_path):
    clustered(tmp_path / "cache", "imagenet", with_val=False, per_class=(6, 0, 5))
    [result] = fit_dataset("imagenet", REF, _cfg(tmp_path, shots=(2,)))
    sel = result["selection"]
    assert sel["on"] == "none" and sel["chosen"] == {"beta": 2.6, "lambda": 0.05} and "2 shots" in sel["reason"]
    assert result["config"]["support_views"] == 0 and len(_adapter(tmp_path)[0]["support"]) == 12
    assert any("clean view" in d for d in result["protocol"]["differences"])
