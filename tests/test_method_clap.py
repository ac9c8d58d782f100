"""zs-lp and clap (cacheclip/fit/methods/clap.py): the math against computations written here (numpy,
float64, gradients by hand; shared with the module only the documented order of the generator
draws), then whole runs through ``fit_dataset`` on synthetic stores."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from dispatch import CountOps
from stores import REF, clustered, reads_while_training

from cacheclip.features import store as st
from cacheclip.fit import stage
from cacheclip.fit.methods import RunPlan, get_method
from cacheclip.fit.methods.clap import (
    ClapConfig,
    ProbeRun,
    base_text,
    clap_lambdas,
    coop_lr_schedule,
    epoch_batches,
    penalty,
    probe_stack,
    train_probe,
    train_probes,
)
from cacheclip.fit.stage import FitConfig, fit_dataset
from cacheclip.fit.trainer import train_stack
from cacheclip.results.runs import load_adapter

METHODS = ("zs-lp", "clap")


# ---------------------------------------------------------------- independent references


def np_normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def small_problem(seed=0, n_per_class=2, v=3, k=3, d=5, t=2):
    """Raw views (N, V, D), labels (N,), raw per-template text (T, K, D) of norm ~3 (not 1)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(k).repeat_interleave(n_per_class)
    return torch.randn(len(labels), v, d, generator=g) + 0.5, labels, 3.0 * torch.randn(t, k, d, generator=g)


def np_lambdas(views, labels, base, scale):
    lam = np.zeros(base.shape[0])
    for c in range(base.shape[0]):
        rows = np_normalize(views[labels == c].reshape(-1, views.shape[2]))  # every view of class c
        lam[c] = np_softmax(scale * rows @ np_normalize(base).T)[:, c].mean()
    return lam


def np_grad(w, f, y, scale, base=None, lam=None):
    """d/dw of mean CE(scale * f^ w^T / |w|) (+ mean_k lam_k |w_k - t_k|^2), by hand."""
    k = w.shape[0]
    fh, norms = np_normalize(f), np.linalg.norm(w, axis=1, keepdims=True)
    u = w / norms
    dz = (np_softmax(scale * fh @ u.T) - np.eye(k)[y]) / len(y)  # (B, K)
    gu = scale * dz.T @ fh  # d/du (K, D)
    g = (gu - u * (gu * u).sum(1, keepdims=True)) / norms  # through u = w / |w|
    return g if lam is None else g + 2.0 / k * lam[:, None] * (w - base)


def np_batches(n, v, batch, g, sampling):
    """The documented draws of one epoch, as (image, view) index arrays per step."""
    steps = n // batch if n >= batch else 1
    if sampling == "pool":
        perm, size = torch.randperm(n * v, generator=g).numpy(), min(batch, n * v)
        return [(p // v, p % v) for p in (perm[s * size : (s + 1) * size] for s in range(steps))]
    view = torch.randint(v, (n,), generator=g).numpy()
    perm, size = torch.randperm(n, generator=g).numpy(), min(batch, n)
    return [(p, view[p]) for p in (perm[s * size : (s + 1) * size] for s in range(steps))]


def np_probe(views, labels, text, seed, *, epochs, lr, batch, clap, sampling, scale=100.0):
    g = torch.Generator().manual_seed(seed)
    x, y = views.double().numpy(), labels.numpy()
    base = text.double().numpy().mean(0)
    lam = np_lambdas(x, y, base, scale) if clap else None
    w, buf = base.copy(), np.zeros_like(base)
    for e in range(epochs):
        lr_e = 1e-5 if e < 1 else lr * (1 + math.cos(math.pi * (e - 1) / epochs)) / 2
        for img, view in np_batches(x.shape[0], x.shape[1], batch, g, sampling):
            buf = 0.9 * buf + np_grad(w, x[img, view], y[img], scale, base, lam)
            w = w - lr_e * buf
    return w


# ---------------------------------------------------------------- the math


def test_schedule_is_dassl_warmup_then_cosine():
    assert coop_lr_schedule(5, 2e-3, 1, 1e-5) == pytest.approx([1e-5, 2e-3, 1.809017e-3, 1.309017e-3, 6.90983e-4])
    assert coop_lr_schedule(2, 0.1, 0, 1e-5)[0] == 0.1 and coop_lr_schedule(0, 0.1, 1, 1e-5) == []


def test_epoch_batches_per_sampling_mode():
    g = torch.Generator().manual_seed(0)
    image = epoch_batches(10, 3, 4, g, "image")  # floor(10 / 4) = 2 steps of 4 images, one view each
    assert [len(i) for i, _ in image] == [4, 4] and len(set(torch.cat([i for i, _ in image]).tolist())) == 8
    pool = epoch_batches(3, 3, 256, g, "pool")  # N < batch: one step of all N V views
    assert sorted(zip(pool[0][0].tolist(), pool[0][1].tolist(), strict=True)) == [
        (i, j) for i in range(3) for j in range(3)
    ]
    assert [len(i) for i, _ in epoch_batches(600, 20, 256, g, "pool")] == [256, 256]


def test_base_is_the_raw_template_mean():
    _, _, text = small_problem()
    np.testing.assert_allclose(base_text(text).numpy(), text.double().numpy().mean(0), rtol=1e-6)


def test_lambdas_are_the_zero_shot_soft_accuracy_on_all_views():
    views, labels, text = small_problem()
    expected = np_lambdas(views.double().numpy(), labels.numpy(), text.double().numpy().mean(0), 100.0)
    got = clap_lambdas(views, labels, base_text(text), 100.0)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-7)


def test_penalty_is_the_class_weighted_pull_and_its_gradient_the_papers():
    w, t, lam = torch.randn(2, 4, 6, requires_grad=True), torch.randn(4, 6), torch.rand(2, 4)
    got = penalty(w, t, lam)  # (R,): (1/K) sum_k lambda_k |w_k - t_k|^2 per run
    want = [sum(lam[r, k] * ((w[r, k] - t[k]) ** 2).sum() for k in range(4)) / 4 for r in range(2)]
    torch.testing.assert_close(got, torch.stack(want))
    (grad,) = torch.autograd.grad(got.sum(), [w])
    torch.testing.assert_close(grad, 2.0 / 4 * lam[..., None] * (w.detach() - t))  # autograd: the written-out one


@pytest.mark.parametrize("sampling", ["image", "pool"])
@pytest.mark.parametrize("clap", [False, True])
def test_steps_match_hand_gradients(clap, sampling):
    views, labels, text = small_problem(n_per_class=4)  # N = 12, batch 5: 2 steps per epoch
    cfg = ClapConfig(epochs=3, lr=0.1, batch_size=5, sampling=sampling)
    base = base_text(text)
    lambdas = clap_lambdas(views, labels, base, 100.0) if clap else None
    got = train_probe(views, labels, base, lambdas, cfg, scale=100.0, gen=torch.Generator().manual_seed(7))
    expected = np_probe(views, labels, text, 7, epochs=3, lr=0.1, batch=5, clap=clap, sampling=sampling)
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-4, atol=1e-5)


def test_no_epoch_is_the_zero_shot_probe_and_the_penalty_pulls_to_t():
    views, labels, text = small_problem(n_per_class=4)
    base, gen = base_text(text), lambda: torch.Generator().manual_seed(7)
    assert torch.equal(
        train_probe(views, labels, base, None, dataclasses.replace(ClapConfig(), epochs=0), scale=100.0, gen=gen()),
        base,
    )
    cfg = ClapConfig(epochs=3, lr=0.1, batch_size=5, warmup_epochs=0)
    zs = train_probe(views, labels, base, None, cfg, scale=100.0, gen=gen())
    clap = train_probe(views, labels, base, clap_lambdas(views, labels, base, 100.0), cfg, scale=100.0, gen=gen())
    assert (clap - base).norm() < (zs - base).norm()


# ---------------------------------------------------------------- stacked


def _run(views, labels, text, seed, *, clap=True, val=None):
    """A fresh ProbeRun (its generator seeded anew: a generator is spent by training)."""
    base = base_text(text)
    lambdas = clap_lambdas(views, labels, base, 100.0) if clap else None
    return ProbeRun(views, labels, lambdas, torch.Generator().manual_seed(seed), val)


def _val(views, labels, seed):
    g = torch.Generator().manual_seed(seed)
    x = views[:, 0] + 0.8 * torch.randn(views.shape[0], views.shape[2], generator=g)
    return x, labels


@pytest.mark.parametrize("sampling", ["image", "pool"])
def test_a_stacked_run_equals_the_run_alone_whatever_its_neighbours(sampling):
    """Every seed of a shot count trains in one stack; each run's W, its kept epoch and its val
    curve are the run's alone, beside two different sets of neighbours (other data, other seeds,
    ZS-LP beside CLAP, val sets of other sizes, a run of another batch shape in its own stack)."""
    views, labels, text = small_problem(n_per_class=4)  # N = 12, batch 5: 2 steps per epoch
    base = base_text(text)
    cfg = ClapConfig(epochs=8, lr=0.5, batch_size=5, sampling=sampling)
    val = _val(views, labels, 3)
    mine = [lambda s=s: _run(views, labels, text, s, val=val) for s in (7, 8)]
    other_v, other_l, _ = small_problem(seed=4, n_per_class=5)  # N = 15: 3 steps per epoch, its own stack
    more_v, more_l, _ = small_problem(seed=5, n_per_class=4)
    crowds = [
        lambda: [_run(more_v, more_l, text, 1, clap=False, val=(more_v[:, 2], more_l))],
        lambda: [
            _run(other_v, other_l, text, 2, val=_val(other_v, other_l, 2)),
            _run(more_v, more_l, text, 3, val=(more_v[:7, 1], more_l[:7])),
            _run(views, labels, text, 7, clap=False, val=val),
        ],
    ]
    alone = [train_probes([make()], base, cfg, scale=100.0)[0] for make in mine]
    assert alone[0].record["chosen"] < cfg.epochs or alone[1].record["chosen"] < cfg.epochs  # the rule acts
    for crowd in crowds:
        runs = crowd()[:1] + [make() for make in mine] + crowd()[1:]
        got = train_probes(runs, base, cfg, scale=100.0)[1:3]
        for fit, want in zip(got, alone, strict=True):
            assert fit.record == want.record and fit.epoch == want.epoch
            torch.testing.assert_close(fit.weight, want.weight, rtol=0, atol=1e-5)


def test_the_stacked_result_is_the_one_run_loops():
    """train_probe (a stack of one) is what each run of a stack gets: every seed of a call alike."""
    views, labels, text = small_problem(n_per_class=4)
    base, cfg = base_text(text), ClapConfig(epochs=4, lr=0.1, batch_size=5)
    lambdas = clap_lambdas(views, labels, base, 100.0)
    fits = train_probes([_run(views, labels, text, s) for s in (1, 2, 3)], base, cfg, scale=100.0)
    for seed, fit in zip((1, 2, 3), fits, strict=True):
        one = train_probe(views, labels, base, lambdas, cfg, scale=100.0, gen=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(fit.weight, one, rtol=0, atol=1e-5)
        assert fit.record is None and fit.epoch == 4


def test_operations_per_step_do_not_grow_with_the_runs():
    """A CLAP step (gather, loss with its penalty, backward, torch.optim's SGD) is as many torch
    operations for 2 runs as for 9 (the batches drawn before counting)."""
    views, labels, text = small_problem(n_per_class=4)
    cfg = ClapConfig(epochs=4, lr=0.1, batch_size=3)  # 4 steps per epoch

    def ops(runs):
        stack, steps = probe_stack([_run(views, labels, text, s) for s in range(runs)], base_text(text), cfg, 100.0)
        stack.blocks = iter([next(stack.blocks)])
        with CountOps() as counter:
            train_stack(stack, steps)
        return counter.count

    assert ops(2) == ops(9)


# ---------------------------------------------------------------- through fit_dataset


def cfg_for(tmp_path, method, fit_kw=None, **settings) -> FitConfig:
    """4 shots, seed 1, the method's defaults but ``settings``; ``fit_kw`` overrides the FitConfig."""
    base = {
        "shots": (4,),
        "seeds": (1,),
        "cache_dir": str(tmp_path / "cache"),
        "results_dir": str(tmp_path / "results"),
    }
    return FitConfig(method=method, method_config=ClapConfig(**settings), **{**base, **(fit_kw or {})})


@pytest.mark.parametrize("method", METHODS)
def test_fit_beats_zero_shot_selects_nothing_and_the_artifact_rebuilds_it(tmp_path, method):
    path = clustered(tmp_path / "cache", templates=3)
    [result] = fit_dataset("eurosat", REF, cfg_for(tmp_path, method))
    test, zs = result["metrics"]["test"]["top1"], result["zero_shot"]["test"]["top1"]
    assert test > zs + 20, (test, zs)
    sel = result["selection"]
    assert sel["on"] == "none" and "selects nothing" in sel["reason"] and sel["chosen"] == {"epoch": 300}
    assert result["metrics"]["val"] is not None  # reported, not used
    assert result["config"]["epochs"] == 300 and result["config"]["views_used"] == "aug"
    assert ("lambda" in result["config"]) == (method == "clap")
    [folder] = {p.parent for p in (tmp_path / "results").rglob("result.json")}
    tensors, class_weights, meta = load_adapter(folder / "adapter.safetensors")
    assert set(tensors) == ({"weight", "base", "lambdas"} if method == "clap" else {"weight", "base"})
    assert tensors["weight"].shape == tensors["base"].shape == class_weights.shape
    with st.open_store(path) as s:
        feats, labels, _ = s.read("test")
    predict = get_method(method).from_artifact(tensors, meta, class_weights, meta["logit_scale"], "cpu")
    accuracy = (predict(torch.from_numpy(feats)).argmax(1).numpy() == labels).mean() * 100
    assert accuracy == pytest.approx(test, abs=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_the_artifact_gives_the_runs_logits_exactly(tmp_path, method):
    path = clustered(tmp_path / "cache")
    cfg = cfg_for(tmp_path, method, epochs=20)
    with st.open_store(path) as store:
        data = stage.load_fit_data(store, "eurosat")
        [trained] = get_method(method).train(
            stage.fit_context(store, data, 4, cfg),
            [RunPlan(1, stage.sample_splits(data, 4, cfg)[1], "k", tmp_path)],
        )
        feats = torch.from_numpy(store.read("test")[0])
    tensors, meta = trained.artifact
    rebuilt = get_method(method).from_artifact(tensors, json.loads(json.dumps(meta)), data.class_weights, 100.0, "cpu")
    assert torch.equal(rebuilt(feats), trained.predict(feats))


@pytest.mark.parametrize("method", METHODS)
def test_one_call_for_every_seed_gives_each_seed_its_run_alone(tmp_path, method):
    """train(ctx, plans) stacks every seed of the shot count; each result is that seed's run alone."""
    path = clustered(tmp_path / "cache")
    cfg = cfg_for(tmp_path, method, fit_kw={"seeds": (1, 2, 3), "epoch": "best-val"}, epochs=12)
    with st.open_store(path) as store:
        data = stage.load_fit_data(store, "eurosat")
        ctx, splits = stage.fit_context(store, data, 4, cfg), stage.sample_splits(data, 4, cfg)
        plans = [RunPlan(s, splits[s], "k", tmp_path) for s in (1, 2, 3)]
        together = get_method(method).train(ctx, plans)
        alone = [get_method(method).train(ctx, [plan])[0] for plan in plans]
    for t, a in zip(together, alone, strict=True):
        assert t.selection == a.selection and t.selection["epoch"]["rule"] == "best-val"
        for name, tensor in a.artifact[0].items():
            torch.testing.assert_close(t.artifact[0][name], tensor, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_training_reads_only_train_and_val(tmp_path, monkeypatch, method):
    clustered(tmp_path / "cache")
    reads = reads_while_training(
        monkeypatch, method, lambda: fit_dataset("eurosat", REF, cfg_for(tmp_path, method, epochs=5))
    )
    assert {s for s, during in reads if during} == {"train", "val"} and ("test", False) in reads


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_bits_other_seed_other_weights(tmp_path, method):
    clustered(tmp_path / "cache")
    cfg = cfg_for(tmp_path, method, fit_kw={"seeds": (1, 2)}, epochs=30)
    first = fit_dataset("eurosat", REF, cfg)
    files = sorted((tmp_path / "results").rglob("adapter.safetensors"))
    before = [load_adapter(f)[0] for f in files]
    again = fit_dataset("eurosat", REF, dataclasses.replace(cfg, force=True))
    assert [r["metrics"] for r in first] == [r["metrics"] for r in again]
    for f, b in zip(files, before, strict=True):
        after = load_adapter(f)[0]
        assert all(torch.equal(b[k], after[k]) for k in b)
    assert not torch.equal(before[0]["weight"], before[1]["weight"])


def test_the_official_setting_records_no_difference(tmp_path):
    # 20 views of Dassl's crop, CLAP's pool batches, a single default template, the official hyperparameters
    clustered(tmp_path / "cache", views=20, aug_scale=(0.08, 1.0))
    [result] = fit_dataset("eurosat", REF, cfg_for(tmp_path, "clap", sampling="pool"))
    assert result["protocol"]["differences"] == [] and result["protocol"]["matches_paper"]


def test_differences_name_every_departure(tmp_path):
    clustered(tmp_path / "cache", views=3, aug_scale=(0.5, 1.0), templates=2)
    cfg = cfg_for(tmp_path, "clap", epochs=4, lr=0.05, warmup_epochs=0)
    diffs = fit_dataset("eurosat", REF, cfg)[0]["protocol"]["differences"]
    expected = [
        "trained on 3 cached views per image, one view per image per epoch",
        "lambda_k from the zero-shot accuracy on 3 cached views per image (CLAP: 20)",
        "views cropped with scale (0.5, 1.0) (CLAP: Dassl's (0.08, 1.0))",
        "each epoch is one step on all 24 images, one view each (CLAP: min(256, 20·N) = 256 views",
        "text base from 2 template(s) (default) (CLAP: the dataset's single CoOp template)",
        "epochs 4 (CLAP: 300)",
        "lr 0.05 (CLAP: 0.1)",
        "warm-up 0 epoch(s) at 1e-05 (CLAP: 1 at 1e-05)",
    ]
    for text in expected:
        assert any(d.startswith(text) for d in diffs), (text, diffs)
    clustered(tmp_path / "inet", "imagenet", with_val=False, per_class=(6, 0, 5))
    [inet] = fit_dataset("imagenet", REF, cfg_for(tmp_path, "zs-lp", {"cache_dir": str(tmp_path / "inet")}, epochs=2))
    assert any("CLAP on ImageNet: raw mean of 7 selected templates" in d for d in inet["protocol"]["differences"])
    assert inet["selection"]["on"] == "none" and "no val split" in inet["selection"]["reason"]
    assert inet["metrics"]["val"] is None


def test_without_augmented_views_it_falls_back_to_the_clean_view_and_says_so(tmp_path):
    clustered(tmp_path / "cache", views=0)
    [result] = fit_dataset("eurosat", REF, cfg_for(tmp_path, "clap", epochs=3))
    assert result["config"]["views_used"] == "clean" and "the clean view" in result["config"]["lambda"]
    [fallback] = [d for d in result["protocol"]["differences"] if "no augmented views" in d]
    assert "cacheclip extract --dataset eurosat" in fallback and "--aug-views 20 " in fallback


def test_cli_sets_the_shared_options(tmp_path, cli):
    clustered(tmp_path / "cache")
    common = ["--dataset", "eurosat", "--model", "RN50", "--pretrained", "none", "--shots", "2", "--seeds", "1"]
    where = ["--cache-dir", str(tmp_path / "cache"), "--results-dir", str(tmp_path / "results")]
    code, out, err = cli("fit", *common, *where, "--method", "zs-lp", "--clap-epochs", "3", "--clap-sampling", "pool")
    assert code == 0, out + err
    [path] = (tmp_path / "results").rglob("result.json")
    config = json.loads(path.read_text())["config"]
    assert config["epochs"] == 3 and config["sampling"] == "pool"
