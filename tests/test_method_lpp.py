"""lp++ (cacheclip/fit/methods/lp_plus_plus.py): the math against a numpy (float64) computation with
gradients by hand (shared with the module only the documented order of the generator draws: the
view per image, then the bias), then whole runs through ``fit_dataset`` on synthetic stores."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from stores import REF, clustered, reads_while_training

from cacheclip.features import store as st
from cacheclip.fit import stage
from cacheclip.fit.methods import RunPlan, get_method
from cacheclip.fit.methods.lp_plus_plus import LppConfig, LppRun, train_lpp, train_lpps, training_set
from cacheclip.fit.stage import FitConfig, fit_dataset
from cacheclip.results.runs import load_adapter


def np_normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def small_problem(seed=0, v=4, k=3, d=6, t=3, counts=(4, 2, 3)):
    """Raw views (N, V, D), labels (N,) with unequal shots, raw text (T, K, D)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(k).repeat_interleave(torch.tensor(counts))
    return torch.randn(len(labels), v, d, generator=g) + 0.5, labels, 3.0 * torch.randn(t, k, d, generator=g)


def separable_problem(seed=0, k=5, d=64, shots=8, v=4, test_per_class=40, text_noise=4.0):
    """Class centres, noisy views and test features, a weak text classifier (noisy centres)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g)
    labels = torch.arange(k).repeat_interleave(shots)
    views = centres[labels, None, :] + 0.8 * torch.randn(k * shots, v, d, generator=g)
    test_y = torch.arange(k).repeat_interleave(test_per_class)
    test_x = centres[test_y] + 0.8 * torch.randn(len(test_y), d, generator=g)
    text = 3.0 * torch.nn.functional.normalize(centres + text_noise * torch.randn(k, d, generator=g), dim=-1)
    return views, labels, text[None], test_x, test_y


def np_lpp(views, labels, text, seed, *, epochs, quirk, alpha_every=10):
    """LP++ by hand: returns ((W, b, alpha) after ``epochs``, (W, b, alpha, lr_w, lr_alpha) at the start)."""
    g = torch.Generator().manual_seed(seed)
    n, v, d = views.shape
    k = text.shape[1]
    view = torch.randint(v, (n,), generator=g).numpy()
    bias = ((2 * torch.rand(k, generator=g) - 1) / math.sqrt(d)).double().numpy()
    f = np_normalize(views.double().numpy()[np.arange(n), view])
    y, th = labels.numpy(), np_normalize(np_normalize(text.double().numpy()).mean(0))
    onehot = np.eye(k)[y]
    w, sim = onehot.T @ f, f @ th.T  # W_k = class sum
    alpha = np.full(k, 250.0 * np.mean([sim[y == c, c].mean() for c in range(k)]))  # mean of class means
    lr_w, lr_a = 4 * n / np.linalg.eigvalsh(f.T @ f).max(), n / (4 * (sim**2).sum(0).max())
    start = (w.copy(), bias.copy(), alpha.copy(), lr_w, lr_a)
    bw, bb, gsum = np.zeros_like(w), np.zeros_like(bias), np.zeros(k)
    for e in range(1, epochs + 1):
        dz = (np_softmax(f @ w.T + bias + alpha * sim) - onehot) / n  # d mean CE / d logits
        gw, gb, ga = dz.T @ f, dz.sum(0), (dz * sim).sum(0)
        bw, bb = 0.9 * bw + gw, 0.9 * bb + gb
        w, bias, gsum = w - lr_w * bw, bias - lr_w * bb, gsum + ga
        if e % alpha_every == 0:
            alpha = alpha - lr_a * (gsum if quirk else ga)
    return (w, bias, alpha), start


def run(x, labels, text, seed=5, val=None, **cfg):
    return train_lpp(x, labels, text, LppConfig(**cfg), gen=torch.Generator().manual_seed(seed), val=val)


def accuracy(fit, x, y):
    f = torch.nn.functional.normalize(x, dim=-1)
    logits = f @ fit.weight.t() + fit.bias + fit.alpha * (f @ fit.text_hat.t())
    return float((logits.argmax(1) == y).double().mean() * 100)


# ---------------------------------------------------------------- the math


def test_init_and_step_sizes_by_hand():
    views, labels, text = small_problem()
    fit = run(views, labels, text, epochs=1, alpha_every=2)  # one (W, b) step, no alpha step yet
    (w1, b1, _), (w, b, a, lr_w, lr_a) = np_lpp(views, labels, text, 5, epochs=1, quirk=False, alpha_every=2)
    np.testing.assert_allclose(fit.alpha.double().numpy(), a, rtol=1e-5)  # alpha untouched: its init
    assert len(set(fit.alpha.tolist())) == 1
    assert fit.lr_w == pytest.approx(lr_w, rel=1e-6) and fit.lr_alpha == pytest.approx(lr_a, rel=1e-5)
    np.testing.assert_allclose(fit.weight.double().numpy(), w1, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fit.bias.double().numpy(), b1, rtol=1e-4, atol=1e-5)
    th = np_normalize(np_normalize(text.double().numpy()).mean(0))
    np.testing.assert_allclose(fit.text_hat.double().numpy(), th, rtol=1e-5)


@pytest.mark.parametrize("quirk", [False, True])
def test_updates_match_the_hand_computation(quirk):
    views, labels, text = small_problem()
    fit = run(views, labels, text, epochs=25, quirk=quirk)
    (w, b, a), _ = np_lpp(views, labels, text, 5, epochs=25, quirk=quirk)
    for got, want in ((fit.weight, w), (fit.bias, b), (fit.alpha, a)):
        np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-4, atol=1e-5)
    assert fit.epoch == 25 and fit.val_top1 == []


def test_the_quirk_changes_only_the_alpha_step():
    views, labels, text = small_problem()
    intended, quirk = run(views, labels, text, epochs=10), run(views, labels, text, epochs=10, quirk=True)
    # up to the first alpha step (after epoch 10) W and b are the same; the step differs by lr_a * sum_{e<10} g_e
    assert torch.equal(intended.weight, quirk.weight) and torch.equal(intended.bias, quirk.bias)
    assert not torch.allclose(intended.alpha, quirk.alpha)
    (_, _, a_int), _ = np_lpp(views, labels, text, 5, epochs=10, quirk=False)
    (_, _, a_quirk), _ = np_lpp(views, labels, text, 5, epochs=10, quirk=True)
    np.testing.assert_allclose(intended.alpha.double().numpy(), a_int, rtol=1e-5)
    np.testing.assert_allclose(quirk.alpha.double().numpy(), a_quirk, rtol=1e-5)
    once = [run(views, labels, text, epochs=1, alpha_every=1, quirk=q).alpha for q in (False, True)]
    assert torch.equal(*once)  # with no history to accumulate, the two agree


def test_val_selection_keeps_the_last_best_epoch():
    # this draw peaks at epochs 8 and 9 (a tie), then drops: neither the first best nor the last epoch
    views, labels, text, test_x, test_y = separable_problem(seed=1, shots=2, text_noise=5.0)
    val = (test_x[::7], test_y[::7])
    accs = [accuracy(run(views, labels, text, seed=2, epochs=e), *val) for e in range(1, 13)]
    chosen = run(views, labels, text, seed=2, val=val, epochs=12)
    assert chosen.val_top1 == pytest.approx(accs)
    assert accs.count(max(accs)) > 1 and chosen.epoch == max(e for e, a in enumerate(accs, 1) if a == max(accs)) < 12
    again = run(views, labels, text, seed=2, epochs=chosen.epoch)
    assert torch.equal(chosen.weight, again.weight) and torch.equal(chosen.alpha, again.alpha)


def test_all_views_mode_uses_every_view():
    views, labels, text = small_problem(counts=(3, 3, 3))
    f, y = training_set(views, labels, torch.Generator(), "all")
    assert f.shape == (36, 6) and torch.equal(y, labels.repeat_interleave(4))
    torch.testing.assert_close(f.norm(dim=-1), torch.ones(36))
    assert run(views, labels, text, epochs=2, views="all").weight.shape == (3, 6)


def _lpp_run(views, labels, seed, val=None):
    return LppRun(views, labels, torch.Generator().manual_seed(seed), val)  # a fresh generator each time


@pytest.mark.parametrize("quirk", [False, True])
def test_a_stacked_run_equals_the_run_alone_whatever_its_neighbours(quirk):
    """Every seed of a shot count trains in one stack (one param group per run: its own lr_w); each
    run's (W, b, alpha), kept epoch and val curve are the run's alone, beside two different sets of
    neighbours: other data with more images (the run's full batch padded), val sets of other sizes,
    a twin of the run (equal step sizes: one param group), a run without val (its own stack)."""
    views, labels, text, test_x, test_y = separable_problem(seed=1, shots=2, text_noise=5.0)
    val = (test_x[::7], test_y[::7])
    other_v, other_l, _, ox, oy = separable_problem(seed=3, shots=3)
    cfg = LppConfig(epochs=24, alpha_every=5, quirk=quirk)
    mine = [lambda s=s: _lpp_run(views, labels, s, val) for s in (2, 6)]
    crowds = [
        lambda: [_lpp_run(other_v, other_l, 9, (ox[::3], oy[::3]))],
        lambda: [
            _lpp_run(views, labels, 2, val),
            _lpp_run(other_v, other_l, 4, (ox[::11], oy[::11])),
            _lpp_run(other_v, other_l, 5),
        ],
    ]
    alone = [train_lpps([make()], text, cfg)[0] for make in mine]
    assert any(a.epoch < cfg.epochs for a in alone)  # the last-best rule acts
    for crowd in crowds:
        got = train_lpps(crowd()[:1] + [make() for make in mine] + crowd()[1:], text, cfg)[1:3]
        for fit, want in zip(got, alone, strict=True):
            assert (fit.epoch, fit.val_top1, fit.lr_w, fit.lr_alpha) == (
                want.epoch,
                want.val_top1,
                want.lr_w,
                want.lr_alpha,
            )
            for name in ("weight", "bias", "alpha"):
                torch.testing.assert_close(getattr(fit, name), getattr(want, name), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- through fit_dataset


def cfg_for(tmp_path, fit_kw=None, **settings) -> FitConfig:
    """4 shots, seed 1, lp++'s defaults but ``settings``; ``fit_kw`` overrides the FitConfig."""
    base = {
        "shots": (4,),
        "seeds": (1,),
        "cache_dir": str(tmp_path / "cache"),
        "results_dir": str(tmp_path / "results"),
    }
    return FitConfig(method="lp++", method_config=LppConfig(**settings), **{**base, **(fit_kw or {})})


def test_fit_beats_zero_shot_selects_on_val_and_the_artifact_rebuilds_it(tmp_path):
    path = clustered(tmp_path / "cache", templates=3)
    [result] = fit_dataset("eurosat", REF, cfg_for(tmp_path))
    test, zs = result["metrics"]["test"]["top1"], result["zero_shot"]["test"]["top1"]
    assert test > zs + 20, (test, zs)
    sel, accs = result["selection"], result["selection"]["val_top1"]
    assert sel["on"] == "val" and len(accs) == 300 and sel["candidates"] == {"epochs": 300}
    chosen = sel["chosen"]["epoch"]
    assert accs[chosen - 1] == max(accs) and all(a < max(accs) for a in accs[chosen:])  # the LAST best
    assert result["metrics"]["val"]["top1"] == pytest.approx(max(accs))
    [folder] = {p.parent for p in (tmp_path / "results").rglob("result.json")}
    tensors, class_weights, meta = load_adapter(folder / "adapter.safetensors")
    assert set(tensors) == {"weight", "bias", "alpha", "text_hat"} and meta["method_config"]["epoch"] == chosen
    with st.open_store(path) as s:
        feats, labels, _ = s.read("test")
    predict = get_method("lp++").from_artifact(tensors, meta, class_weights, meta["logit_scale"], "cpu")
    accuracy = (predict(torch.from_numpy(feats)).argmax(1).numpy() == labels).mean() * 100
    assert accuracy == pytest.approx(test, abs=1e-9)


def test_the_artifact_gives_the_runs_logits_exactly(tmp_path):
    path = clustered(tmp_path / "cache")
    cfg = cfg_for(tmp_path, epochs=20)
    with st.open_store(path) as store:
        data = stage.load_fit_data(store, "eurosat")
        plan = RunPlan(1, stage.sample_splits(data, 4, cfg)[1], "k", tmp_path)
        [trained] = get_method("lp++").train(stage.fit_context(store, data, 4, cfg), [plan])
        feats = torch.from_numpy(store.read("test")[0])
    tensors, meta = trained.artifact
    rebuilt = get_method("lp++").from_artifact(tensors, json.loads(json.dumps(meta)), data.class_weights, 1.0, "cpu")
    assert torch.equal(rebuilt(feats), trained.predict(feats))


def test_one_call_for_every_seed_gives_each_seed_its_run_alone(tmp_path):
    """train(ctx, plans) stacks every seed of the shot count; each result is that seed's run alone."""
    path = clustered(tmp_path / "cache")
    cfg = cfg_for(tmp_path, {"seeds": (1, 2, 3)}, epochs=25, quirk=True)
    with st.open_store(path) as store:
        data = stage.load_fit_data(store, "eurosat")
        ctx, splits = stage.fit_context(store, data, 4, cfg), stage.sample_splits(data, 4, cfg)
        plans = [RunPlan(s, splits[s], "k", tmp_path) for s in (1, 2, 3)]
        together = get_method("lp++").train(ctx, plans)
        alone = [get_method("lp++").train(ctx, [plan])[0] for plan in plans]
    for t, a in zip(together, alone, strict=True):
        assert t.selection == a.selection and t.selection["on"] == "val"
        assert t.config["step_sizes_used"] == a.config["step_sizes_used"]
        for name, tensor in a.artifact[0].items():
            torch.testing.assert_close(t.artifact[0][name], tensor, rtol=1e-5, atol=1e-5)


def test_training_and_selection_read_only_train_and_val(tmp_path, monkeypatch):
    clustered(tmp_path / "cache")
    reads = reads_while_training(monkeypatch, "lp++", lambda: fit_dataset("eurosat", REF, cfg_for(tmp_path, epochs=20)))
    assert {s for s, during in reads if during} == {"train", "val"} and ("test", False) in reads


def test_same_seed_same_bits_other_seed_other_weights(tmp_path):
    clustered(tmp_path / "cache")
    cfg = cfg_for(tmp_path, {"seeds": (1, 2)}, epochs=30)
    first = fit_dataset("eurosat", REF, cfg)
    files = sorted((tmp_path / "results").rglob("adapter.safetensors"))
    before = [load_adapter(f)[0] for f in files]
    again = fit_dataset("eurosat", REF, dataclasses.replace(cfg, force=True))
    assert [(r["metrics"], r["selection"]) for r in first] == [(r["metrics"], r["selection"]) for r in again]
    for f, b in zip(files, before, strict=True):
        after = load_adapter(f)[0]
        assert all(torch.equal(b[k], after[k]) for k in b)
    assert not torch.equal(before[0]["weight"], before[1]["weight"])


def test_the_quirk_is_recorded_and_changes_the_run(tmp_path):
    clustered(tmp_path / "cache")
    results = {
        q: fit_dataset("eurosat", REF, cfg_for(tmp_path, epochs=30, select="last", quirk=q))[0] for q in (False, True)
    }
    alphas = {}
    for quirk, result in results.items():
        assert result["config"]["quirk"] is quirk
        assert ("never zeroed" in result["config"]["alpha_update"]) == quirk
        noted = [d for d in result["protocol"]["differences"] if "alpha stepped" in d]
        assert bool(noted) != quirk  # the paper's update departs from the code behind the numbers
        [path] = (tmp_path / "results").rglob(f"*{result['run_key'][:10]}/adapter.safetensors")
        alphas[quirk] = load_adapter(path)[0]["alpha"]
    assert results[False]["run_key"] != results[True]["run_key"] and not torch.equal(alphas[False], alphas[True])
    assert results[False]["config"]["alpha_update"] != results[True]["config"]["alpha_update"]


def test_without_val_the_last_epoch_and_the_differences(tmp_path):
    clustered(tmp_path / "cache", "imagenet", with_val=False, per_class=(6, 0, 5), aug_scale=(0.5, 1.0))
    [result] = fit_dataset("imagenet", REF, cfg_for(tmp_path, epochs=12, alpha_every=5, views="all"))
    sel, diffs = result["selection"], result["protocol"]["differences"]
    assert sel["on"] == "none" and sel["chosen"] == {"epoch": 12} and "no val" in sel["reason"]
    assert result["metrics"]["val"] is None
    for text in (
        "the last epoch, no val (LP++: the last best epoch on a 4-shot val",
        "all 3 cached views per image in the full batch (LP++: one view per image)",
        "text ensemble of 1 template(s) (default) (LP++ on ImageNet: the 7-template ensemble)",
        "epochs 12 (LP++: 300)",
        "alpha step every 5 (LP++: 10)",
        "fp32 training",
    ):
        assert any(d.startswith(text) for d in diffs), (text, diffs)
    assert not any("scale" in d for d in diffs)  # (0.5, 1) is LP++'s crop


def test_cli_quirk_option(tmp_path, cli):
    clustered(tmp_path / "cache")
    common = ["--dataset", "eurosat", "--model", "RN50", "--pretrained", "none", "--shots", "2", "--seeds", "1"]
    where = ["--cache-dir", str(tmp_path / "cache"), "--results-dir", str(tmp_path / "results")]
    code, out, err = cli("fit", *common, *where, "--method", "lp++", "--lpp-quirk", "true", "--lpp-epochs", "20")
    assert code == 0, out + err
    [path] = (tmp_path / "results").rglob("result.json")
    config = json.loads(path.read_text())["config"]
    assert config["quirk"] is True and config["epochs"] == 20
