"""`--epoch best-val`: each trained run keeps the FIRST epoch with its best val top-1. Checked against
per-epoch evaluations written here (a per-run nn.Module with torch.optim.SGD for CLIP-Adapter's stacked
trainer, a plain autograd loop for ZS-LP), then through ``fit_dataset`` for every method trained by epochs."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from stores import REF, clustered

from cacheclip.errors import ConfigError
from cacheclip.fit.adapters import AdapterConfig, ClipAdapterHead
from cacheclip.fit.methods import get_method
from cacheclip.fit.methods.clap import ClapConfig, train_probe
from cacheclip.fit.stage import FitConfig, fit_dataset
from cacheclip.fit.train import BestEpoch, RunSpec, TrainConfig, batch_plan, lr_per_epoch, train_runs_best_val

D, K = 16, 4


def _problem(seed: int, n: int, v: int = 2, m: int = 12):
    """Train views (N, V, D) and a val set (M, D) whose labels are a third wrong, so val top-1 moves
    up and down from epoch to epoch (the best epoch is rarely the last)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(K, D, generator=g)
    labels = torch.arange(n) % K
    views = centers[labels][:, None] + 0.9 * torch.randn(n, v, D, generator=g)
    val_labels = torch.arange(m) % K
    val = centers[val_labels] + 0.9 * torch.randn(m, D, generator=g)
    noisy = val_labels.clone()
    noisy[::3] = (noisy[::3] + 1) % K
    return views, labels, (val, noisy)


def _first_best(curve: list[float]) -> int:
    """1-based epoch of the first maximum."""
    return max(range(len(curve)), key=lambda i: (curve[i], -i)) + 1


def _reference_best_val(run: RunSpec, val, class_weights, scale, cfg, epochs):
    """One run as an nn.Module with torch.optim.SGD, scored on val after every epoch; returns
    (per-epoch val top-1, state of the first best epoch)."""
    gen = torch.Generator().manual_seed(run.seed)
    head = ClipAdapterHead(run.adapter, D, gen)
    opt = torch.optim.SGD(head.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    n, v, _ = run.views.shape
    batch, steps = batch_plan(n, cfg.batch_size)
    curve, best_state, best = [], None, -1.0
    for lr in lr_per_epoch(cfg, epochs):
        for group in opt.param_groups:
            group["lr"] = lr
        draw = torch.randint(v, (n,), generator=gen)
        perm = torch.randperm(n, generator=gen)
        for i in range(steps):
            idx = perm[i * batch : (i + 1) * batch]
            loss = F.cross_entropy(head(run.views[idx, draw[idx]], class_weights, scale), run.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            top1 = 100.0 * float(head(val[0], class_weights, scale).argmax(1).eq(val[1]).sum()) / len(val[1])
        curve.append(top1)
        if top1 > best:
            best, best_state = top1, {k: w.detach().clone() for k, w in head.state_dict().items()}
    return curve, best_state


def test_stacked_best_val_equals_per_epoch_reference():
    """Four runs stacked (two seeds x two ratios, val sets of different sizes): each keeps the epoch
    and the weights an independent per-epoch evaluation of that run alone keeps."""
    cw = torch.randn(K, D, generator=torch.Generator().manual_seed(5))
    cfg, epochs = TrainConfig(lr=0.3, batch_size=8, warmup_epochs=0), 12
    runs, vals = [], []
    for seed, m in ((1, 12), (2, 9)):
        views, labels, val = _problem(seed, n=24, m=m)
        for alpha in (0.3, 0.7):
            runs.append(RunSpec(seed, AdapterConfig(alpha=alpha), views, labels))
            vals.append(val)
    states, records = train_runs_best_val(runs, vals, cw, 20.0, cfg, epochs)
    chosen = []
    for run, val, state, record in zip(runs, vals, states, records, strict=True):
        curve, ref_state = _reference_best_val(run, val, cw, 20.0, cfg, epochs)
        assert record["rule"] == "best-val"
        assert record["val_top1"] == pytest.approx(curve, abs=1e-3)
        assert record["chosen"] == _first_best(curve)
        for name, weight in ref_state.items():
            torch.testing.assert_close(state[name], weight, rtol=1e-4, atol=1e-5)
        chosen.append(record["chosen"])
    print("chosen epochs:", chosen)
    assert min(chosen) < epochs  # not all last epochs: the rule is actually exercised


def test_best_epoch_keeps_the_first_of_equal_scores():
    keeper = BestEpoch(2)
    for epoch, scores in enumerate(([50.0, 10.0], [60.0, 10.0], [60.0, 30.0], [55.0, 30.0]), start=1):
        keeper.observe(epoch, torch.tensor(scores), {"w": torch.full((2, 1), float(epoch))})
    assert [keeper.record(r)["chosen"] for r in (0, 1)] == [2, 3]
    assert keeper.state["w"].flatten().tolist() == [2.0, 3.0]


def test_zs_lp_best_val_equals_plain_torch_per_epoch():
    """ZS-LP's probe (single-run path): a plain autograd + torch.optim.SGD loop with the documented
    draws, every epoch's W kept, the first best val epoch picked here."""
    views, labels, val = _problem(3, n=20, v=3)
    base = torch.randn(K, D, generator=torch.Generator().manual_seed(9)) * 3
    cfg, scale = ClapConfig(epochs=10, lr=2.0, batch_size=8), 20.0
    keeper = BestEpoch(1)

    def on_epoch(epoch, w):
        top1 = 100.0 * float((F.normalize(val[0], dim=-1) @ F.normalize(w, dim=-1).t()).argmax(1).eq(val[1]).sum())
        keeper.observe(epoch, torch.tensor([top1 / len(val[1])]), {"weight": w[None]})

    train_probe(views, labels, base, None, cfg, scale=scale, gen=torch.Generator().manual_seed(4), on_epoch=on_epoch)

    gen, w = torch.Generator().manual_seed(4), base.clone().requires_grad_(True)
    opt = torch.optim.SGD([w], lr=cfg.lr, momentum=cfg.momentum)
    snapshots, curve = [], []
    for e in range(cfg.epochs):
        for group in opt.param_groups:
            w0 = cfg.warmup_epochs  # Dassl: constant warm-up, then the cosine counted from it over all epochs
            group["lr"] = cfg.warmup_lr if e < w0 else cfg.lr * (1 + math.cos(math.pi * (e - w0) / cfg.epochs)) / 2
        view = torch.randint(3, (20,), generator=gen)
        perm = torch.randperm(20, generator=gen)
        for s in range(20 // 8):
            idx = perm[s * 8 : (s + 1) * 8]
            logits = scale * F.normalize(views[idx, view[idx]], dim=-1) @ F.normalize(w, dim=-1).t()
            loss = F.cross_entropy(logits, labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        snapshots.append(w.detach().clone())
        pred = (F.normalize(val[0], dim=-1) @ F.normalize(w.detach(), dim=-1).t()).argmax(1)
        curve.append(100.0 * float(pred.eq(val[1]).sum()) / len(val[1]))
    best = _first_best(curve)
    assert keeper.record()["chosen"] == best
    assert keeper.record()["val_top1"] == pytest.approx(curve, abs=1e-3)
    torch.testing.assert_close(keeper.state["weight"][0], snapshots[best - 1], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- through fit


FAST = {
    "clip-adapter": {"epochs": 6, "batch_size": 8, "lr": 0.05},
    "tip-adapter-f": {"epochs": 5, "alphas": (1.0, 2.0), "betas": (1.0, 3.0)},
    "zs-lp": {"epochs": 6, "batch_size": 8},
    "clap": {"epochs": 6, "batch_size": 8},
    "taskres": {"epochs": 6, "batch_size": 8},
}


def _cfg(tmp_path, method, **fit_kw):
    settings = get_method(method).config(**FAST.get(method, {}))
    base = {"shots": (4,), "seeds": (1,), "cache_dir": str(tmp_path / "cache"), "results_dir": str(tmp_path / "r")}
    return FitConfig(method=method, method_config=settings, **{**base, **fit_kw})


@pytest.mark.parametrize("method", list(FAST))
def test_fit_records_the_first_best_val_epoch(tmp_path, method):
    clustered(tmp_path / "cache")
    [last] = fit_dataset("eurosat", REF, _cfg(tmp_path, method))
    [best] = fit_dataset("eurosat", REF, _cfg(tmp_path, method, epoch="best-val"))
    assert last["selection"]["epoch"]["rule"] == "last" and last["config"]["epoch"] == "last"
    record = best["selection"]["epoch"]
    assert best["config"]["epoch"] == "best-val" and record["rule"] == "best-val"
    assert len(record["val_top1"]) == FAST[method]["epochs"]
    assert record["chosen"] == _first_best(record["val_top1"])
    if method != "tip-adapter-f":  # Tip-F scores epochs with its training alpha, beta, then searches the grid
        assert best["metrics"]["val"]["top1"] == pytest.approx(record["val_top1"][record["chosen"] - 1], abs=1e-3)
    assert best["run_key"] != last["run_key"]


def test_best_val_without_val_keeps_the_last_epoch_and_says_why(tmp_path):
    clustered(tmp_path / "cache", "imagenet", with_val=False)
    [result] = fit_dataset("imagenet", REF, _cfg(tmp_path, "clip-adapter", epoch="best-val"))
    record = result["selection"]["epoch"]
    assert record["rule"] == "last" and record["chosen"] == FAST["clip-adapter"]["epochs"]
    assert "without a val split" in record["reason"]
    assert any("without a val split" in d for d in result["protocol"]["differences"])


def test_methods_without_epochs_record_that_it_does_not_apply(tmp_path):
    clustered(tmp_path / "cache")
    [last] = fit_dataset("eurosat", REF, _cfg(tmp_path, "tip-adapter"))
    [best] = fit_dataset("eurosat", REF, _cfg(tmp_path, "tip-adapter", epoch="best-val", force=True))
    assert "does not apply" in best["config"]["epoch"]
    assert best["run_key"] == last["run_key"]  # the same run: nothing it computes changed


def test_unknown_epoch_rule_is_refused():
    with pytest.raises(ConfigError, match="--epoch"):
        dataclasses.replace(FitConfig(), epoch="best").validate()
