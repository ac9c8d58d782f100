"""Tip-Adapter-F on the stacked trainer: the fine-tuning against the one-run loop it replaced
(written here: autograd, torch.optim's AdamW and CosineAnnealingLR, the documented draws), a run in
a stack against the run alone whatever its neighbours, and fit's seeds trained together against
each seed alone. Tip-Adapter's own math and the method through fit: tests/test_baselines.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from dispatch import CountOps
from stores import REF, clustered

from cacheclip.fit.methods import get_method
from cacheclip.fit.methods import tip_adapter as tip
from cacheclip.fit.stage import FitConfig, fit_dataset
from cacheclip.results.runs import load_adapter

S, K, D = 100.0, 4, 8


def _data(n=13, v=3, seed=0, dtype=torch.float64):
    """views (N, V, D), labels (N,), keys (N, D), class weights (K, D)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % K
    means = torch.randn(K, D, generator=g, dtype=dtype)
    views = means[labels][:, None] + 0.8 * torch.randn(n, v, D, generator=g, dtype=dtype)
    return views, labels, tip.build_keys(views[:, 0], views).to(dtype), torch.randn(K, D, generator=g, dtype=dtype)


def _reference(views, labels, keys, cw, alpha, beta, epochs, lr, batch, seed):
    """The loop finetune_keys ran before the trainer: one run, autograd, torch.optim."""
    n, v, _ = views.shape
    gen = torch.Generator().manual_seed(seed)
    weights = keys.clone().requires_grad_(True)
    cw = F.normalize(cw, dim=-1)
    steps = -(-n // batch)
    opt = torch.optim.AdamW([weights], lr=lr, eps=1e-4, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps)
    for _ in range(epochs):
        pick = torch.randint(v, (n,), generator=gen) if v > 1 else torch.zeros(n, dtype=torch.long)
        perm = torch.randperm(n, generator=gen)
        for s in range(steps):
            idx = perm[s * batch : (s + 1) * batch]
            f = F.normalize(views[idx, pick[idx]], dim=-1)
            logits = S * f @ cw.t() + alpha * tip.cache_logits(f @ weights.t(), labels, K, beta)
            loss = F.cross_entropy(logits, labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return weights.detach()


@pytest.mark.parametrize("fused", [True, False])
def test_finetuning_is_the_loop_it_replaced(fused):
    """N = 13, batch 5: 3 steps an epoch, the last of 3 images, 4 epochs."""
    views, labels, keys, cw = _data()
    kw = {"epochs": 4, "lr": 0.05, "batch_size": 5}
    got = tip.finetune_keys(views, labels, keys, cw, S, 2.0, 3.0, seed=9, fused=fused, **kw)
    want = _reference(views, labels, keys, cw, 2.0, 3.0, kw["epochs"], kw["lr"], kw["batch_size"], 9)
    assert (want - keys).abs().max() > 1e-2  # the keys really moved
    assert torch.allclose(got, want, rtol=0, atol=1e-12)


def test_the_cosine_is_torchs_step_for_step():
    opt = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=37)
    want = []
    for _ in range(37):
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert tip.cosine_per_step(1e-3, 37) == want  # bit for bit
    assert tip.tipf_batches(13, 5) == (5, 3) and tip.tipf_batches(4, 256) == (4, 1)


def _runs(seeds, n=13, data_seed=0, val_seed=5):
    out = []
    for s in seeds:
        views, labels, keys, _ = _data(n=n, seed=data_seed + s, dtype=torch.float32)
        val_views, val_labels, _, _ = _data(n=11, v=1, seed=val_seed + s, dtype=torch.float32)
        out.append(tip.KeysRun(views, labels.roll(s), keys, s, (val_views[:, 0], val_labels)))
    return out


def test_a_stacked_run_equals_the_run_alone_whatever_its_neighbours():
    """Every seed of a shot count trains in one stack, each with its own cache labels, batches and
    val; each run's keys and best val epoch are the run's alone, with any runs beside it."""
    cw = _data(dtype=torch.float32)[3]
    runs = _runs([1, 2, 3])
    neighbours = _runs([4, 5], data_seed=20) + _runs([6], n=9)  # another cache size: another stack

    def train(stack):
        return tip.finetune_runs(stack, cw, S, 1.5, 2.0, epochs=6, lr=0.05, batch_size=5, best_val=True)

    alone = [train([run])[0] for run in runs]
    assert all(a.epoch["rule"] == "best-val" and len(a.epoch["val_top1"]) == 6 for a in alone)
    for stack in (runs, neighbours + runs, runs[::-1] + neighbours[1:]):
        trained = {id(r): t for r, t in zip(stack, train(stack), strict=True)}
        for run, want in zip(runs, alone, strict=True):
            got = trained[id(run)]
            assert got.epoch == want.epoch
            assert torch.allclose(got.keys, want.keys, rtol=0, atol=1e-5)


def test_the_loss_is_the_same_operations_for_any_number_of_runs():
    cw = _data(dtype=torch.float32)[3]

    def ops(r):
        runs = _runs(range(1, r + 1))
        index = torch.cat([run.labels + j * K for j, run in enumerate(runs)])
        keys = torch.stack([run.keys for run in runs]).requires_grad_(True)
        x = torch.stack([run.views[:5, 0] for run in runs])
        y = torch.stack([run.labels[:5] for run in runs])
        with CountOps() as counter:
            tip.keys_loss(F.normalize(cw, dim=-1), index, S, 1.0, 2.0)({"keys": keys}, x, y).sum().backward()
        return counter.count

    assert ops(2) == ops(3) == ops(7)


def _cfg(tmp_path, **kw) -> FitConfig:
    settings = get_method("tip-adapter-f").config(alphas=(0.5, 2.0), betas=(1.0, 4.0), epochs=4)
    base = {"shots": (4,), "seeds": (1,), "cache_dir": str(tmp_path / "cache"), "results_dir": str(tmp_path / "r")}
    return FitConfig(method="tip-adapter-f", method_config=settings, **{**base, **kw})


@pytest.mark.parametrize("epoch", ["last", "best-val"])
def test_the_seeds_of_a_shot_count_train_together_as_each_alone(tmp_path, epoch):
    """fit trains every seed's cache in one stack: seed 2's run is the one fit gives with seed 2
    alone (keys within float tolerance, the same selection)."""
    clustered(tmp_path / "cache")
    [_, together] = fit_dataset("eurosat", REF, _cfg(tmp_path, seeds=(1, 2), epoch=epoch))
    [alone] = fit_dataset("eurosat", REF, _cfg(tmp_path, seeds=(2,), epoch=epoch, results_dir=str(tmp_path / "a")))
    assert together["seed"] == alone["seed"] == 2 and together["run_key"] == alone["run_key"]
    assert together["selection"] == alone["selection"] and together["selection"]["epoch"]["rule"] == epoch
    [a] = [load_adapter(p)[0] for p in (tmp_path / "a").rglob("adapter.safetensors")]
    [b] = [
        load_adapter(p.parent / "adapter.safetensors")[0]
        for p in (tmp_path / "r").rglob("result.json")
        if '"seed": 2' in p.read_text()
    ]
    assert torch.allclose(a["keys"], b["keys"], rtol=0, atol=1e-5) and torch.equal(a["values"], b["values"])


def test_keys_stack_with_their_own_cache_labels():
    """Two runs whose caches label the same features differently get the cache logits of their own."""
    f = F.normalize(torch.randn(2, 6, D, generator=torch.Generator().manual_seed(1)), dim=-1)
    keys = F.normalize(torch.randn(2, 10, D, generator=torch.Generator().manual_seed(2)), dim=-1)
    labels = [torch.arange(10) % K, (torch.arange(10) * 3) % K]
    index = torch.cat([labels[0], labels[1] + K])
    got = tip.stacked_cache_logits(f, keys, index, K, 2.5)
    for r in range(2):
        assert torch.allclose(got[r], tip.cache_logits(f[r] @ keys[r].t(), labels[r], K, 2.5), rtol=0, atol=1e-6)


def test_an_epoch_is_its_full_batches_then_the_short_one():
    blocks = tip.epoch_rows(13, 3, 5, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    for _ in range(2):  # two epochs
        full, short = next(blocks), next(blocks)
        pick, perm = torch.randint(3, (13,), generator=g), torch.randperm(13, generator=g)
        assert full.shape == (2, 5) and short.shape == (1, 3)
        assert torch.cat([full.flatten(), short.flatten()]).tolist() == (perm * 3 + pick[perm]).tolist()
    assert next(tip.epoch_rows(10, 1, 5, torch.Generator())).shape == (2, 5)  # no short batch: one block
