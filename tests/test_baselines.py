"""Baselines on synthetic stores: linear-probe, tip-adapter, tip-adapter-f."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from stores import REF, D, K, clustered, reads_while_training, write_store

from cacheclip.features import store as st
from cacheclip.fit.adapters import zero_shot_logits
from cacheclip.fit.methods import get_method, list_methods
from cacheclip.fit.methods.linear_probe import fit_logistic_path, objective
from cacheclip.fit.methods.tip_adapter import build_keys, cache_logits, finetune_keys, grid_top1, tip_logits
from cacheclip.fit.stage import FitConfig, fit_dataset
from cacheclip.results.runs import load_adapter

BASELINES = ("linear-probe", "tip-adapter", "tip-adapter-f")


SMALL_GRIDS = {
    "linear-probe": {"cs": (0.1, 10.0, 1000.0)},
    "tip-adapter": {"alphas": (0.1, 1.0, 3.0, 10.0), "betas": (1.0, 5.0)},
    "tip-adapter-f": {"alphas": (0.1, 1.0, 3.0, 10.0), "betas": (1.0, 5.0), "epochs": 5},
}


def cfg_for(tmp_path: Path, method: str, method_kw: dict | None = None, **kw) -> FitConfig:
    """A small grid; ``method_kw`` replaces the method's settings of ``SMALL_GRIDS``."""
    settings = {**SMALL_GRIDS.get(method, {}), **(method_kw or {})}
    base_kw = {
        "method": method,
        "method_config": get_method(method).config(**settings),
        "shots": (4,),
        "seeds": (1,),
        "cache_dir": str(tmp_path / "cache"),
        "results_dir": str(tmp_path / "results"),
    }
    base_kw.update(kw)
    return FitConfig(**base_kw)


def test_registered():
    assert set(BASELINES) <= set(list_methods())
    for name in BASELINES:
        assert get_method(name).from_artifact is not None


# ---------------------------------------------------------------- through fit_dataset


@pytest.mark.parametrize("method", BASELINES)
def test_fit_beats_chance_and_zero_shot_and_artifact_loads(tmp_path, method):
    clustered(tmp_path / "cache")
    [result] = fit_dataset("eurosat", REF, cfg_for(tmp_path, method))
    test, zs = result["metrics"]["test"]["top1"], result["zero_shot"]["test"]["top1"]
    assert test > 100 / K + 30 and test > zs + 10, (test, zs)
    assert result["selection"]["on"] == "val" and result["metrics"]["val"] is not None
    assert result["method"] == method and result["protocol"]["differences"]
    folder = next((tmp_path / "results").rglob("result.json")).parent
    tensors, class_weights, meta = load_adapter(folder / "adapter.safetensors")
    assert meta["method"] == method and class_weights.shape == (K, D)
    expected = {
        "linear-probe": {"weight", "bias"},
        "tip-adapter": {"keys", "values", "alpha", "beta"},
        "tip-adapter-f": {"keys", "values", "alpha", "beta"},
    }[method]
    assert set(tensors) == expected
    # the file alone reproduces the run's test accuracy
    with st.open_store(st.store_path(tmp_path / "cache", REF.model_id, REF.weights_id, "eurosat")) as s:
        feats, labels, _ = s.read("test")
    predict = get_method(method).from_artifact(tensors, meta, class_weights, meta["logit_scale"], "cpu")
    acc = (predict(torch.from_numpy(feats)).argmax(1) == torch.from_numpy(labels)).double().mean().item() * 100
    assert acc == pytest.approx(test)


@pytest.mark.parametrize("method", BASELINES)
def test_methods_never_read_test(tmp_path, monkeypatch, method):
    clustered(tmp_path / "cache")
    reads = reads_while_training(monkeypatch, method, lambda: fit_dataset("eurosat", REF, cfg_for(tmp_path, method)))
    assert {s for s, during in reads if during} == {"train", "val"}
    assert ("test", False) in reads


def test_selection_follows_val_not_test(tmp_path):
    """Val rewards the cache (zero-shot is wrong there), test rewards zero-shot: the chosen
    alpha must be val's, and its test accuracy then falls below zero-shot."""
    rng = np.random.default_rng(1)
    centers = np.eye(K, D) * 5 + 1
    perm = np.roll(np.arange(K), 1)  # text of class k points at cluster perm[k]
    text = centers[perm]
    labels = np.repeat(np.arange(K), 6)

    def noise(n: int) -> np.ndarray:
        return 0.3 * rng.standard_normal((n, D))

    splits = {
        "train": (centers[labels] + noise(len(labels)), labels, None),
        "val": (centers[labels] + noise(len(labels)), labels, None),  # cache right, text wrong
        "test": (centers[perm[labels]] + noise(len(labels)), labels, None),
    }  # text right, cache wrong
    write_store(tmp_path / "cache", "dtd", text, splits)
    cfg = cfg_for(tmp_path, "tip-adapter", {"alphas": (0.0, 0.5, 100.0), "betas": (5.0,)})
    [result] = fit_dataset("dtd", REF, cfg)
    assert result["selection"]["chosen"] == {"alpha": 100.0, "beta": 5.0}
    assert result["metrics"]["val"]["top1"] == 100.0
    assert result["metrics"]["test"]["top1"] < result["zero_shot"]["test"]["top1"] == 100.0


def test_tip_alpha_zero_is_zero_shot_exactly(tmp_path):
    gen = torch.Generator().manual_seed(0)
    feats, cw = torch.randn(50, D, generator=gen) * 3, torch.randn(K, D, generator=gen)
    keys = build_keys(torch.randn(12, D, generator=gen), None)
    labels = torch.arange(12) % K
    assert torch.equal(tip_logits(feats, keys, labels, cw, 100.0, 0.0, 3.0), zero_shot_logits(feats, cw, 100.0))
    clustered(tmp_path / "cache")
    [result] = fit_dataset("eurosat", REF, cfg_for(tmp_path, "tip-adapter", {"alphas": (0.0,), "betas": (2.0,)}))
    assert result["metrics"]["test"] == result["zero_shot"]["test"]


def test_tip_math_matches_its_definition():
    gen = torch.Generator().manual_seed(1)
    feats, cw = torch.randn(40, D, generator=gen), torch.randn(K, D, generator=gen)
    clean, aug = torch.randn(18, D, generator=gen), torch.randn(18, 4, D, generator=gen)
    keys = build_keys(clean, aug)
    assert torch.allclose(keys, F.normalize(aug.mean(1), dim=-1)) and torch.allclose(
        build_keys(clean, None), F.normalize(clean, dim=-1)
    )
    labels = torch.arange(18) % K
    values = F.one_hot(labels, K).float()
    affinity = F.normalize(feats, dim=-1) @ keys.t()
    assert torch.allclose(cache_logits(affinity, labels, K, 2.5), torch.exp(-2.5 * (1 - affinity)) @ values, atol=1e-6)
    # the grid scores equal scoring each (beta, alpha) one at a time
    y = torch.randint(0, K, (40,), generator=gen)
    alphas, betas = [0.0, 0.5, 4.0], [0.5, 3.0]
    grid = grid_top1(feats, y, keys, labels, cw, 100.0, alphas, betas)
    for i, b in enumerate(betas):
        for j, a in enumerate(alphas):
            acc = (tip_logits(feats, keys, labels, cw, 100.0, a, b).argmax(1) == y).double().mean() * 100
            assert grid[i, j].item() == pytest.approx(acc.item())


# ---------------------------------------------------------------- linear probe


def test_linear_probe_reaches_the_optimum_and_the_span_shortcut_is_exact():
    gen = torch.Generator().manual_seed(2)
    x = F.normalize(torch.randn(30, 40, generator=gen), dim=-1)  # N < D: solved in the span
    y = torch.arange(30) % 5
    [fit] = fit_logistic_path(x, y, 5, [3.0], dtype=torch.float64)
    w = fit.weight.double().requires_grad_(True)
    b = fit.bias.double().requires_grad_(True)
    objective(w, b, x.double(), y, 3.0).backward()
    assert torch.cat([w.grad.flatten(), b.grad]).abs().max() < 1e-5  # stationary (up to the float32 result)
    # every sample twice (2N > D: solved in full) with C halved is the same objective
    [again] = fit_logistic_path(torch.cat([x, x]), torch.cat([y, y]), 5, [1.5], dtype=torch.float64)
    assert torch.allclose(again.weight, fit.weight, atol=1e-4) and torch.allclose(again.bias, fit.bias, atol=1e-4)


def test_linear_probe_matches_sklearn():
    sklearn = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((60, 8)) + np.repeat(rng.standard_normal((4, 8)), 15, axis=0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.repeat(np.arange(4), 15)
    for c in (0.1, 10.0):
        ref = sklearn.LogisticRegression(C=c, solver="lbfgs", max_iter=5000, tol=1e-10).fit(x, y)
        [fit] = fit_logistic_path(torch.from_numpy(x), torch.from_numpy(y), 4, [c], dtype=torch.float64)
        assert np.allclose(fit.weight.numpy(), ref.coef_, atol=2e-3)
        centred = fit.bias.numpy() - fit.bias.numpy().mean()  # the bias is unique up to a constant
        assert np.allclose(centred, ref.intercept_ - ref.intercept_.mean(), atol=2e-3)


# ---------------------------------------------------------------- determinism, no-val policy, CLI


@pytest.mark.parametrize("method", ["linear-probe", "tip-adapter-f"])
def test_deterministic(tmp_path, method):
    clustered(tmp_path / "cache")
    cfg = cfg_for(tmp_path, method, seeds=(1, 2))
    first = fit_dataset("eurosat", REF, cfg)
    files = sorted((tmp_path / "results").rglob("adapter.safetensors"))
    tensors = [load_adapter(f)[0] for f in files]
    second = fit_dataset("eurosat", REF, dataclasses.replace(cfg, force=True))
    assert [r["metrics"] for r in first] == [r["metrics"] for r in second]
    assert [r["selection"] for r in first] == [r["selection"] for r in second]
    for f, before in zip(files, tensors, strict=False):
        after = load_adapter(f)[0]
        assert all(torch.equal(before[k], after[k]) for k in before)


def test_tipf_seeded_training_changes_the_keys():
    gen = torch.Generator().manual_seed(4)
    views, labels = torch.randn(24, 3, D, generator=gen), torch.arange(24) % K
    keys = build_keys(views[:, 0], views)
    cw = torch.randn(K, D, generator=gen)
    kw = {"epochs": 3, "lr": 1e-3, "batch_size": 8, "device": "cpu"}
    a = finetune_keys(views, labels, keys, cw, 100.0, 1.0, 1.0, seed=1, **kw)
    b = finetune_keys(views, labels, keys, cw, 100.0, 1.0, 1.0, seed=1, **kw)
    c = finetune_keys(views, labels, keys, cw, 100.0, 1.0, 1.0, seed=2, **kw)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, keys)


@pytest.mark.parametrize(
    "method,chosen",
    [
        ("linear-probe", {"C": 10.0}),
        ("tip-adapter", {"alpha": 1.0, "beta": 1.0}),
        ("tip-adapter-f", {"alpha": 1.0, "beta": 1.0}),
    ],
)
def test_no_val_uses_fixed_defaults(tmp_path, method, chosen):
    clustered(tmp_path / "cache", "imagenet", with_val=False, per_class=(20, 0, 10))
    [result] = fit_dataset(
        "imagenet",
        REF,
        cfg_for(
            tmp_path,
            method,
            {k: getattr(get_method(method).config(), k) for k in ("cs", "alphas") if k in SMALL_GRIDS[method]},
        ),
    )
    sel = result["selection"]
    assert sel["on"] == "none" and sel["chosen"] == chosen and "no val" in sel["reason"]
    assert result["metrics"]["val"] is None
    # a single value given is used as is; --no-val holdout searches the grid on held-out train images
    single = {
        "linear-probe": {"cs": (0.5,)},
        "tip-adapter": {"alphas": (2.0,), "betas": (3.0,)},
        "tip-adapter-f": {"alphas": (2.0,), "betas": (3.0,)},
    }[method]
    [fixed] = fit_dataset("imagenet", REF, cfg_for(tmp_path, method, single))
    assert list(fixed["selection"]["chosen"].values()) == [v[0] for v in single.values()]
    [held] = fit_dataset("imagenet", REF, cfg_for(tmp_path, method, no_val="holdout"))
    assert held["selection"]["on"] == "holdout" and held["metrics"]["val"] is not None


def test_tip_differences_name_the_cache_augmentation(tmp_path):
    clustered(tmp_path / "a", aug_scale=(0.08, 1.0))
    clustered(tmp_path / "b", aug_scale=(0.5, 1.0), views=10)
    [coop] = fit_dataset("eurosat", REF, cfg_for(tmp_path, "tip-adapter", cache_dir=str(tmp_path / "a")))
    [tip] = fit_dataset("eurosat", REF, cfg_for(tmp_path, "tip-adapter", cache_dir=str(tmp_path / "b")))
    assert any("scale (0.08, 1.0)" in d for d in coop["protocol"]["differences"])
    assert not any("scale" in d or "views per image" in d for d in tip["protocol"]["differences"])
    assert "mean of 3 cached augmented views" in coop["config"]["cache"]


METHOD_ARGS = {
    "linear-probe": ["--lp-c", "1,100"],
    "tip-adapter": ["--tip-alpha", "0.5,2", "--tip-beta", "1,4"],
    "tip-adapter-f": ["--tip-alpha", "0.5,2", "--tip-beta", "1,4", "--tip-epochs", "2"],
}


@pytest.mark.parametrize("method", BASELINES)
def test_cli_fit(tmp_path, method, cli):
    clustered(tmp_path / "cache")
    args = [
        "fit",
        "--dataset",
        "eurosat",
        "--method",
        method,
        "--model",
        "RN50",
        "--pretrained",
        "none",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--results-dir",
        str(tmp_path / "results"),
        "--shots",
        "2",
        "--seeds",
        "1",
        "--device",
        "cpu",
        *METHOD_ARGS[method],
    ]
    code, out, err = cli(*args)
    assert code == 0, out + err
    [path] = (tmp_path / "results").rglob("result.json")
    result = json.loads(path.read_text())
    assert result["method"] == method and result["shots"] == 2
    if method == "linear-probe":
        assert [c["C"] for c in result["selection"]["candidates"]] == [1.0, 100.0]
    else:
        assert result["selection"]["candidates"] == {"alpha": [0.5, 2.0], "beta": [1.0, 4.0]}
    if method == "tip-adapter-f":
        assert result["config"]["finetune"]["epochs"] == 2


def threads_seen(monkeypatch, module, name: str) -> list[int]:
    """Wrap ``module.name`` to record torch's thread count at each call; also say the machine has 2 cores."""
    from cacheclip.fit import trainer

    seen, real = [], getattr(module, name)

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    monkeypatch.setattr(trainer, "_cores", lambda: 2)
    return seen


def test_linear_probe_seeds_train_at_once_and_alone_alike(tmp_path, monkeypatch):
    """The seeds' C paths train at once on the cores (one thread each): a seed's weights are the same
    trained beside the others or alone, and every seed's path ran on one torch thread."""
    from cacheclip.fit.methods import linear_probe as lp

    clustered(tmp_path / "cache")
    seen_threads = threads_seen(monkeypatch, lp, "fit_logistic_path")
    together = fit_dataset("eurosat", REF, cfg_for(tmp_path, "linear-probe", seeds=(1, 2, 3)))
    files = {f.parent: load_adapter(f)[0]["weight"] for f in (tmp_path / "results").rglob("adapter.safetensors")}
    alone = cfg_for(tmp_path, "linear-probe", seeds=(2,), results_dir=str(tmp_path / "alone"), force=True)
    [result] = fit_dataset("eurosat", REF, alone)
    [single] = [load_adapter(f)[0]["weight"] for f in (tmp_path / "alone").rglob("adapter.safetensors")]
    assert any(torch.equal(single, w) for w in files.values()) and len(files) == 3
    assert seen_threads == [1, 1, 1, 1]
    assert result["selection"] == next(r["selection"] for r in together if r["seed"] == 2)


def test_tip_adapter_searches_seeds_at_once_and_alone_alike(tmp_path, monkeypatch):
    """Each seed's (alpha, beta) search runs on one torch thread, the seeds at once on the cores; a seed's
    choice is the same searched beside the others or alone."""
    from cacheclip.fit.methods import tip_adapter as tip

    clustered(tmp_path / "cache")
    seen_threads = threads_seen(monkeypatch, tip, "choose")
    together = fit_dataset("eurosat", REF, cfg_for(tmp_path, "tip-adapter", seeds=(1, 2, 3)))
    alone = cfg_for(tmp_path, "tip-adapter", seeds=(2,), results_dir=str(tmp_path / "alone"), force=True)
    [result] = fit_dataset("eurosat", REF, alone)
    assert seen_threads == [1, 1, 1, 1]
    seed2 = next(r for r in together if r["seed"] == 2)
    assert result["selection"] == seed2["selection"] and result["metrics"] == seed2["metrics"]
