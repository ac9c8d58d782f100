"""Cross-modal linear probe: the math against an independent re-implementation written here (the
documented draws replicated with their own generator, the gradient by autograd, AdamW written out:
decay W by lr * wd, then Adam), then the registered method through ``fit_dataset``."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from stores import REF, clustered, reads_while_training

from cacheclip.errors import ConfigError
from cacheclip.features import store as st
from cacheclip.fit.methods import cross_modal as xm
from cacheclip.fit.methods import get_method
from cacheclip.fit.stage import FitConfig, fit_dataset
from cacheclip.results.runs import load_adapter

S = 100.0
QUICK = {"lrs": (1e-2, 1e-3), "weight_decays": (0.0,), "iters": 200, "eval_every": 20}


def _data(n=10, v=3, t=2, k=4, d=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    views = torch.randn(n, v, d, generator=g, dtype=dtype)
    return views, torch.arange(n) % k, torch.randn(t, k, d, generator=g, dtype=dtype)


def _separable(seed, k=5, d=32, shots=8, v=4, val_shots=4):
    """Clusters whose text (2 templates) leans as much towards the next class as towards its own."""
    g = torch.Generator().manual_seed(seed)
    means = F.normalize(torch.randn(k, d, generator=g), dim=-1)
    text = (means + means.roll(1, 0))[None] + 0.5 * torch.randn(2, k, d, generator=g) / math.sqrt(d)

    def draw(m):
        y = torch.arange(k).repeat_interleave(m)
        return means[y] + 0.08 * torch.randn(len(y), d, generator=g), y

    clean, labels = draw(shots)
    return clean[:, None] + 0.05 * torch.randn(len(labels), v, d, generator=g), labels, text, draw(val_shots)


def _cfg(tmp_path: Path, method_kw: dict | None = None, **kw) -> FitConfig:
    base = {
        "shots": (4,),
        "seeds": (1,),
        "cache_dir": str(tmp_path / "cache"),
        "results_dir": str(tmp_path / "results"),
    }
    settings = xm.CrossModalConfig(**{**QUICK, **(method_kw or {})})
    return FitConfig(method="cross-modal", method_config=settings, **{**base, **kw})


def _adapter(tmp_path: Path):
    [result] = (tmp_path / "results").rglob("result.json")
    return load_adapter(result.parent / "adapter.safetensors")


# ---------------------------------------------------------------- the math


def test_official_grid_and_schedule():
    grid = xm.CrossModalConfig().grid()
    assert len(grid) == 12 and grid[0] == xm.Candidate(1e-3, 0.0, 8) and grid[1] == xm.Candidate(1e-3, 0.0, 32)
    assert grid[-1] == xm.Candidate(1e-4, 1e-4, 32) and xm.LOGIT_SCALE == pytest.approx(100.0, rel=1e-6)
    lr = 1e-3
    assert xm.lr_at(0, lr, 12800) == 1e-5 and xm.lr_at(1, lr, 12800) == pytest.approx(lr / 50)
    assert xm.lr_at(49, lr, 12800) == pytest.approx(lr * 49 / 50) and xm.lr_at(50, lr, 12800) == lr
    assert xm.lr_at(51, lr, 12800) == pytest.approx(lr * (1 + math.cos(math.pi / 12800)) / 2)
    assert 0 < xm.lr_at(12799, lr, 12800) < 1e-3 * lr


def _replicated_batches(g, n, v, num_text, b_img, b_txt, iters):
    """The documented draws, written independently: per iteration the image half then the text
    half, each starting a new pass (images: randint(V, (N,)) then randperm(N); text: randperm)
    when its previous pass has no full chunk left."""
    out, img_queue, txt_queue = [], [], []
    for _ in range(iters):
        if not img_queue:
            view = torch.randint(v, (n,), generator=g)
            perm = torch.randperm(n, generator=g)
            img_queue = [(perm[s * b_img : (s + 1) * b_img], view) for s in range(n // b_img)]
        if not txt_queue:
            tperm = torch.randperm(num_text, generator=g)
            txt_queue = [tperm[s * b_txt : (s + 1) * b_txt] for s in range(num_text // b_txt)]
        (idx, view), tidx = img_queue.pop(0), txt_queue.pop(0)
        out.append((idx, view[idx], tidx))
    return out


def _rows_as_batches(rows: torch.Tensor, v: int, n: int, b_img: int):
    """(image index, view index, text row) per iteration from batch_rows' (S, B) rows."""
    return [(r[:b_img] // v, r[:b_img] % v, r[b_img:] - n * v) for r in rows]


@pytest.mark.parametrize("block", [1, 3, 7, 64])
def test_batches_are_half_images_half_text(block):
    n, v, t, k = 10, 3, 2, 4  # 8 text samples; batch 8 = 4 images + 4 texts
    stream = xm.batch_rows(n, v, t * k, 8, 0.5, torch.Generator().manual_seed(11), block)
    rows = torch.cat([next(stream) for _ in range(-(-21 // block))])[:21]
    got = _rows_as_batches(rows, v, n, 4)
    want = _replicated_batches(torch.Generator().manual_seed(11), n, v, t * k, 4, 4, 21)
    for (gi, gv, gt), (wi, wv, wt) in zip(got, want, strict=True):  # the same draws whatever the block
        assert torch.equal(gi, wi) and torch.equal(gv, wv) and torch.equal(gt, wt)
    assert len(set(torch.cat([got[0][0], got[1][0]]).tolist())) == 8  # no repeat within a pass
    feats, labels = xm.text_samples(torch.randn(t, k, 5))
    assert labels.tolist() == [0, 1, 2, 3, 0, 1, 2, 3] and feats.shape == (8, 5)
    assert xm.batch_size_valid(8, n, t * k, 0.5) and not xm.batch_size_valid(8, n, 4, 0.5)  # halves < their sets
    assert not xm.batch_size_valid(32, 100, 16, 0.5) and xm.batch_size_valid(32, 17, 17, 0.5)
    with pytest.raises(ValueError):
        next(xm.batch_rows(n, v, 4, 8, 0.5, torch.Generator(), block))


def test_three_adamw_steps_match_independent():
    views, labels, text = _data()
    n, v, _ = views.shape
    t, k, d = text.shape
    lr, wd, (b1, b2), eps, iters = 5e-2, 1e-2, (0.9, 0.999), 1e-8, 3
    opts = xm.CrossModalConfig(init="random", iters=iters)
    got = xm.train_candidate(views, labels, text, xm.Candidate(lr, wd, 8), opts, seed=4)

    g = torch.Generator().manual_seed(4)
    bound = 1 / math.sqrt(d)
    w = torch.rand(k, d, generator=g, dtype=torch.float64) * 2 * bound - bound  # nn.Linear's init
    text_x, text_y = F.normalize(text.reshape(t * k, d), dim=-1), torch.arange(k).repeat(t)
    m, s2 = torch.zeros_like(w), torch.zeros_like(w)
    for i, (idx, view, tidx) in enumerate(_replicated_batches(g, n, v, t * k, 4, 4, iters)):
        step_lr = 1e-5 if i == 0 else lr * i / 50  # linear warm-up
        x = torch.cat([F.normalize(views[idx, view], dim=-1), text_x[tidx]])
        wr = w.clone().requires_grad_()
        F.cross_entropy(xm.LOGIT_SCALE * x @ wr.T, torch.cat([labels[idx], text_y[tidx]])).backward()  # fixed 4.60517
        w = w * (1 - step_lr * wd)
        m = b1 * m + (1 - b1) * wr.grad
        s2 = b2 * s2 + (1 - b2) * wr.grad**2
        w = w - step_lr * (m / (1 - b1 ** (i + 1))) / ((s2 / (1 - b2 ** (i + 1))).sqrt() + eps)
    assert got.best_iter == iters - 1 and got.best_correct is None  # no val: the last weights
    assert torch.allclose(got.weight, w, rtol=0, atol=1e-12)
    assert torch.allclose(xm.probe_logits(views[:, 0], got.weight, S), S * F.normalize(views[:, 0], dim=-1) @ w.T)


def test_a_stacked_run_equals_the_run_alone_whatever_its_neighbours():
    """Every seed x configuration of a shot count trains in one stack; each run's weights, early
    stopping and val score are the run's alone, with any other runs beside it."""
    views, labels, text, val = _separable(6)
    other_views, other_labels, _, other_val = _separable(7)
    opts = xm.CrossModalConfig(
        lrs=(1e-2, 1e-3), weight_decays=(0.0, 1e-2), batch_sizes=(8, 16), iters=45, eval_every=10
    )
    runs = [xm.RunInput(views, labels, c, 100 + j, val) for j, c in enumerate(opts.grid())]
    neighbours = [xm.RunInput(other_views, other_labels, c, 7 + j, other_val) for j, c in enumerate(opts.grid()[:5])]
    alone = [xm.train_runs([run], text, opts)[0] for run in runs]
    for stack in (runs, neighbours + runs, runs[::-1] + neighbours[:2]):
        trained = {id(r): t for r, t in zip(stack, xm.train_runs(stack, text, opts), strict=True)}
        for run, want in zip(runs, alone, strict=True):
            got = trained[id(run)]
            assert (got.best_iter, got.best_correct) == (want.best_iter, want.best_correct)
            assert torch.allclose(got.weight, want.weight, rtol=0, atol=1e-5)


def test_zeroshot_init_is_the_normalised_template_mean():
    _, _, text = _data(t=3)
    want = F.normalize(sum(F.normalize(text[i], dim=-1) for i in range(3)) / 3, dim=-1)
    assert torch.allclose(xm.init_weights(text, "zeroshot", torch.Generator()), want, rtol=0, atol=1e-12)
    f = torch.randn(6, 8, dtype=torch.float64)
    zero_shot = S * F.normalize(f, dim=-1) @ F.normalize(text[0], dim=-1).T
    assert torch.allclose(xm.probe_logits(f, xm.zeroshot_weights(text[:1]), S), zero_shot, rtol=0, atol=1e-10)


def test_early_stopping_uses_only_the_val_passed():
    views, labels, text, (val_a, ya) = _separable(2)
    val_b = val_a[torch.randperm(len(ya), generator=torch.Generator().manual_seed(0))]  # labels now wrong
    opts, cand = xm.CrossModalConfig(iters=301, eval_every=20), xm.Candidate(1e-3, 0.0, 8)
    runs, snaps = {}, {"a": [], "b": []}
    for name, val in (("a", (val_a, ya)), ("b", (val_b, ya))):
        hook = lambda i, w, s=snaps[name]: s.append((i, w))  # noqa: E731
        runs[name] = xm.train_candidate(views, labels, text, cand, opts, 5, val, on_eval=hook)
    assert [i for i, _ in snaps["a"]] == list(range(0, 301, 20))
    assert all(torch.equal(wa, wb) for (_, wa), (_, wb) in zip(snaps["a"], snaps["b"], strict=True))  # val-blind
    for name, vx in (("a", val_a), ("b", val_b)):
        counts = [(int((F.normalize(vx, dim=-1) @ w.T).argmax(1).eq(ya).sum()), i) for i, w in snaps[name]]
        best = max(c for c, _ in counts)
        first = next(i for c, i in counts if c == best)  # the earliest best evaluation
        assert (runs[name].best_iter, runs[name].best_correct) == (first, best)
        assert torch.equal(runs[name].weight, dict(snaps[name])[first])
    assert runs["a"].best_iter > 0  # training helped on the true val


def test_grid_search_records_each_entry_and_keeps_the_first_best():
    views, labels, text, val = _separable(3)
    opts = xm.CrossModalConfig(lrs=(1e-3, 1e-4), weight_decays=(0.0,), batch_sizes=(8, 64), iters=121, eval_every=40)
    chosen, records = xm.grid_search(views, labels, text, opts, val, seed=9)
    assert [r["valid"] for r in records] == [True, False, True, False]  # 64: 32 texts, not < 2 x 5
    for r in (records[0], records[2]):  # each entry is its own run, from its recorded seed
        cand = xm.Candidate(r["lr"], r["weight_decay"], r["batch_size"])
        run = xm.train_candidate(views, labels, text, cand, opts, r["seed"], val)
        assert (r["best_iter"], r["val_top1"]) == (run.best_iter, 100.0 * run.best_correct / len(val[1]))
    first_best = max((records[0], records[2]), key=lambda r: r["val_top1"])  # max() keeps the first of ties
    assert dataclasses.asdict(chosen.candidate) == {k: first_best[k] for k in ("lr", "weight_decay", "batch_size")}
    with pytest.raises(ConfigError):
        xm.grid_search(views[:4], labels[:4], text, opts, val, seed=9)  # no batch size fits 4 images


def test_same_seed_same_bits_and_no_global_rng():
    views, labels, text, val = _separable(4)
    opts = xm.CrossModalConfig(init="random", lrs=(1e-3,), weight_decays=(0.0,), iters=60, eval_every=20)

    def run(seed, global_seed):
        torch.manual_seed(global_seed)  # must not matter: all draws come from the run's seed
        return xm.grid_search(views, labels, text, opts, val, seed=seed)

    (a, ra), (b, rb), (c, _) = run(1, 0), run(1, 777), run(2, 0)
    assert torch.equal(a.weight, b.weight) and ra == rb and not torch.equal(a.weight, c.weight)


# ---------------------------------------------------------------- the registered method


def test_fit_beats_zero_shot_and_the_artifact_rebuilds_it(tmp_path):
    path = clustered(tmp_path / "cache", templates=3)
    [result] = fit_dataset("eurosat", REF, _cfg(tmp_path))
    test, zs = result["metrics"]["test"]["top1"], result["zero_shot"]["test"]["top1"]
    assert test > zs + 20, (test, zs)
    sel, valid = result["selection"], [r for r in result["selection"]["candidates"] if r["valid"]]
    assert sel["on"] == "val" and len(sel["candidates"]) == 4 and valid
    best = max(valid, key=lambda r: r["val_top1"])
    assert sel["chosen"] == {
        **{k: best[k] for k in ("lr", "weight_decay", "batch_size")},
        "iteration": best["best_iter"],
        "init": "zeroshot",
    }
    assert result["metrics"]["val"]["top1"] == pytest.approx(best["val_top1"])
    assert result["config"]["init"] == "zeroshot" and result["config"]["text_samples"] == "3 template(s) x 6 classes"
    tensors, class_weights, meta = _adapter(tmp_path)
    assert set(tensors) == {"weight"} and tensors["weight"].shape == class_weights.shape
    predict = get_method("cross-modal").from_artifact(tensors, meta, class_weights, meta["logit_scale"], "cpu")
    with st.open_store(path) as s:
        feats, labels, _ = s.read("test")
    acc = (predict(torch.from_numpy(feats)).argmax(1) == torch.from_numpy(labels)).double().mean().item() * 100
    assert acc == pytest.approx(test)


def test_training_and_selection_never_read_test(tmp_path, monkeypatch):
    clustered(tmp_path / "cache")
    reads = reads_while_training(monkeypatch, "cross-modal", lambda: fit_dataset("eurosat", REF, _cfg(tmp_path)))
    assert {s for s, during in reads if during} == {"train", "val"} and ("test", False) in reads


def test_same_seed_same_run_bitwise_and_init_recorded(tmp_path):
    clustered(tmp_path / "cache")
    cfg = _cfg(tmp_path, {"init": "random"})
    [first] = fit_dataset("eurosat", REF, cfg)
    a, _, _ = _adapter(tmp_path)
    [again] = fit_dataset("eurosat", REF, dataclasses.replace(cfg, force=True))
    b, _, _ = _adapter(tmp_path)
    assert again["metrics"] == first["metrics"] and torch.equal(a["weight"], b["weight"])
    assert first["config"]["init"] == first["selection"]["chosen"]["init"] == "random"
    assert any(d.startswith("initialisation: random") for d in first["protocol"]["differences"])


def test_without_val_a_grid_is_refused_and_one_configuration_trains_to_the_end(tmp_path):
    clustered(tmp_path / "cache", "imagenet", with_val=False, per_class=(6, 0, 5))
    with pytest.raises(ConfigError) as refused:
        fit_dataset("imagenet", REF, _cfg(tmp_path))
    assert "--no-val holdout" in refused.value.hint and "--xmodal-lr" in refused.value.hint
    one = {"lrs": (1e-2,), "batch_sizes": (8,)}
    [result] = fit_dataset("imagenet", REF, _cfg(tmp_path, one))
    sel = result["selection"]
    assert sel["on"] == "none" and sel["chosen"]["iteration"] == QUICK["iters"] - 1 and "no val" in sel["reason"]
    assert result["metrics"]["val"] is None
    templates = next(d for d in result["protocol"]["differences"] if d.startswith("ImageNet text samples"))
    assert "official: the 7 imagenet7 templates (--classifier ensemble of a default ImageNet store" in templates
    [held] = fit_dataset("imagenet", REF, _cfg(tmp_path, no_val="holdout"))
    assert held["selection"]["on"] == "holdout" and held["metrics"]["val"] is not None
