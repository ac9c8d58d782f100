"""fit --classes base-to-new (CoCoOp's protocol) on a generated store of 7 classes.

The labels' sorted order is neither the listing's order of first appearance nor the class
names' (folder) order, so the split must follow the sorted labels: base = labels 0..3, new = 4..6.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cacheclip.datasets.fewshot import sample_fewshot, sample_run, sample_run_with_holdout
from cacheclip.errors import ConfigError
from cacheclip.features import store as st
from cacheclip.features.export import export_split
from cacheclip.features.models import resolve_model
from cacheclip.fit import stage
from cacheclip.fit.methods import get_method, list_methods
from cacheclip.fit.stage import FitConfig, fit_dataset
from cacheclip.results.loading import result_problem
from cacheclip.results.runs import load_adapter

REF = resolve_model("RN50", "none")
DATASET = "dtd"  # a CoOp name, so that the CLI accepts it
NAMES = ["zebra", "apple", "mango", "kiwi", "banana", "cherry", "date"]  # label k's name: not sorted
C, D, V = len(NAMES), 16, 3
BASE, NEW = [0, 1, 2, 3], [4, 5, 6]  # ceil(7 / 2) = 4 base classes
PER_CLASS = {"train": 6, "val": 6, "test": 5}


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return write_toy_store(tmp_path)


def write_toy_store(tmp_path: Path, with_val: bool = True) -> Path:
    """A committed 7-class store: items of a split in shuffled class order, weak zero-shot text."""
    rng = np.random.default_rng(7)
    centers = 3 * rng.standard_normal((C, D))
    text = centers + 4 * rng.standard_normal((C, D))
    path = st.store_path(tmp_path / "cache", REF.model_id, REF.weights_id, DATASET)
    listings = {}
    for split, n in PER_CLASS.items():
        labels = np.repeat(np.arange(C), n if with_val or split != "val" else 0)
        rng.shuffle(labels)
        paths = [f"{split}/{NAMES[y]}/{i}.jpg" for i, y in enumerate(labels)]  # folder order: by name
        listings[split] = st.SplitListing(paths, labels.tolist())
        feats = centers[labels] + rng.standard_normal((len(labels), D))
        aug = feats[:, None] + 0.5 * rng.standard_normal((len(labels), V, D)) if split == "train" else None
        if len(labels):
            st.write_part(path, st.Chunk(split, np.arange(len(labels)), feats.astype(np.float32), _f32(aug)))
    attrs = {"dataset": DATASET, **REF.identity(), "logit_scale": 100.0, "dtype": "float32", "aug_views": V}
    attrs |= {"aug_scale": "[0.08, 1.0]", "templates_spec": "default"}
    contents = st.StoreContents(attrs, NAMES, listings, ["a photo of a {}."], _f32(text[None]), _f32(text))
    st.commit(path, contents, "float32")
    return tmp_path / "cache"


def _f32(a):
    return None if a is None else a.astype(np.float32)


def quick(method: str):
    """The method's defaults with training capped at 10 epochs or iterations (any such setting),
    and batches that fit 2 shots of 4 classes."""
    settings = get_method(method).config()
    capped = {
        f.name: 10
        for f in dataclasses.fields(settings)
        if (f.name in ("epochs", "iters") or f.name.endswith("_every"))
        and (getattr(settings, f.name) is None or getattr(settings, f.name) > 10)
    }
    if method == "cross-modal":  # its half batches must be smaller than 8 images and 4 texts
        capped["batch_sizes"] = (4,)
    return dataclasses.replace(settings, **capped)


def config(cache: Path, method: str, **kw) -> FitConfig:
    base = {"method": method, "method_config": quick(method), "shots": (2,), "seeds": (1,), "classes": "base-to-new"}
    return FitConfig(**(base | {"cache_dir": str(cache), "results_dir": str(cache.parent / "results")} | kw))


def fit(cache: Path, method: str, **kw) -> list[dict]:
    return fit_dataset(DATASET, REF, config(cache, method, **kw))


def adapter_file(cache: Path) -> Path:
    """The adapter file of the one run fitted into ``config``'s results folder."""
    (path,) = (cache.parent / "results").rglob("adapter.safetensors")
    return path


def listing(cache: Path, split: str) -> st.SplitListing:
    with st.open_store(st.store_path(cache, REF.model_id, REF.weights_id, DATASET)) as s:
        return s.listing(split)


# ---------------------------------------------------------------- the split and the items


def test_classes_follow_sorted_labels_and_train_items_are_the_ordinary_sample(cache):
    result = fit(cache, "linear-probe", seeds=(1, 2))[1]
    assert result["classes"]["base"] == [NAMES[k] for k in BASE]
    assert result["classes"]["new"] == [NAMES[k] for k in NEW]
    train, val = listing(cache, "train"), listing(cache, "val")
    first_seen = list(dict.fromkeys(train.labels))  # the sampler's class order
    assert first_seen[:4] != BASE and sorted(NAMES) != NAMES  # neither orders the split
    ordinary = sample_run(train.labels, val.labels, 2, 2)
    assert result["fewshot"]["train_paths"] == [train.paths[i] for i in ordinary.train if train.labels[i] in BASE]
    assert result["fewshot"]["val_paths"] == [val.paths[i] for i in ordinary.val if val.labels[i] in BASE]
    assert result["config"]["classes"] == "base-to-new"
    assert set(result["metrics"]) == {"val", "base", "new", "harmonic_mean"}
    assert set(result["zero_shot"]) == {"val", "base", "new", "harmonic_mean"}
    assert result["metrics"]["base"]["n"] == 4 * PER_CLASS["test"] and result["metrics"]["new"]["n"] == 15
    assert result["fewshot"]["shots_per_class"] == {"min": 2, "max": 2}
    assert result_problem(result) is None


def test_lpp_per_class_val_is_the_ordinary_draw_on_base_classes(cache):
    """LP++'s official K-shot val (K > 4) is drawn over all classes as usual, then narrowed."""
    result = fit(cache, "lp++", shots=(5,), protocol="official")[0]
    assert result["fewshot"]["val_source"] == "5 val images per class"
    val = listing(cache, "val")
    drawn = sample_fewshot(val.labels, 5, random.Random(1))
    assert result["fewshot"]["val_paths"] == [val.paths[i] for i in drawn if val.labels[i] in BASE]


# keys of this store's ordinary 2-shot seed-1 runs, computed before --classes existed
ORDINARY_KEYS = {
    "zero-shot": "665393740cf3f93fcc73a6e8de5455523e0a9cac4b6757a699e727916ac38ac3",
    "tip-adapter": "bdcc5dcb599772b91a608fe555a08f0b49961c9d82e3ae55fd27585bfd46c486",
}


@pytest.mark.parametrize("method", sorted(ORDINARY_KEYS))
def test_ordinary_runs_keep_their_keys_and_results(cache, method):
    ordinary = fit_dataset(DATASET, REF, config(cache, method, classes="all", method_config=None))[0]
    assert ordinary["run_key"] == ORDINARY_KEYS[method]
    assert "classes" not in ordinary and "classes" not in ordinary["config"]
    assert set(ordinary["metrics"]) == {"val", "test"} and set(ordinary["zero_shot"]) == {"val", "test"}
    b2n = fit_dataset(DATASET, REF, config(cache, method, method_config=None))[0]
    assert b2n["run_key"] != ordinary["run_key"]


# ---------------------------------------------------------------- scores, recomputed from the exported features


def exported(cache: Path, tmp_path: Path) -> dict[str, np.ndarray]:
    out = tmp_path / "test.npz"
    export_split(st.store_path(cache, REF.model_id, REF.weights_id, DATASET), "test", out)
    return dict(np.load(out))


def top1(logits: torch.Tensor, labels: np.ndarray) -> float:
    return 100.0 * float((logits.argmax(1).numpy() == labels).mean())


def halves(npz: dict) -> list[tuple[torch.Tensor, np.ndarray, torch.Tensor]]:
    """(features, labels within the half, text weights of the half) for base, then new."""
    out = []
    for half in (BASE, NEW):
        keep = np.isin(npz["labels"], half)
        relabel = {y: i for i, y in enumerate(half)}
        labels = np.array([relabel[y] for y in npz["labels"][keep]])
        out.append((torch.from_numpy(npz["features"][keep]), labels, torch.from_numpy(npz["text_ensemble"][half])))
    return out


def cosine(feats: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return F.normalize(feats.float(), dim=-1) @ F.normalize(weights.float(), dim=-1).t()


def check(result: dict, base_logits: torch.Tensor, new_logits: torch.Tensor, labels) -> None:
    (b, n), m = (top1(base_logits, labels[0]), top1(new_logits, labels[1])), result["metrics"]
    assert m["base"]["top1"] == pytest.approx(b) and m["new"]["top1"] == pytest.approx(n)
    assert m["harmonic_mean"]["top1"] == pytest.approx(2 * b * n / (b + n))


def test_zero_shot_scores_each_half_among_its_own_classes(cache, tmp_path):
    result = fit(cache, "zero-shot")[0]
    (fb, lb, tb), (fn, ln, tn) = halves(exported(cache, tmp_path))
    check(result, cosine(fb, tb), cosine(fn, tn), (lb, ln))
    assert result["zero_shot"]["base"] == result["metrics"]["base"]
    assert result["zero_shot"]["new"] == result["metrics"]["new"]
    # the base half among 4 classes is not the base half among all 7
    assert result["metrics"]["base"]["n"] == len(lb)


def test_tip_adapter_scores_from_its_artifact(cache, tmp_path):
    """Training-free: base from the saved cache; new classes are zero-shot (the cache has no column for them)."""
    result = fit(cache, "tip-adapter")[0]
    tensors, weights, meta = load_adapter(adapter_file(cache))
    assert weights.shape[0] == len(BASE) and meta["classnames"] == [NAMES[k] for k in BASE]
    (fb, lb, tb), (fn, ln, tn) = halves(exported(cache, tmp_path))
    affinity = torch.exp(-float(tensors["beta"]) * (1 - F.normalize(fb, dim=-1) @ tensors["keys"].float().t()))
    base = 100 * cosine(fb, tb) + float(tensors["alpha"]) * affinity @ tensors["values"].float()
    check(result, base, cosine(fn, tn), (lb, ln))
    assert "cache" in result["classes"]["new_class_rule"]


def test_linear_probe_scores_from_its_artifact(cache, tmp_path):
    """Trained: base from the saved probe; new classes are zero-shot (the probe is all per class)."""
    result = fit(cache, "linear-probe")[0]
    tensors, _, _ = load_adapter(adapter_file(cache))
    (fb, lb, _), (fn, ln, tn) = halves(exported(cache, tmp_path))
    base = F.normalize(fb, dim=-1) @ tensors["weight"].float().t() + tensors["bias"].float()
    check(result, base, cosine(fn, tn), (lb, ln))


def test_clip_adapter_applies_its_adapter_to_new_classes(cache, tmp_path):
    from cacheclip.fit.methods.clip_adapter import from_artifact

    result = fit(cache, "clip-adapter")[0]
    tensors, weights, meta = load_adapter(adapter_file(cache))
    (fb, lb, tb), (fn, ln, tn) = halves(exported(cache, tmp_path))
    assert torch.equal(weights, tb.float())
    base, new = from_artifact(tensors, meta, tb, 100.0, "cpu"), from_artifact(tensors, meta, tn, 100.0, "cpu")
    check(result, base(fb), new(fn), (lb, ln))


def test_predict_from_a_base_to_new_run_classifies_among_base_classes(cache, tmp_path):
    from cacheclip.fit.predict import load_run

    fit(cache, "linear-probe")
    run = load_run(adapter_file(cache).parent)
    assert run.classnames == [NAMES[k] for k in BASE]
    (fb, _, _), _ = halves(exported(cache, tmp_path))
    assert run.predict(fb).shape == (len(fb), len(BASE))


# ---------------------------------------------------------------- what training may read


@pytest.mark.parametrize(
    ("method", "kw"),
    [
        ("linear-probe", {}),
        ("lp++", {}),  # its per-class val
        ("gda", {"protocol": "official"}),  # the full val split, and the new-class synthesis
        ("proker", {}),
        ("tip-adapter-f", {}),
    ],
)
def test_new_class_items_are_never_read(cache, monkeypatch, method, kw):
    train, val = listing(cache, "train"), listing(cache, "val")
    labels = {"train": train.labels, "val": val.labels}
    reads, real_read = [], st.FeatureStore.read

    def spy(self, split, indices=None, *, aug=False):
        reads.append((split, None if indices is None else list(indices)))
        return real_read(self, split, indices, aug=aug)

    monkeypatch.setattr(st.FeatureStore, "read", spy)
    fit(cache, method, **kw)
    read = [(s, i) for s, i in reads if s != "test"]
    assert read and all(i is not None for _, i in read)
    assert {labels[s][j] for s, i in read for j in i} <= set(BASE)
    assert [s for s, _ in reads].count("test") == 1


# ---------------------------------------------------------------- rules and refusals


@pytest.mark.parametrize("method", list_methods())
def test_every_method_records_its_new_class_rule(cache, method):
    rule = get_method(method).new_classes
    if rule is None:  # a plugin that refuses
        return
    result = fit(cache, method)[0]
    assert result["classes"]["new_class_rule"] == rule.rule
    assert 0 <= result["metrics"]["new"]["top1"] <= 100
    json.dumps(result)


def test_targets_are_refused(cache):
    with pytest.raises(ConfigError, match="--targets cannot be combined"):
        config(cache, "zero-shot", targets=("imagenet-v2",)).validate()


def test_unknown_classes_mode_is_refused(cache):
    with pytest.raises(ConfigError, match="--classes half"):
        config(cache, "zero-shot", classes="half").validate()


def test_a_method_without_a_rule_is_refused_with_those_that_have_one(cache, monkeypatch):
    real = get_method("linear-probe")
    mute = dataclasses.replace(real, new_classes=None)
    monkeypatch.setattr(stage, "get_method", lambda name: mute if name == "linear-probe" else get_method(name))
    with pytest.raises(ConfigError, match="linear-probe cannot score classes it never trained on") as err:
        config(cache, "linear-probe").validate()
    assert "gda" in err.value.hint and "tip-adapter" in err.value.hint


def test_cli_fit_base_to_new(cache, cli):
    code, out, err = cli(
        "fit", "--dataset", DATASET, "--model", "RN50", "--pretrained", "none", "--cache-dir", cache,
        "--results-dir", cache.parent / "results", "--method", "tip-adapter", "--shots", "2", "--seeds", "1",
        "--classes", "base-to-new", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    assert "zero-shot base / new / H" in out and "tip-adapter" in out


# ---------------------------------------------------------------- GDA and ProKeR's new classes, by their formulas


def trained_rows(result: dict, npz: dict) -> np.ndarray:
    """The exported train rows the run trained on (its recorded paths)."""
    row = {p: i for i, p in enumerate(npz["paths"])}
    return np.array([row[p] for p in result["fewshot"]["train_paths"]])


def test_gda_new_classes_follow_its_base2new_code(cache, tmp_path):
    """Each new class: the 64 support vectors nearest its text and 16 copies of the text give its mean;
    the precision is the mean of per-class KS estimates centred on the text (pinv, as written there)."""
    result = fit(cache, "gda", shots=(6,))[0]  # 6 x 4 x 3 = 72 support vectors: the 64 nearest are a choice
    tensors, _, _ = load_adapter(adapter_file(cache))
    out = tmp_path / "train.npz"
    export_split(st.store_path(cache, REF.model_id, REF.weights_id, DATASET), "train", out)
    train = dict(np.load(out))
    views = train["aug_features"][:, trained_rows(result, train)]  # (V, N, D)
    x = F.normalize(torch.from_numpy(views.reshape(-1, D)).double(), dim=-1)
    (fb, lb, tb), (fn, ln, tn) = halves(exported(cache, tmp_path))
    t = F.normalize(tn.double(), dim=-1)
    mus, precisions = [], []
    for tc in t:
        near = x[(x @ tc).argsort(descending=True)[:64]]
        mus.append(torch.cat([near, tc.repeat(16, 1)]).mean(0))
        cov = (near - tc).t() @ (near - tc) / 63
        precisions.append(D * torch.linalg.pinv(63 * cov + cov.trace() * torch.eye(D, dtype=torch.float64)))
    mu, p = torch.stack(mus), torch.stack(precisions).mean(0)
    w, b = mu @ p, np.log(1 / 3) - 0.5 * ((mu @ p) * mu).sum(1)
    alpha = float(tensors["alpha"])
    new = 100 * cosine(fn, tn) + alpha * (F.normalize(fn.double(), dim=-1) @ w.t() + b).float()
    base = 100 * cosine(fb, tb) + alpha * (F.normalize(fb, dim=-1) @ tensors["weight"].t() + tensors["bias"])
    check(result, base, new, (lb, ln))
    assert any("its base2new script" in d for d in result["protocol"]["differences"])


def test_proker_new_classes_are_the_regressions_new_columns(cache, tmp_path):
    """A_new = (K / lambda + I)^-1 (0 - f0_new(X)): no support image is of a new class."""
    result = fit(cache, "proker")[0]
    tensors, _, meta = load_adapter(adapter_file(cache))
    x, beta, lam = tensors["support"].double(), float(tensors["beta"]), meta["method_config"]["lambda"]
    (fb, lb, _), (fn, ln, tn) = halves(exported(cache, tmp_path))
    t = F.normalize(tn.double(), dim=-1)
    gram = torch.exp(beta * (x @ x.t() - 1))
    coef = torch.linalg.solve(gram / lam + torch.eye(len(x), dtype=torch.float64), -(x @ t.t()))
    f = F.normalize(fn.double(), dim=-1)
    new = f @ t.t() + torch.exp(beta * (f @ x.t() - 1)) @ coef
    fbn = F.normalize(fb.float(), dim=-1)
    base = fbn @ tensors["text"].t() + torch.exp(beta * (fbn @ tensors["support"].t() - 1)) @ tensors["coef"]
    check(result, base, new, (lb, ln))


def test_holdout_val_of_a_dataset_without_val_is_narrowed_too(tmp_path):
    """--no-val holdout draws val from train (as ImageNet's); the held-out items kept are base ones."""
    cache = write_toy_store(tmp_path, with_val=False)
    result = fit(cache, "tip-adapter", no_val="holdout")[0]
    train = listing(cache, "train")
    ordinary = sample_run_with_holdout(train.labels, 2, 1)
    assert result["fewshot"]["val_paths"] == [train.paths[i] for i in ordinary.val if train.labels[i] in BASE]
    assert result["fewshot"]["train_paths"] == [train.paths[i] for i in ordinary.train if train.labels[i] in BASE]


# ---------------------------------------------------------------- batch


def test_batch_toml_key_and_flag(tmp_path):
    from cacheclip.batch.config import load_config, to_command

    toml = tmp_path / "batch.toml"
    toml.write_text('datasets = ["dtd"]\nmethods = ["gda"]\nclasses = "base-to-new"\n')
    cfg = load_config(toml, {})
    assert cfg.fit.classes == "base-to-new" and "--classes base-to-new" in to_command(cfg)
    assert load_config(toml, {"classes": "all"}).fit.classes == "all"
    toml.write_text('datasets = ["imagenet"]\nclasses = "base-to-new"\ntargets = ["imagenet-v2"]\n')
    with pytest.raises(ConfigError, match="--targets cannot be combined"):
        load_config(toml, {}).validate()


def test_batch_base_to_new_end_to_end(tmp_path, tiny_clip, cli):
    """Extract a generated dtd (3 classes: 2 base, 1 new) with a tiny CLIP, then fit base-to-new."""
    from cacheclip.datasets.synthetic import make_dataset

    make_dataset("dtd", tmp_path / "data", n_classes=3, n_train=4, n_val=2, n_test=3, image_size=32)
    toml = tmp_path / "batch.toml"
    toml.write_text('datasets = ["dtd"]\nmethods = ["tip-adapter", "zero-shot"]\nclasses = "base-to-new"\n')
    code, out, err = cli(
        "batch", "--config", toml, "--root", tmp_path / "data", "--model", tiny_clip[0], "--pretrained", tiny_clip[1],
        "--shots", "2", "--seeds", "1", "--aug-views", "2", "--workers", "0", "--device", "cpu",
        "--cache-dir", tmp_path / "cache", "--results-dir", tmp_path / "results",
    )  # fmt: skip
    assert code == 0, out + err
    results = [json.loads(p.read_text()) for p in sorted((tmp_path / "results").rglob("result.json"))]
    assert len(results) == 2 and all(r["config"]["classes"] == "base-to-new" for r in results)
    assert all(len(r["classes"]["base"]) == 2 and len(r["classes"]["new"]) == 1 for r in results)
    assert "zero-shot base / new / H" in out
