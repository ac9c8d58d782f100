"""Training loop: gradients vs autograd, schedule, batching rules, determinism, metrics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cacheclip.errors import ConfigError
from cacheclip.fit import train, trainer
from cacheclip.fit.adapters import AdapterConfig, ClipAdapterHead, zero_shot_logits
from cacheclip.fit.metrics import classification_metrics, mean_per_class_accuracy, top1
from cacheclip.fit.train import (
    RunSpec,
    TrainConfig,
    batch_plan,
    default_epochs,
    group_runs,
    lr_per_epoch,
    predict,
    train_runs,
)

D, K = 64, 5


def _run(seed, n=40, v=3, adapter=None, data_seed=None):
    g = torch.Generator().manual_seed(1000 + (seed if data_seed is None else data_seed))
    views = torch.randn(n, v, D, generator=g) * 2 + 1  # (N, V, D)
    labels = torch.randint(K, (n,), generator=g)
    return RunSpec(seed, adapter or AdapterConfig(), views, labels)


def _class_weights(seed=7):
    return torch.randn(K, D, generator=torch.Generator().manual_seed(seed))


def _reference_train(run, class_weights, scale, cfg, epochs):
    """Autograd + torch.optim.SGD, one run, same random draw order as train_runs."""
    gen = torch.Generator().manual_seed(run.seed)
    head = ClipAdapterHead(run.adapter, D, gen)
    opt = torch.optim.SGD(head.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    n, v, _ = run.views.shape
    batch, steps = batch_plan(n, cfg.batch_size)
    for lr in lr_per_epoch(cfg, epochs):
        for group in opt.param_groups:
            group["lr"] = lr
        draw = (
            torch.randint(v, (n,), generator=gen) if v > 1 and cfg.views == "aug" else torch.zeros(n, dtype=torch.long)
        )
        perm = torch.randperm(n, generator=gen)
        for i in range(steps):
            idx = perm[i * batch : (i + 1) * batch]
            x = run.views[idx, draw[idx]]
            loss = F.cross_entropy(head(x, class_weights, scale), run.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return head.state_dict()


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("kind", ["visual", "text", "both"])
@pytest.mark.parametrize("block", ["official", "paper"])
def test_stacked_logits_and_gradients_are_the_heads(kind, block):
    """The stacked forward (R runs, each its own weights and ratios) is each run's ClipAdapterHead."""
    adapters = [
        AdapterConfig(kind=kind, alpha=0.6, beta=0.3, block=block),
        AdapterConfig(kind=kind, alpha=0.2, beta=0.7, block=block),
    ]
    runs, weights = [_run(s, n=16, adapter=a) for s, a in enumerate(adapters)], _class_weights()
    heads = [ClipAdapterHead(a, D, torch.Generator().manual_seed(s)) for s, a in enumerate(adapters)]
    params = {n: torch.stack([h.state_dict()[n] for h in heads]).requires_grad_(True) for n in heads[0].state_dict()}
    x, y = torch.stack([r.views[:, 0] for r in runs]), torch.stack([r.labels for r in runs])
    z = train.adapter_logits(params, x, weights, 50.0, train.AdapterShape.of(runs, "cpu"))
    train.run_cross_entropy(z, y).sum().backward()
    for r, head in enumerate(heads):
        torch.testing.assert_close(z[r], head(x[r], weights, 50.0), rtol=1e-5, atol=1e-5)
        F.cross_entropy(head(x[r], weights, 50.0), y[r]).backward()
        for name, param in head.named_parameters():
            assert param.grad.abs().max() > 0
            torch.testing.assert_close(params[name].grad[r], param.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["visual", "text", "both"])
def test_training_matches_autograd_sgd_reference(kind):
    """Stacked runs train as a per-run nn.Module with torch.optim.SGD would, over epochs."""
    adapter = AdapterConfig(kind=kind, alpha=0.4, beta=0.2)
    run, weights = _run(3, n=70, adapter=adapter), _class_weights()
    cfg = TrainConfig(lr=0.05, batch_size=16)
    ours = train_runs([run], weights, 50.0, cfg, epochs=4)[0]
    ref = _reference_train(run, weights, 50.0, cfg, epochs=4)
    for name in ref:
        torch.testing.assert_close(ours[name], ref[name], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- schedule


def test_lr_per_epoch_small_case():
    lrs = lr_per_epoch(TrainConfig(), 5)
    print("lr per epoch (epochs=5):", lrs)
    expected = [1e-5, 0.002] + [0.001 * (1 + math.cos(math.pi * t / 5)) for t in (1, 2, 3)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert lrs[2] == pytest.approx(1.8090169943749475e-3)


@pytest.mark.parametrize("epochs,warmup", [(5, 1), (12, 1), (7, 2), (6, 0)])
def test_lr_per_epoch_matches_torch_cosine_after_constant_warmup(epochs, warmup):
    """Dassl semantics: constant lr for `warmup` epochs, then CosineAnnealingLR(T_max=epochs)
    counted from 0 (WARMUP_RECOUNT) and stepped once per epoch."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.002)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    ref = []
    for epoch in range(epochs):
        if epoch < warmup:
            ref.append(1e-5)
            continue
        if epoch > warmup:
            opt.step()  # a no-op (no gradients); keeps torch's call-order check quiet
            cosine.step()
        ref.append(opt.param_groups[0]["lr"])
    assert lr_per_epoch(TrainConfig(warmup_epochs=warmup), epochs) == pytest.approx(ref, rel=1e-9)


def test_default_epochs():
    assert [default_epochs(s, "eurosat") for s in (1, 2, 4, 8, 16)] == [50, 100, 100, 200, 200]
    assert [default_epochs(s, "imagenet") for s in (1, 2, 4, 8, 16)] == [50] * 5
    with pytest.raises(ConfigError):
        default_epochs(0, "dtd")


# ---------------------------------------------------------------- batching


def _record_steps(monkeypatch):
    """Every step's (x (R, B, D), y (R, B)) as the trainer gathers them."""
    seen, gather = [], trainer.Samples.batch

    def batch(self, rows, dtype=torch.float32):
        x, y = gather(self, rows, dtype)
        seen.append((x.clone(), y.clone()))
        return x, y

    monkeypatch.setattr(trainer.Samples, "batch", batch)
    return seen


def test_drop_last_when_at_least_one_full_batch(monkeypatch):
    assert batch_plan(70, 32) == (32, 2)
    seen = _record_steps(monkeypatch)
    run = _run(0, n=70, v=1)
    train_runs([run], _class_weights(), 100.0, TrainConfig(), epochs=3)
    assert len(seen) == 6 and all(x.shape == (1, 32, D) for x, _ in seen)
    epoch = torch.cat([x[0] for x, _ in seen[:2]])
    rows = [int((run.views[:, 0] == r).all(-1).nonzero()) for r in epoch]  # which images were used
    assert len(set(rows)) == 64  # 64 distinct images, 6 dropped


def test_single_short_batch_when_fewer_images_than_batch(monkeypatch):
    assert batch_plan(20, 32) == (20, 1)
    seen = _record_steps(monkeypatch)
    run = _run(0, n=20, v=1)
    train_runs([run], _class_weights(), 100.0, TrainConfig(), epochs=2)
    assert len(seen) == 2 and all(x.shape == (1, 20, D) for x, _ in seen)
    assert sorted(seen[0][1][0].tolist()) == sorted(run.labels.tolist())  # every image once


@pytest.mark.parametrize("mode", ["aug", "clean"])
def test_view_draws(monkeypatch, mode):
    n, v = 32, 4
    views = torch.arange(v, dtype=torch.float32).view(1, v, 1).expand(n, v, D).contiguous()  # value = view id
    seen = _record_steps(monkeypatch)
    run = RunSpec(0, AdapterConfig(), views, torch.zeros(n, dtype=torch.long))
    train_runs([run], _class_weights(), 100.0, TrainConfig(views=mode), epochs=3)
    used = torch.cat([x[0, :, 0] for x, _ in seen]).long()
    counts = torch.bincount(used, minlength=v)
    assert (counts > 0).all() if mode == "aug" else counts[0] == 3 * n


# ---------------------------------------------------------------- batched runs, determinism


def test_batched_equals_one_by_one():
    runs = [
        _run(seed, n=50, adapter=AdapterConfig(alpha=a), data_seed=seed * 10 + i)
        for seed in (1, 2)
        for i, a in enumerate((0.2, 0.7))
    ]
    weights, cfg = _class_weights(), TrainConfig(lr=0.05)
    together = train_runs(runs, weights, 100.0, cfg, epochs=6)
    test_feats = torch.randn(300, D, generator=torch.Generator().manual_seed(99)) * 2 + 1
    for run, state in zip(runs, together, strict=False):
        alone = train_runs([run], weights, 100.0, cfg, epochs=6)[0]
        for name in alone:
            torch.testing.assert_close(state[name], alone[name], rtol=1e-5, atol=1e-6)
        a = predict(state, run.adapter, test_feats, weights, 100.0).argmax(-1)
        b = predict(alone, run.adapter, test_feats, weights, 100.0).argmax(-1)
        assert torch.equal(a, b)


def test_same_seed_is_bitwise_deterministic_and_seeds_differ():
    weights, cfg = _class_weights(), TrainConfig(lr=0.05)
    run = _run(4, adapter=AdapterConfig(kind="both"))
    a = train_runs([run], weights, 100.0, cfg, epochs=3)[0]
    b = train_runs([run], weights, 100.0, cfg, epochs=3)[0]
    c = train_runs([RunSpec(5, run.adapter, run.views, run.labels)], weights, 100.0, cfg, epochs=3)[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["visual.w1"], c["visual.w1"])


def test_group_runs_splits_by_shape_and_adapter_structure():
    runs = [
        _run(0, n=40),
        _run(1, n=40, adapter=AdapterConfig(alpha=0.9)),
        _run(2, n=30),
        _run(3, n=40, adapter=AdapterConfig(kind="both")),
    ]
    assert group_runs(runs) == [[0, 1], [2], [3]]


# ---------------------------------------------------------------- learning


def test_fit_beats_zero_shot_on_separable_problem():
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(K, D, generator=gen) * 3  # separable classes ...
    weights = torch.randn(K, D, generator=gen)  # ... that the "text" weights know nothing about

    def sample(n_per_class, v):
        labels = torch.arange(K).repeat_interleave(n_per_class)
        feats = centers[labels, None] + torch.randn(len(labels), v, D, generator=gen) + 4.0
        return feats, labels

    views, labels = sample(16, 2)
    test_x, test_y = sample(40, 1)
    test_x = test_x[:, 0]
    adapter = AdapterConfig(alpha=0.6)
    state = train_runs([RunSpec(0, adapter, views, labels)], weights, 100.0, TrainConfig(lr=0.05), epochs=60)[0]
    zs = top1(zero_shot_logits(test_x, weights, 100.0), test_y)
    fit = top1(predict(state, adapter, test_x, weights, 100.0), test_y)
    assert fit > zs + 30 and fit > 90, (zs, fit)


def test_predict_with_zero_alpha_is_zero_shot_and_chunking_only_rounds():
    weights, feats = _class_weights(), torch.randn(50, D)
    adapter = AdapterConfig(kind="both", alpha=0.0, beta=0.0)
    state = ClipAdapterHead(adapter, D, torch.Generator()).state_dict()
    zs = zero_shot_logits(feats, weights, 100.0)
    assert torch.equal(predict(state, adapter, feats, weights, 100.0), zs)
    torch.testing.assert_close(predict(state, adapter, feats, weights, 100.0, batch_size=7), zs)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs",
    [
        {"views": "random"},
        {"lr": 0.0},
        {"batch_size": 0},
        {"momentum": 1.0},
        {"epochs": 0},
        {"warmup_epochs": -1},
        {"weight_decay": -1.0},
    ],
)
def test_bad_train_config_raises(kwargs):
    with pytest.raises(ConfigError):
        train_runs([_run(0)], _class_weights(), 100.0, TrainConfig(**kwargs), epochs=1)


def test_mixed_runs_train_in_groups_and_keep_their_order():
    weights, cfg = _class_weights(), TrainConfig(lr=0.05)
    runs = [_run(0, n=40), _run(1, n=30), _run(2, n=40, adapter=AdapterConfig(kind="text")), _run(3, n=40)]
    ticks = []
    states = train_runs(runs, weights, 100.0, cfg, epochs=2, progress=lambda d, t: ticks.append((d, t)))
    done = [d for d, _ in ticks]  # 3 groups x 2 epochs, counted as the group's stacks report them
    assert done == sorted(done) and ticks[-1] == (6, 6) and {t for _, t in ticks} == {6}
    assert set(states[2]) == {"text.w1", "text.w2"}
    for i in (1, 2):
        alone = train_runs([runs[i]], weights, 100.0, cfg, epochs=2)[0]
        assert all(torch.equal(states[i][k], alone[k]) for k in alone)  # groups of one run: bitwise
    pair = train_runs([runs[0], runs[3]], weights, 100.0, cfg, epochs=2)
    assert all(torch.equal(states[3][k], pair[1][k]) for k in pair[1])


def test_bad_runs_raise():
    weights = _class_weights()
    with pytest.raises(ConfigError, match="alpha"):
        train_runs([_run(0, adapter=AdapterConfig(alpha=3.0))], weights, 100.0, TrainConfig(), epochs=1)
    with pytest.raises(ConfigError, match="class weights"):
        train_runs([_run(0)], torch.randn(K, D + 1), 100.0, TrainConfig(), epochs=1)
    with pytest.raises(ConfigError, match="no training images"):
        train_runs([_run(0, n=0)], weights, 100.0, TrainConfig(), epochs=1)
    with pytest.raises(ConfigError, match="labels"):
        train_runs([_run(0)], weights[:2], 100.0, TrainConfig(), epochs=1)


def test_predict_with_wrong_adapter_kind_raises():
    state = ClipAdapterHead(AdapterConfig(), D, torch.Generator()).state_dict()
    with pytest.raises(ConfigError):
        predict(state, AdapterConfig(kind="both"), torch.randn(3, D), _class_weights(), 100.0)


# ---------------------------------------------------------------- metrics


def test_metrics():
    labels = torch.tensor([0, 0, 0, 1, 2])
    preds = torch.tensor([0, 0, 1, 1, 0])
    assert top1(preds, labels) == pytest.approx(60.0)
    assert mean_per_class_accuracy(preds, labels, 4) == pytest.approx(100 * (2 / 3 + 1 + 0) / 3)
    logits = F.one_hot(preds, 4).float()
    assert classification_metrics(logits, labels, 4) == pytest.approx(
        {"top1": 60.0, "mean_per_class": 100 * (5 / 3) / 3, "n": 5}
    )
    with pytest.raises(ValueError):
        top1(preds[:3], labels)


@pytest.mark.parametrize("adapter", [AdapterConfig(block="paper"), AdapterConfig(kind="text")])
def test_all_zero_features_stay_finite(adapter):
    run = _run(0, n=32, v=1, adapter=adapter)
    run.views[:8] = 0.0  # f* = 0 for these rows: zero logits, as F.normalize gives, not NaN
    state = train_runs([run], _class_weights(), 100.0, TrainConfig(lr=0.05), epochs=2)[0]
    assert all(torch.isfinite(t).all() for t in state.values())


def test_runs_sharing_views_out_of_order_come_back_in_order():
    """Runs that share a views tensor train side by side internally; results keep the input order."""
    a, b = _run(1), _run(2)
    runs = [
        a,
        RunSpec(2, AdapterConfig(alpha=0.5), b.views, b.labels),
        RunSpec(3, AdapterConfig(alpha=0.7), a.views, a.labels),
    ]
    cfg = TrainConfig(lr=0.01)
    together = train_runs(runs, _class_weights(), 50.0, cfg, epochs=3)
    for run, state in zip(runs, together, strict=False):
        alone = train_runs([run], _class_weights(), 50.0, cfg, epochs=3)[0]
        for name in alone:
            torch.testing.assert_close(state[name], alone[name], rtol=1e-5, atol=1e-6)
