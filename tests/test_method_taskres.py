"""TaskRes: the math against an independent re-implementation written here from the formulas
(autograd for the gradient, Adam written out from Kingma & Ba with L2 decay added to the gradient),
then the registered method through ``fit_dataset`` on synthetic stores."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from dispatch import CountOps
from stores import REF, clustered, reads_while_training

from cacheclip.datasets.templates import IMAGENET7
from cacheclip.features import store as st
from cacheclip.fit.methods import FitContext, FitData, get_method
from cacheclip.fit.methods import taskres as tr
from cacheclip.fit.stage import FitConfig, fit_dataset
from cacheclip.results.runs import load_adapter

S = 100.0
QUICK = {"lr": 0.05, "epochs": 30}  # converges on the toy stores in well under a second


def _data(n=12, v=3, k=4, d=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, v, d, generator=g, dtype=dtype),
        torch.arange(n) % k,
        torch.randn(k, d, generator=g, dtype=dtype),
    )


def _forward_loss(x, t, alpha, f, y):
    """CE of 100 * normalize(f) . normalize(t + alpha x), autograd-friendly."""
    w = t + alpha * x
    return F.cross_entropy(S * (f / f.norm(dim=1, keepdim=True)) @ (w / w.norm(dim=1, keepdim=True)).T, y)


def _cfg(tmp_path: Path, **settings) -> FitConfig:
    return FitConfig(
        method="taskres",
        method_config=tr.TaskResConfig(**{**QUICK, **settings}),
        shots=(4,),
        seeds=(1,),
        cache_dir=str(tmp_path / "cache"),
        results_dir=str(tmp_path / "results"),
    )


def _test_split(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    with st.open_store(path) as s:
        feats, labels, _ = s.read("test")
    return torch.from_numpy(feats), torch.from_numpy(labels)


# ---------------------------------------------------------------- the math


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_written_out_gradient_is_autograds_run_by_run(dtype):
    """residual_loss for R runs (each its own alpha, batch and padding rows -1) against autograd
    through _forward_loss, run by run: the loss and dL/dx."""
    views, labels, t = _data(dtype=dtype)
    alphas = [0.7, 0.0, 2.0]
    x = (0.3 * torch.randn(3, *t.shape, generator=torch.Generator().manual_seed(5), dtype=dtype)).requires_grad_()
    f = torch.stack([views[:, j] for j in range(3)])  # (R, N, D): a different view per run
    y = torch.stack([labels, labels.roll(1), labels])
    y[1, 9:] = -1  # run 1's batch: 9 real rows, 3 padding
    got = tr.residual_loss(t, torch.tensor(alphas, dtype=dtype), S)({"residual": x}, f, y)
    (got * torch.tensor([1.0, 2.0, 0.5], dtype=dtype)).sum().backward()  # a weight per run reaches its gradient
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    for r, (alpha, weight) in enumerate(zip(alphas, [1.0, 2.0, 0.5], strict=True)):
        xr = x[r].detach().clone().requires_grad_()
        real = y[r] >= 0
        want = _forward_loss(xr, t, alpha, f[r][real], y[r][real])
        (weight * want).backward()
        assert torch.allclose(got[r], want, rtol=0, atol=tol * 10)
        assert torch.allclose(x.grad[r], xr.grad, rtol=0, atol=tol)
    assert torch.equal(x.grad[1], torch.zeros_like(t))  # alpha 0: no gradient


def test_the_loss_is_the_same_operations_for_any_number_of_runs():
    views, labels, t = _data(dtype=torch.float32)

    def ops(r):
        x = torch.zeros(r, *t.shape, requires_grad=True)
        loss = tr.residual_loss(t, torch.linspace(0.5, 1.0, r), S)
        with CountOps() as counter:
            loss({"residual": x}, views[:, 0].expand(r, -1, -1), labels.expand(r, -1)).sum().backward()
        return counter.count

    assert ops(2) == ops(3) == ops(7)


@pytest.mark.parametrize("fused", [True, False])
def test_three_epochs_match_independent_adam(fused):
    """N = 12, batch 5: 2 steps an epoch (the last 2 images dropped), 3 epochs, warm-up 1."""
    views, labels, t = _data()
    n, v, _ = views.shape
    alpha, lr, wd, (b1, b2), eps, epochs, batch = 0.5, 0.05, 5e-4, (0.9, 0.999), 1e-8, 3, 5
    cfg = tr.TaskResConfig(batch_size=batch, weight_decay=wd, betas=(b1, b2))
    got = tr.train_residual(views, labels, t, S, alpha, lr, epochs, cfg, 7, fused=fused)

    lrs = [1e-5, lr, lr * (1 + math.cos(math.pi / 3)) / 2]  # Dassl's schedule by hand
    g = torch.Generator().manual_seed(7)
    x = torch.zeros_like(t)
    m, s2, step = torch.zeros_like(t), torch.zeros_like(t), 0
    for e in range(epochs):
        view = torch.randint(v, (n,), generator=g)
        perm = torch.randperm(n, generator=g)
        for sidx in range(n // batch):
            idx = perm[sidx * batch : (sidx + 1) * batch]
            xr = x.clone().requires_grad_()
            _forward_loss(xr, t, alpha, views[idx, view[idx]], labels[idx]).backward()
            grad = xr.grad + wd * x
            step += 1
            m = b1 * m + (1 - b1) * grad
            s2 = b2 * s2 + (1 - b2) * grad * grad
            x = x - lrs[e] * (m / (1 - b1**step)) / ((s2 / (1 - b2**step)).sqrt() + eps)
    assert step == 6 and tr.lr_per_epoch(lr, epochs) == pytest.approx(lrs, rel=1e-15)
    assert x.abs().max() > 1e-3  # the residual really moved
    assert torch.allclose(got, x, rtol=0, atol=1e-12)
    want = S * F.normalize(views[:, 0], dim=-1) @ F.normalize(t + alpha * x, dim=-1).T
    assert torch.allclose(tr.taskres_logits(views[:, 0], t, got, alpha, S), want, rtol=0, atol=1e-9)


def test_a_stacked_run_equals_the_run_alone_whatever_its_neighbours():
    """Every seed x alpha of a shot count trains in one stack; each run's residual and best val
    epoch are the run's alone, with any other runs beside it (other data, alphas, seeds, sizes)."""
    views, labels, _ = _data(n=20, v=3, dtype=torch.float32)
    other_views, other_labels, _ = _data(n=20, v=3, seed=1, dtype=torch.float32)
    small_views, small_labels, _ = _data(n=9, v=3, seed=2, dtype=torch.float32)  # another batch plan
    t = _data(seed=3, dtype=torch.float32)[2]
    val = (_data(n=16, v=1, seed=4, dtype=torch.float32)[0][:, 0], torch.arange(16) % 4)
    other_val = (val[0].flip(0), val[1])
    cfg = tr.TaskResConfig(batch_size=6)
    runs = [tr.ResidualRun(views, labels, a, s, val) for a in (0.5, 1.0) for s in (1, 2)]
    neighbours = [
        tr.ResidualRun(other_views, other_labels, 2.0, 7, other_val),
        tr.ResidualRun(small_views, small_labels, 0.5, 1, val),
        tr.ResidualRun(views, labels, 0.25, 3, other_val),
    ]

    def train(stack):
        return tr.train_residuals(stack, t, S, 0.05, 8, cfg, best_val=True)

    alone = [train([run])[0] for run in runs]
    assert all(a.epoch["rule"] == "best-val" and len(a.epoch["val_top1"]) == 8 for a in alone)
    assert len({a.epoch["chosen"] for a in alone}) > 1 or len({tuple(a.residual.flatten()[:3]) for a in alone}) > 1
    for stack in (runs, neighbours + runs, runs[::-1] + neighbours[:2]):
        trained = {id(r): t for r, t in zip(stack, train(stack), strict=True)}
        for run, want in zip(runs, alone, strict=True):
            got = trained[id(run)]
            assert got.epoch == want.epoch
            assert torch.allclose(got.residual, want.residual, rtol=0, atol=1e-5)


def test_batches_schedule_and_official_values():
    assert tr.batch_plan(6, 256) == (6, 1) and tr.batch_plan(600, 256) == (256, 2)  # Dassl's drop_last rule
    assert tr.lr_per_epoch(2e-3, 5) == pytest.approx([1e-5, 2e-3, 1.809017e-3, 1.309017e-3, 6.90983e-4])
    assert tr.official_values("oxford_flowers", 1) == tr.Official(1.0, 2e-3, 100, True)
    assert tr.official_values("imagenet", 16) == tr.Official(0.5, 2e-4, 200, True)
    assert tr.official_values("eurosat", 4).epochs == 100 and tr.official_values("eurosat", 8).epochs == 200
    assert tr.official_values("imagefolder:/photos", 16) == tr.Official(0.5, 2e-3, 200, False)


def test_zero_residual_or_zero_alpha_is_exactly_zero_shot():
    views, labels, t = _data(dtype=torch.float32)
    f = views[:, 0]
    zero_shot = S * (F.normalize(f, dim=-1) @ F.normalize(t, dim=-1).T)
    assert torch.equal(tr.taskres_logits(f, t, torch.zeros_like(t), 0.5, S), zero_shot)
    cfg = tr.TaskResConfig(batch_size=4)
    x = tr.train_residual(views, labels, t, S, 0.5, 2e-3, 3, cfg, 3)
    assert x.abs().max() > 0 and torch.equal(tr.taskres_logits(f, t, x, 0.0, S), zero_shot)
    frozen = tr.train_residual(views, labels, t, S, 0.0, 2e-3, 3, cfg, 3)
    assert torch.equal(frozen.abs(), torch.zeros_like(t))  # no gradient, and decay of 0 is 0


def test_same_seed_same_bits_and_no_global_rng():
    views, labels, t = _data(n=30, v=5, dtype=torch.float32)

    def run(seed, global_seed):
        torch.manual_seed(global_seed)  # must not matter: all draws come from the passed generator
        cfg = tr.TaskResConfig(batch_size=8)
        return tr.train_residual(views, labels, t, S, 0.5, 2e-3, 6, cfg, seed)

    a = run(1, 0)
    assert torch.equal(a, run(1, 12345)) and not torch.equal(a, run(2, 0))


# ---------------------------------------------------------------- the registered method


def test_fit_beats_zero_shot_and_the_artifact_rebuilds_it(tmp_path):
    path = clustered(tmp_path / "cache", templates=3)
    [result] = fit_dataset("eurosat", REF, _cfg(tmp_path, alphas=(0.5, 1.0, 2.0)))
    test, zs = result["metrics"]["test"]["top1"], result["zero_shot"]["test"]["top1"]
    assert test > zs + 20, (test, zs)
    sel = result["selection"]
    assert sel["on"] == "val" and [c["alpha"] for c in sel["candidates"]] == [0.5, 1.0, 2.0]
    scores = [c["val_top1"] for c in sel["candidates"]]
    assert sel["chosen"] == {"alpha": [0.5, 1.0, 2.0][scores.index(max(scores))]}  # the first best
    assert result["config"]["base"] == "raw mean of the 3 templates of 'default'"
    assert any(d.startswith("alpha chosen on the few-shot val") for d in result["protocol"]["differences"])

    tensors, class_weights, meta = load_adapter(tmp_path / "results" / _folder(tmp_path) / "adapter.safetensors")
    with st.open_store(path) as s:
        per_template, ensemble = s.text_features()
    assert torch.equal(tensors["base"], torch.from_numpy(per_template).mean(0))  # the raw mean, not the ensemble
    assert torch.equal(class_weights, torch.from_numpy(ensemble))
    predict = get_method("taskres").from_artifact(tensors, meta, class_weights, meta["logit_scale"], "cpu")
    feats, labels = _test_split(path)
    assert (predict(feats).argmax(1) == labels).double().mean().item() * 100 == pytest.approx(test)
    assert float(tensors["alpha"]) == sel["chosen"]["alpha"] and meta["method_config"]["lr"] == QUICK["lr"]


def _folder(tmp_path: Path) -> Path:
    [path] = (tmp_path / "results").rglob("result.json")
    return path.parent.relative_to(tmp_path / "results")


def test_training_and_selection_never_read_test(tmp_path, monkeypatch):
    clustered(tmp_path / "cache")
    reads = reads_while_training(
        monkeypatch, "taskres", lambda: fit_dataset("eurosat", REF, _cfg(tmp_path, alphas=(0.5, 2.0)))
    )
    assert {s for s, during in reads if during} == {"train", "val"} and ("test", False) in reads


def test_same_seed_same_run_bitwise(tmp_path):
    clustered(tmp_path / "cache")
    cfg = _cfg(tmp_path)
    [first] = fit_dataset("eurosat", REF, cfg)
    a, _, _ = load_adapter(tmp_path / "results" / _folder(tmp_path) / "adapter.safetensors")
    [again] = fit_dataset("eurosat", REF, dataclasses.replace(cfg, force=True))
    b, _, _ = load_adapter(tmp_path / "results" / _folder(tmp_path) / "adapter.safetensors")
    assert again["metrics"] == first["metrics"] and torch.equal(a["residual"], b["residual"])


def test_the_seeds_of_a_shot_count_train_together_as_each_alone(tmp_path):
    """fit trains every seed x alpha of a shot count in one stack: seed 2's run is the one fit
    gives with seed 2 alone (its residual within float tolerance, the same selection)."""
    clustered(tmp_path / "cache")
    cfg = _cfg(tmp_path, alphas=(0.5, 2.0))
    together = fit_dataset(
        "eurosat",
        REF,
        dataclasses.replace(cfg, seeds=(1, 2)),
    )
    alone_dir = tmp_path / "alone"
    [alone] = fit_dataset("eurosat", REF, dataclasses.replace(cfg, seeds=(2,), results_dir=str(alone_dir)))
    [mine] = [r for r in together if r["seed"] == 2]
    assert mine["run_key"] == alone["run_key"] and mine["selection"] == alone["selection"]
    [a] = [load_adapter(p)[0] for p in alone_dir.rglob("adapter.safetensors")]
    [b] = [
        load_adapter(p.parent / "adapter.safetensors")[0]
        for p in (tmp_path / "results").rglob("result.json")
        if '"seed": 2' in p.read_text()
    ]
    assert torch.allclose(a["residual"], b["residual"], rtol=0, atol=1e-5)


def test_alpha_zero_gives_the_zero_shot_run(tmp_path):
    clustered(tmp_path / "cache")  # one template: the base is the store's classifier exactly
    [result] = fit_dataset("eurosat", REF, _cfg(tmp_path, alphas=(0.0,)))
    assert result["metrics"]["test"] == result["zero_shot"]["test"]
    assert result["metrics"]["val"] == result["zero_shot"]["val"]


def test_without_val_the_official_alpha_is_used_and_recorded(tmp_path):
    clustered(tmp_path / "cache", "imagenet", with_val=False, per_class=(6, 0, 5))
    [result] = fit_dataset("imagenet", REF, _cfg(tmp_path, alphas=(0.25, 1.0), lr=None, epochs=None))
    sel = result["selection"]
    assert sel["on"] == "none" and sel["chosen"] == {"alpha": 0.5} and "official" in sel["reason"]
    assert result["config"]["lr"] == 2e-4 and result["config"]["epochs"] == 100  # ImageNet's, 4 shots
    diffs = result["protocol"]["differences"]
    base_line = next(d for d in diffs if d.startswith("ImageNet base"))
    assert "single template" in base_line and "(8)" in base_line


def _ctx(dataset: str, config: tr.TaskResConfig, *, views="aug", templates=1, spec="default") -> FitContext:
    data = FitData(
        dataset=dataset,
        store=Path("memory.h5"),
        attrs={"aug_scale": "[0.5, 1.0]", "templates_spec": spec},
        classnames=["a", "b"],
        class_weights=torch.ones(2, 4),
        classifier="synthetic",
        per_template=torch.ones(templates, 2, 4),
        templates=[f"t{i} {{}}" for i in range(templates)],
        logit_scale=100.0,
        train_labels=[0, 1],
        val_labels=[0, 1],
        train_paths=["t0", "t1"],
        val_paths=["v0", "v1"],
        aug_views=10,
    )
    hint = f"cacheclip extract --dataset {dataset} --templates {spec}"
    return FitContext(None, data, config, 16, views=views, selection="val", extract_hint=hint)


def test_differences_name_each_departure():
    official = tr.differences(_ctx("eurosat", tr.TaskResConfig()))
    assert len(official) == 2 and "scale [0.5, 1.0]" in official[0] and "Dassl" in official[1]
    generic = tr.differences(_ctx("imagefolder:/photos", tr.TaskResConfig(), views="clean"))
    assert generic[0].startswith("no augmentation") and "not in TaskRes's scripts" in generic[1]
    changed = tr.differences(_ctx("dtd", tr.TaskResConfig(alphas=(2.0,), lr=1e-3, epochs=10, batch_size=64)))
    for text in ("alpha 2 (official: 0.5)", "lr 0.001 (official: 0.002)", "epochs 10 (official: 200)", "batch size 64"):
        assert any(d.startswith(text) for d in changed), text
    other8 = tr.differences(_ctx("imagenet", tr.TaskResConfig(), templates=8, spec="/x/taskres.txt"))
    assert any(d.startswith("ImageNet base: raw mean of the 8 templates") for d in other8)
    official8 = _ctx("imagenet", tr.TaskResConfig(), templates=8)
    official8.data.templates = ["a photo of a {}.", *IMAGENET7]  # a default ImageNet store's 8, any order
    assert not any(d.startswith("ImageNet base") for d in tr.differences(official8))
    photo = tr.differences(_ctx("imagenet", tr.TaskResConfig(), spec="photo"))[-1]
    assert photo.startswith("ImageNet base: the single template's raw embedding (official: raw mean of")


def test_clean_views_train_on_the_clean_features(tmp_path):
    path = clustered(tmp_path / "cache")
    [result] = fit_dataset("eurosat", REF, dataclasses.replace(_cfg(tmp_path), views="clean"))
    assert result["config"]["views_used"] == "clean"
    assert result["protocol"]["differences"][0].startswith("no augmentation")
    tensors, _, _ = load_adapter(tmp_path / "results" / _folder(tmp_path) / "adapter.safetensors")
    index = [int(Path(p).stem) for p in result["fewshot"]["train_paths"]]  # the store names items train/<i>.jpg
    with st.open_store(path) as s:  # the same run by hand: the split's clean features as the only view
        feats, labels, _ = s.read("train", index)
        base = torch.from_numpy(s.text_features()[0]).mean(0)
    views, cfg = torch.from_numpy(feats)[:, None], tr.TaskResConfig(**QUICK)
    x = tr.train_residual(views, torch.from_numpy(labels), base, 100.0, 0.5, 0.05, 30, cfg, 1)
    assert torch.equal(tensors["residual"], x) and x.abs().max() > 0
