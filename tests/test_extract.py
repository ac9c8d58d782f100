"""cacheclip.extract: features equal an independent open_clip computation, few-shot subsets,
deterministic augmented views, incremental and crash-safe (real SIGKILL) extraction."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from cacheclip.datasets.fewshot import needed_train_indices
from cacheclip.datasets.layouts import load_dataset
from cacheclip.datasets.templates import format_prompts, get_templates
from cacheclip.errors import ConfigError, StoreLockedError, StoreMismatchError
from cacheclip.features import cpu_plan
from cacheclip.features import extract as ex
from cacheclip.features import pipeline as pl
from cacheclip.features import store as st
from cacheclip.features.augment import AugmentConfig, AugmentedViews, crop_box, view_generator
from cacheclip.features.extract import ExtractConfig, extract_dataset, planned_items
from cacheclip.features.models import encode_text, load_model

FP16 = {"rtol": 2e-3, "atol": 1e-5}  # float16 storage: ~11 significant bits
FP32 = {"rtol": 1e-5, "atol": 1e-6}  # float32 storage: only batch-composition rounding differs


def _cfg(tmp_path: Path, **kw) -> ExtractConfig:
    base = ExtractConfig(
        cache_dir=str(tmp_path / "cache"), workers=0, batch_size=16, shots=(1, 2), seeds=(1,), aug_views=2
    )
    return replace(base, **kw)


def _independent(config: Path, ckpt: Path, image_root: Path, paths: list[str]) -> np.ndarray:
    """Clean-view features the plain open_clip way: its own model and val transform, PIL, one forward."""
    model, _, val = open_clip.create_model_and_transforms(config.stem, pretrained=str(ckpt))
    model.eval()
    with torch.no_grad():
        return model.encode_image(torch.stack([val(Image.open(image_root / p)) for p in paths])).numpy()


# ---------------------------------------------------------------- features are right


@pytest.mark.parametrize(
    "which, dtype", [("tiny_clip", "float16"), ("tiny_clip", "float32"), ("tiny_clip_rn", "float32")]
)
def test_stored_features_equal_independent_computation(which, dtype, request, coop_root, tmp_path):
    config, ckpt = request.getfixturevalue(which)
    loaded = load_model(str(config), str(ckpt))
    cfg = _cfg(tmp_path, dtype=dtype, aug_views=0, shots=(1,), batch_size=64)
    summary = extract_dataset("eurosat", coop_root, loaded, cfg)
    ds = load_dataset("eurosat", coop_root)
    with st.open_store(summary.store) as s:
        feats, labels, _ = s.read("test")
        assert s.listing("test").paths == [it.path for it in ds.test]
        assert s.feature_dtype("test") == np.dtype(dtype)
    assert feats.shape == (len(ds.test), 32) and feats.dtype == np.float32
    assert labels.tolist() == [it.label for it in ds.test]
    expected = _independent(config, ckpt, ds.image_root, [it.path for it in ds.test])
    np.testing.assert_allclose(feats, expected, **(FP16 if dtype == "float16" else FP32))


def test_text_features_equal_prompted_classnames(tiny_loaded, coop_root, tmp_path):
    cfg = _cfg(tmp_path, templates="imagenet7", aug_views=0, shots=(1,))
    summary = extract_dataset("eurosat", coop_root, tiny_loaded, cfg)
    ds = load_dataset("eurosat", coop_root)
    raw, ensemble = encode_text(tiny_loaded, format_prompts(get_templates("imagenet7", "eurosat"), ds.classnames))
    with st.open_store(summary.store) as s:
        per_template, ens = s.text_features()
        assert s.classnames == list(ds.classnames) and len(s.templates) == 7
    assert per_template.shape == (7, len(ds.classnames), 32)
    np.testing.assert_array_equal(per_template, raw.numpy())
    np.testing.assert_array_equal(ens, ensemble.numpy())


# ---------------------------------------------------------------- augmented views


def test_view_randomness_depends_only_on_seed_path_view(coop_root):
    ds = load_dataset("eurosat", coop_root)
    image = Image.open(ds.image_root / ds.train[0].path).convert("RGB")
    pre = {"size": 32, "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bicubic"}
    four = AugmentedViews(AugmentConfig(views=4, seed=7), pre)(image, "a/b.jpg")
    two = AugmentedViews(AugmentConfig(views=2, seed=7), pre)(image, "a/b.jpg")
    assert four.shape == (4, 3, 32, 32)
    assert torch.equal(four, AugmentedViews(AugmentConfig(views=4, seed=7), pre)(image, "a/b.jpg"))
    assert torch.equal(four[:2], two)  # view v does not depend on how many views
    assert not torch.equal(four[0], four[1])
    assert not torch.equal(two, AugmentedViews(AugmentConfig(views=2, seed=8), pre)(image, "a/b.jpg"))
    assert not torch.equal(two, AugmentedViews(AugmentConfig(views=2, seed=7), pre)(image, "a/c.jpg"))


def test_crop_boxes_respect_scale_and_ratio():
    cfg = AugmentConfig(scale=(0.5, 1.0))
    for v in range(300):
        top, left, h, w = crop_box(120, 80, cfg, view_generator(0, "x.jpg", v))
        assert 0 <= top and top + h <= 80 and 0 <= left and left + w <= 120
        assert 0.5 * 0.95 <= h * w / (120 * 80) <= 1.0
        assert 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05


def test_aug_features_independent_of_batch_workers_and_resume(tiny_loaded, coop_root, tmp_path):
    """Same views whatever the batch size, worker count or the run that encoded them."""
    f32 = {"dtype": "float32", "train": "all"}
    one = extract_dataset("eurosat", coop_root, tiny_loaded, _cfg(tmp_path / "a", batch_size=64, **f32))
    other = extract_dataset("eurosat", coop_root, tiny_loaded, _cfg(tmp_path / "b", batch_size=5, workers=2, **f32))
    # resumed: a few-shot subset first, then the rest of train in a second run
    extract_dataset("eurosat", coop_root, tiny_loaded, _cfg(tmp_path / "c", dtype="float32", shots=(1,)))
    resumed = extract_dataset("eurosat", coop_root, tiny_loaded, _cfg(tmp_path / "c", batch_size=7, **f32))
    assert 0 < resumed.encoded["train"] < 24 and "test" not in resumed.encoded
    stores = [st.open_store(s.store) for s in (one, other, resumed)]
    try:
        (base, _, aug), *rest = [s.read("train", aug=True) for s in stores]
        assert aug.shape == (24, 2, 32)
        for feats_i, _, aug_i in rest:
            np.testing.assert_allclose(feats_i, base, **FP32)
            np.testing.assert_allclose(aug_i, aug, **FP32)
    finally:
        for s in stores:
            s.close()
    # and the views are the ones AugmentedViews makes from (seed, path, view)
    ds = load_dataset("eurosat", coop_root)
    views = AugmentedViews(AugmentConfig(views=2), tiny_loaded.preprocess)
    for i in (0, 17):
        image = Image.open(ds.image_root / ds.train[i].path).convert("RGB")
        with torch.no_grad():
            direct = tiny_loaded.model.encode_image(views(image, ds.train[i].path)).numpy()
        np.testing.assert_allclose(aug[i], direct, **FP32)


# ---------------------------------------------------------------- layouts and few-shot plans


@pytest.mark.parametrize("name", ["eurosat", "imagenet", "fgvc_aircraft"])
def test_layouts_encode_the_fewshot_union(name, tiny_loaded, coop_root, tmp_path):
    cfg = _cfg(tmp_path, shots=(1, 2), seeds=(1, 2), aug_views=1)
    summary = extract_dataset(name, coop_root, tiny_loaded, cfg)
    ds = load_dataset(name, coop_root)
    needed = needed_train_indices([it.label for it in ds.train], [it.label for it in ds.val], (1, 2), (1, 2))
    assert 0 < len(needed) < len(ds.train)
    assert summary.total == {"train": len(needed), "val": len(ds.val), "test": len(ds.test)}
    with st.open_store(summary.store) as s:
        assert s.encoded("train").tolist() == needed
        assert s.encoded("test").tolist() == list(range(len(ds.test)))
        assert s.listing("train").paths == [it.path for it in ds.train]  # every item listed, some encoded
        _, labels, aug = s.read("train", aug=True)
        assert labels.tolist() == [ds.train[i].label for i in needed] and aug.shape == (len(needed), 1, 32)
    if name == "imagenet":
        assert len(ds.val) == 0 and summary.total["val"] == 0
    everything = extract_dataset(name, coop_root, tiny_loaded, replace(cfg, train="all"))
    assert everything.encoded == {"train": len(ds.train) - len(needed)}  # only what was missing
    assert everything.total["train"] == len(ds.train)


def test_more_shots_encode_only_the_new_items(tiny_loaded, coop_root, tmp_path):
    first = extract_dataset("eurosat", coop_root, tiny_loaded, _cfg(tmp_path, shots=(1,)))
    second = extract_dataset("eurosat", coop_root, tiny_loaded, _cfg(tmp_path, shots=(1, 2, 4)))
    ds = load_dataset("eurosat", coop_root)
    plan = planned_items(ds, _cfg(tmp_path, shots=(1, 2, 4)))
    assert second.encoded == {"train": len(plan["train"]) - first.total["train"]}
    mtime = second.store.stat().st_mtime_ns
    again = extract_dataset("eurosat", coop_root, tiny_loaded, _cfg(tmp_path, shots=(1, 2, 4)))
    assert again.encoded == {} and not again.text_updated
    assert second.store.stat().st_mtime_ns == mtime  # a no-op rerun leaves the store alone
    assert not st.parts_dir(second.store).exists()


# ---------------------------------------------------------------- identity


def test_changed_templates_reencode_text_only(tiny_loaded, coop_root, tmp_path):
    first = extract_dataset("eurosat", coop_root, tiny_loaded, _cfg(tmp_path))
    with st.open_store(first.store) as s:
        before, text_before = s.read("train", aug=True), s.text_features()[1]
    second = extract_dataset("eurosat", coop_root, tiny_loaded, _cfg(tmp_path, templates="photo"))
    assert second.encoded == {} and second.text_updated
    with st.open_store(second.store) as s:
        after = s.read("train", aug=True)
        assert s.templates == ["a photo of a {}."]
        assert not np.array_equal(s.text_features()[1], text_before)
    for a, b in zip(before, after, strict=False):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "change, attribute",
    [
        ({"dtype": "float32"}, "dtype"),
        ({"aug_views": 3}, "aug_views"),
        ({"aug_views": 2, "aug_scale": (0.5, 1.0)}, "aug_scale"),
        ({"aug_views": 2, "aug_seed": 1}, "aug_seed"),
    ],
)
def test_other_options_are_a_mismatch(change, attribute, tiny_loaded, coop_root, tmp_path):
    extract_dataset("eurosat", coop_root, tiny_loaded, _cfg(tmp_path))
    with pytest.raises(StoreMismatchError) as e:
        extract_dataset("eurosat", coop_root, tiny_loaded, _cfg(tmp_path, **change))
    assert f"{attribute}: store has" in e.value.message
    assert "delete the store" in e.value.hint


def test_changed_split_file_is_a_mismatch(tiny_loaded, make_data, tmp_path):
    folder = make_data("eurosat")
    extract_dataset("eurosat", folder.parent, tiny_loaded, _cfg(tmp_path))
    split_file = folder / "split_zhou_EuroSAT.json"
    split = json.loads(split_file.read_text())
    split["test"] = split["test"][:-1]
    split_file.write_text(json.dumps(split))
    with pytest.raises(StoreMismatchError, match="split_sha256: store has"):
        extract_dataset("eurosat", folder.parent, tiny_loaded, _cfg(tmp_path))


def test_other_weights_never_reuse_a_store(tiny_clip, tiny_clip_rn, tiny_loaded, coop_root, tmp_path):
    vit = extract_dataset("eurosat", coop_root, tiny_loaded, _cfg(tmp_path))
    net = torch.load(tiny_clip[1])
    net["logit_scale"] = net["logit_scale"] + 1
    other_ckpt = tmp_path / "other.pt"
    torch.save(net, other_ckpt)
    other = extract_dataset("eurosat", coop_root, load_model(str(tiny_clip[0]), str(other_ckpt)), _cfg(tmp_path))
    assert other.store != vit.store and other.encoded  # keyed by the weights' hash
    # a store file that ends up at another model's path (renamed by hand) is caught on read
    rn = load_model(str(tiny_clip_rn[0]), str(tiny_clip_rn[1]))
    rn_path = st.store_path(tmp_path / "cache", rn.model_id, rn.weights_id, "eurosat")
    rn_path.parent.mkdir(parents=True)
    shutil.copy(vit.store, rn_path)
    with pytest.raises(StoreMismatchError) as e:
        extract_dataset("eurosat", coop_root, rn, _cfg(tmp_path))
    for attribute in ("model", "model_config_sha256", "weights_sha256"):
        assert f"{attribute}: store has" in e.value.message


def test_unfinished_parts_of_other_options_are_refused(tiny_loaded, coop_root, tmp_path, monkeypatch):
    def killed(*a, **k):
        raise KeyboardInterrupt  # stands in for a kill just before the commit

    monkeypatch.setattr(st, "commit", killed)
    with pytest.raises(KeyboardInterrupt):
        extract_dataset("eurosat", coop_root, tiny_loaded, _cfg(tmp_path))
    monkeypatch.undo()
    with pytest.raises(StoreMismatchError) as e:
        extract_dataset("eurosat", coop_root, tiny_loaded, _cfg(tmp_path, dtype="float32"))
    assert "unfinished extraction" in e.value.message and "dtype" in e.value.message
    resumed = extract_dataset("eurosat", coop_root, tiny_loaded, _cfg(tmp_path))
    assert resumed.encoded == {} and sum(resumed.total.values()) > 0  # everything came from the parts


def test_second_writer_gets_store_locked_error(tiny_loaded, coop_root, tmp_path):
    path = st.store_path(tmp_path / "cache", tiny_loaded.model_id, tiny_loaded.weights_id, "eurosat")
    with st.writer_lock(path):
        with pytest.raises(StoreLockedError) as e:
            extract_dataset("eurosat", coop_root, tiny_loaded, _cfg(tmp_path))
    assert f"another process (pid {os.getpid()}) is writing {path}" == e.value.message
    assert "rerun" in e.value.hint


# ---------------------------------------------------------------- crash safety: a real SIGKILL

# Runs the real CLI with one batch per part file; sleeps before each forward so the kill
# lands while the run is still going.
DRIVER = """
import sys, time
import cacheclip.features.extract as ex
import cacheclip.features.pipeline as pl
ex.CHUNK_FORWARDS = 1
delay = float(sys.argv[1])
forward = pl.encode_batch
def slow_forward(*args, **kwargs):
    time.sleep(delay)
    return forward(*args, **kwargs)
pl.encode_batch = slow_forward
from cacheclip.cli.main import main
sys.argv = ["cacheclip", *sys.argv[2:]]
main()
"""


def test_resume_after_sigkill_equals_an_uninterrupted_run(tiny_clip, tiny_loaded, make_data, tmp_path, monkeypatch):
    folder = make_data("eurosat", n_test=10)  # 24 train + 12 val + 40 test
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    cache = tmp_path / "killed"
    args = [
        "extract",
        "-d",
        "eurosat",
        "--root",
        folder.parent,
        "-m",
        tiny_clip[0],
        "-p",
        tiny_clip[1],
        "--cache-dir",
        cache,
        "--batch-size",
        4,
        "--workers",
        0,
        "--train",
        "all",
        "--aug-views",
        2,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    path = st.store_path(cache, tiny_loaded.model_id, tiny_loaded.weights_id, "eurosat")
    log = tmp_path / "killed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, driver, "0.1", *map(str, args)], env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 60
        while not list(st.parts_dir(path).glob("*.h5")):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not path.exists()  # killed before any commit
    staged = sum(len(v) for v in st.staged_indices(path).values())
    assert 0 < staged < 76

    monkeypatch.setattr(ex, "CHUNK_FORWARDS", 1)
    cfg = _cfg(tmp_path, batch_size=4, train="all")
    rerun = extract_dataset("eurosat", folder.parent, tiny_loaded, replace(cfg, cache_dir=str(cache)))
    assert sum(rerun.encoded.values()) == 76 - staged  # committed parts were not encoded again
    assert not st.parts_dir(path).exists()
    clean = extract_dataset("eurosat", folder.parent, tiny_loaded, replace(cfg, cache_dir=str(tmp_path / "clean")))
    with st.open_store(path) as a, st.open_store(clean.store) as b:
        for split in ("train", "val", "test"):
            assert a.encoded(split).tolist() == b.encoded(split).tolist() == list(range(len(a.listing(split).paths)))
            for x, y in zip(a.read(split, aug=True), b.read(split, aug=True), strict=False):
                if x is not None or y is not None:
                    np.testing.assert_array_equal(x, y)  # bitwise
        np.testing.assert_array_equal(a.text_features()[0], b.text_features()[0])


# ---------------------------------------------------------------- CPU plan: threads, and where the forward runs


@pytest.fixture
def fake_threads(monkeypatch):
    """torch's intra-op thread count, faked (starts at 4) so the test changes nothing real."""
    state = {"threads": 4, "calls": []}
    monkeypatch.setattr(torch, "get_num_threads", lambda: state["threads"])

    def set_threads(n):
        state["threads"] = n
        state["calls"].append(n)

    monkeypatch.setattr(torch, "set_num_threads", set_threads)
    return state


@pytest.mark.parametrize(
    "forward_ms, decode_ms, views, workers, expected, in_workers",
    [
        (0.03, 0.5, 0, 2, 1, False),  # tiny model: one thread's forward outruns 2 decoding workers
        (0.03, 0.5, 0, 4, 1, True),  # ... and 4 workers fill the 4 cores: they run the forward too
        (100.0, 0.5, 0, 2, 4, False),  # RN50 on a CPU: the model binds and gets every thread
        (100.0, 0.5, 0, 4, 4, False),  # ... whatever the workers
        (0.1, 0.5, 10, 2, 4, False),  # 11 forwards per train item: now the model binds
    ],
)
def test_cpu_plan_gives_the_forward_one_thread_only_when_it_keeps_up(
    forward_ms, decode_ms, views, workers, expected, in_workers, fake_threads, monkeypatch
):
    forward_calls = []
    monkeypatch.setattr(cpu_plan, "decode_cost", lambda reader: (decode_ms / 1000, 1 + views))

    def forward_seconds(loaded, batch, precision):
        forward_calls.append(fake_threads["threads"])
        return forward_ms / 1000

    monkeypatch.setattr(cpu_plan, "forward_seconds_per_image", forward_seconds)
    monkeypatch.setattr(sys, "platform", "linux")
    plan = cpu_plan.CpuPlan("cpu", workers=workers)
    assert plan.choose(None, None, 64) == expected
    assert fake_threads["threads"] == expected
    assert plan.in_workers is in_workers
    plan.choose(None, None, 64)  # a second call does not measure the forward again
    assert forward_calls == [1]  # measured on one thread
    plan.close()
    assert fake_threads["threads"] == 4


def test_cpu_plan_keeps_the_forward_here_where_workers_are_not_forked(fake_threads, monkeypatch):
    monkeypatch.setattr(cpu_plan, "decode_cost", lambda reader: (0.5e-3, 1))
    monkeypatch.setattr(cpu_plan, "forward_seconds_per_image", lambda loaded, batch, precision: 0.03e-3)
    monkeypatch.setattr(sys, "platform", "darwin")
    plan = cpu_plan.CpuPlan("cpu", workers=4)
    assert plan.choose(None, None, 64) == 1
    assert not plan.in_workers


@pytest.mark.parametrize("device, workers", [("cuda", 2), ("cpu", 0)])
def test_cpu_plan_inactive_on_gpu_or_without_workers(device, workers, fake_threads):
    plan = cpu_plan.CpuPlan(device, workers)
    assert plan.choose(None, None, 64) == 4
    assert not plan.in_workers
    plan.close()
    assert fake_threads["calls"] == []


def test_cpu_plan_measurements_run(tiny_loaded, coop_root, tmp_path):
    ds = load_dataset("eurosat", coop_root)
    todo = {"train": [0, 1, 2], "test": list(range(len(ds.test)))}
    reader = pl.image_reader(ds, todo, tiny_loaded, AugmentConfig(views=2))
    seconds, forwards = cpu_plan.decode_cost(reader)
    assert 0 < seconds < 1
    assert forwards == (3 * 3 + len(ds.test)) / (3 + len(ds.test))  # train items: 1 clean + 2 views
    assert 0 < cpu_plan.forward_seconds_per_image(tiny_loaded, 8) < 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forward in workers needs fork (Linux)")
def test_forward_in_the_workers_stores_what_this_process_would(tiny_loaded, coop_root, tmp_path, monkeypatch):
    used = []

    def in_workers(plan, *args, **kwargs):
        plan.in_workers = True
        used.append(plan)
        return torch.get_num_threads()

    cfg = _cfg(tmp_path, workers=2, batch_size=4, train="all")
    here = extract_dataset("eurosat", coop_root, tiny_loaded, replace(cfg, workers=0, cache_dir=str(tmp_path / "a")))
    torch.ones(256, 256) @ torch.ones(256, 256)  # the intra-op pools have run before the workers fork
    torch.ones(1 << 22).exp().sum()
    monkeypatch.setattr(ex.CpuPlan, "choose", in_workers)
    there = extract_dataset("eurosat", coop_root, tiny_loaded, replace(cfg, cache_dir=str(tmp_path / "b")))
    assert used and there.encoded == here.encoded
    with st.open_store(here.store) as a, st.open_store(there.store) as b:
        for split in ("train", "val", "test"):
            assert a.encoded(split).tolist() == b.encoded(split).tolist()
            for x, y in zip(a.read(split, aug=True), b.read(split, aug=True), strict=False):
                if x is not None or y is not None:
                    np.testing.assert_array_equal(x, y)


def test_batches_never_mix_splits():
    work = [("train", i, None) for i in range(5)] + [("test", i, None) for i in range(3)]
    assert pl.split_batches(work, 2) == [[0, 1], [2, 3], [4], [5, 6], [7]]


def test_extraction_restores_the_thread_count(tiny_loaded, coop_root, tmp_path):
    before = torch.get_num_threads()
    extract_dataset("eurosat", coop_root, tiny_loaded, _cfg(tmp_path, workers=1, batch_size=4, train="all"))
    assert torch.get_num_threads() == before


# ---------------------------------------------------------------- precision


@pytest.mark.parametrize(
    "asked, device, bf16, expected",
    [
        ("auto", "cpu", True, "fp32"),
        ("auto", "cuda", False, "amp-fp16"),
        ("fp32", "cuda:1", False, "fp32"),
        ("amp", "cuda", False, "amp-fp16"),
        ("amp", "cpu", True, "amp-bf16"),
    ],
)
def test_resolve_precision(asked, device, bf16, expected, monkeypatch):
    monkeypatch.setattr(ex, "cpu_has_bf16", lambda: bf16)
    assert ex.resolve_precision(asked, device) == expected


def test_amp_on_a_cpu_without_bf16_units_is_an_error(monkeypatch):
    monkeypatch.setattr(ex, "cpu_has_bf16", lambda: False)
    with pytest.raises(ConfigError) as e:
        ex.resolve_precision("amp", "cpu")
    assert "bf16" in e.value.message and "--precision fp32" in e.value.hint


@pytest.mark.skipif(not ex.cpu_has_bf16(), reason="this CPU has no bf16 units")
@pytest.mark.parametrize("model", ["tiny_clip", "tiny_clip_rn"])
def test_bf16_autocast_on_cpu_is_recorded_and_close_to_fp32(model, request, coop_root, tmp_path):
    from cacheclip.features.models import load_model

    files = request.getfixturevalue(model)
    stores = {}
    for precision in ("fp32", "amp"):
        loaded = load_model(str(files[0]), str(files[1]))  # fresh: amp turns a conv net channels_last
        cfg = _cfg(tmp_path / precision, precision=precision, train="all")
        stores[precision] = extract_dataset("eurosat", coop_root, loaded, cfg).store
    with st.open_store(stores["fp32"]) as a, st.open_store(stores["amp"]) as b:
        assert (a.attrs["precision"], b.attrs["precision"]) == ("fp32", "amp-bf16")
        for split in ("train", "test"):
            x, y = a.read(split)[0], b.read(split)[0]
            cosine = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
            assert cosine.min() > 0.9995 and not np.array_equal(x, y)
