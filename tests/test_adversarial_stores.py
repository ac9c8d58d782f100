"""Issue 27, stores edited by hand (h5py) that still gave a number with exit 0: attributes
outside the checksums, a store's content that differs from its split file, a deleted
``item_stats``, attributes of the wrong type, views that are missing, zero text features,
stores swapped under each other's names, and a repair command that could not run."""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from stores import REF, clustered

from cacheclip.errors import StoreDamagedError, StoreMismatchError
from cacheclip.features import store as st
from cacheclip.features.check import check_store, extract_command, health
from cacheclip.features.extract import ExtractConfig, extract_dataset
from cacheclip.features.validate import ATTRS_DIGEST
from cacheclip.fit.stage import FitConfig, fit_dataset


def _fit_cfg(tmp_path: Path, **kw) -> FitConfig:
    base = FitConfig(
        method="zero-shot", shots=(1,), seeds=(1,), cache_dir=str(tmp_path / "cache"), results_dir=str(tmp_path / "r")
    )
    return replace(base, **kw)


# ---------------------------------------------------------------- attributes


def test_a_flipped_bit_in_logit_scale_is_refused_on_open_by_fit_and_by_check(tmp_path, cli):
    path = clustered(tmp_path / "cache", "eurosat")
    with h5py.File(path, "r+") as f:
        bits = np.float64(f.attrs["logit_scale"]).view(np.uint64) ^ np.uint64(1 << 52)  # 100 -> 200 or 50
        f.attrs["logit_scale"] = bits.view(np.float64)
    with pytest.raises(StoreDamagedError, match="attributes changed since it was written"):
        st.open_store(path)
    with pytest.raises(StoreDamagedError, match="attributes changed"):
        fit_dataset("eurosat", REF, _fit_cfg(tmp_path))
    assert "attributes changed" in health(path)
    code, out, err = cli("check", "--cache-dir", tmp_path / "cache")
    assert code == 1 and "attributes changed" in out and "unexpected" not in out + err


def test_every_attribute_is_covered_by_the_digest_including_the_text_classifiers(tmp_path):
    path = clustered(tmp_path / "cache", "eurosat", templates=2)
    with h5py.File(path, "r+") as f:
        f["text"].attrs["classifiers"] = '{"single": [1]}'  # a valid index, another template
    with pytest.raises(StoreDamagedError, match="attributes changed"):
        st.open_store(path)
    path = clustered(tmp_path / "c2", "eurosat")
    with h5py.File(path, "r+") as f:
        del f.attrs[ATTRS_DIGEST]
    with pytest.raises(StoreDamagedError, match=f"'{ATTRS_DIGEST}' is missing"):
        st.open_store(path)


def test_a_store_of_the_schema_before_digests_still_opens_and_check_says_it_cannot_verify_them(tmp_path, cli):
    path = clustered(tmp_path / "cache", "eurosat")
    with h5py.File(path, "r+") as f:
        del f.attrs[ATTRS_DIGEST]
        f.attrs["schema_version"] = 3
    with st.open_store(path, {"dataset": "eurosat", **REF.identity()}) as s:
        assert s.read("test")[0].shape[0] > 0
    result = check_store(path)
    assert result.ok and any("before attribute digests (schema 3)" in n for n in result.notes)
    assert fit_dataset("eurosat", REF, _fit_cfg(tmp_path))  # readable: fits as before


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("schema_version", "3", "'schema_version' is '3', not an integer"),
        ("schema_version", 3.7, "'schema_version' is 3.7, not an integer"),
        ("aug_views", 2.5, "'aug_views' is 2.5, not an integer"),
        ("logit_scale", "100", "'logit_scale' is '100', not a number"),
    ],
)
def test_attributes_of_the_wrong_type_are_refused(tmp_path, cli, key, value, message):
    path = clustered(tmp_path / "cache", "eurosat")
    with h5py.File(path, "r+") as f:
        f.attrs[key] = value
    with pytest.raises(StoreDamagedError, match=message):
        st.open_store(path)
    code, out, _ = cli("check", "--cache-dir", tmp_path / "cache")
    assert code == 1 and message in out


def test_a_store_missing_the_augmented_views_it_promises_is_refused(tmp_path):
    path = clustered(tmp_path / "cache", "eurosat", views=3)
    with h5py.File(path, "r+") as f:
        del f["splits/train/aug_features"]
    with pytest.raises(
        StoreDamagedError, match="aug_views promises 3 augmented views per train image, the store holds 0"
    ):
        st.open_store(path)


def test_all_zero_text_features_are_refused(tmp_path):
    path = clustered(tmp_path / "cache", "eurosat")
    with h5py.File(path, "r+") as f:
        f["text/per_template"][0, 2] = 0
        f["text/ensemble"][2] = 0
    with pytest.raises(StoreDamagedError, match="text features of 1 classes are all zero"):
        st.open_store(path)


def test_a_label_out_of_range_in_a_store_names_its_item(tmp_path):
    path = clustered(tmp_path / "cache", "eurosat")
    with h5py.File(path, "r+") as f:
        f["splits/test/labels"][3] = 99
    with pytest.raises(StoreDamagedError, match=r"item 3, test/3.jpg: label 99"):
        st.open_store(path)


def test_two_stores_swapped_under_each_others_names_are_found_by_check(tmp_path, cli):
    cache = tmp_path / "cache"
    a, b = clustered(cache, "eurosat"), clustered(cache, "dtd")
    a.rename(tmp_path / "tmp.h5")
    b.rename(a)
    (tmp_path / "tmp.h5").rename(b)
    code, out, _ = cli("check", "--cache-dir", cache)
    assert code == 1 and out.count("holds the features of dataset") == 2
    assert "named eurosat.h5 but holds the features of dataset 'dtd'" in out


def test_the_repair_command_of_a_store_too_damaged_to_read_is_runnable(tmp_path):
    path = st.store_path(tmp_path / "cache", REF.model_id, REF.weights_id, "eurosat")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # truncated: no attribute can be read
    (problem,) = check_store(path).problems
    command = problem.split("repair: ")[1]
    assert "?" not in command
    assert f"--model {REF.model_id} --pretrained none --cache-dir {tmp_path / 'cache'}" in command
    assert "--dataset eurosat" in command
    file_model = tmp_path / "cache" / "ViT-X-0123abcd" / "file-0123456789ab" / "eurosat.h5"
    line = extract_command(file_model, {})
    assert "?" not in line and "model folder ViT-X-0123abcd" in line and "weights folder file-0123456789ab" in line


# ---------------------------------------------------------------- content vs split file


@pytest.fixture
def extracted(tmp_path, make_data, tiny_loaded):
    folder = make_data("eurosat", n_train=4, n_test=2)
    cfg = ExtractConfig(
        cache_dir=str(tmp_path / "cache"), workers=0, batch_size=16, shots=(1,), seeds=(1,), aug_views=0
    )
    summary = extract_dataset("eurosat", folder.parent, tiny_loaded, cfg)
    return folder, cfg, summary.store


def _fit_tiny(tmp_path, tiny_loaded, **kw):
    return fit_dataset("eurosat", tiny_loaded.ref, _fit_cfg(tmp_path, views="clean", **kw))


def _shift_labels(f: h5py.File) -> None:
    labels = f["splits/test/labels"]
    labels[...] = (labels[()] + 1) % len(f["classnames"])


def _swap_classnames(f: h5py.File) -> None:
    names = f["classnames"][()]
    names[[0, 1]] = names[[1, 0]]
    f["classnames"][...] = names


def _swap_paths(f: h5py.File) -> None:
    paths = f["splits/test/paths"][()]
    paths[[0, 1]] = paths[[1, 0]]
    f["splits/test/paths"][...] = paths


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_shift_labels, r"split 'test' item 0 \(.*\): the store has label"),
        (_swap_classnames, "class 0 is"),
        (_swap_paths, r"split 'test' item 0 \(.*\): the store has path"),
    ],
    ids=["test-labels-shifted", "classnames-swapped", "test-paths-swapped"],
)
def test_a_store_whose_content_differs_from_its_split_file_is_refused(tmp_path, extracted, tiny_loaded, edit, message):
    _, cfg, path = extracted
    with h5py.File(path, "r+") as f:
        edit(f)
    with pytest.raises(StoreDamagedError, match="does not hold what its split file says") as e:
        _fit_tiny(tmp_path, tiny_loaded)
    assert e.value.hint == st.REPAIR
    problems = check_store(path).problems
    assert len(problems) == 1 and "does not hold what its split file says" in problems[0]
    assert re.search(message, problems[0])
    with pytest.raises(StoreDamagedError, match="does not hold what its split file says"):  # extract too
        extract_dataset("eurosat", extracted[0].parent, tiny_loaded, cfg)


# ---------------------------------------------------------------- item stats


def test_a_deleted_item_stats_is_damage_not_inputs_verified(tmp_path, extracted, tiny_loaded):
    folder, _, path = extracted
    with st.open_store(path) as s:
        first = s.listing("train").paths[int(s.encoded("train")[0])]
    with h5py.File(path, "r+") as f:
        del f["splits/train/item_stats"]
    image = folder / "2750" / first
    Image.new("RGB", (40, 30), (250, 10, 10)).save(image)
    os.utime(image, ns=(10**18, 10**18))
    with pytest.raises(StoreDamagedError, match="split 'train': item_stats is missing"):
        _fit_tiny(tmp_path, tiny_loaded)
    assert any("item_stats is missing" in p for p in check_store(path).problems)


def test_an_older_store_without_item_stats_is_not_verified_never_unchanged(tmp_path, extracted, tiny_loaded):
    _, _, path = extracted
    with h5py.File(path, "r+") as f:
        del f["splits/train/item_stats"]
        del f.attrs[ATTRS_DIGEST]
        f.attrs["schema_version"] = 3
    inputs = _fit_tiny(tmp_path, tiny_loaded)[0]["store"]["inputs"]
    assert inputs.startswith("not verified") and "train images' sizes and mtimes" in inputs
    assert "unchanged since encoding" not in inputs
    result = check_store(path)
    assert result.ok and any("not verified" in n for n in result.notes)


def test_a_freshly_extracted_store_is_verified_and_checks_clean(tmp_path, extracted, tiny_loaded):
    _, _, path = extracted
    assert _fit_tiny(tmp_path, tiny_loaded)[0]["store"]["inputs"] == "split files and images unchanged since encoding"
    result = check_store(path, in_cache=True)
    assert result.ok and not result.notes


def test_rerunning_extract_on_a_store_of_the_schema_before_digests_rewrites_it_with_one(
    tmp_path, extracted, tiny_loaded
):
    folder, cfg, path = extracted
    with h5py.File(path, "r+") as f:
        del f.attrs[ATTRS_DIGEST]
        f.attrs["schema_version"] = 3
        del f["splits/train/item_stats"]  # as a store upgraded from schema 1 may be
    with st.open_store(path) as s:
        before = {split: s.read(split)[0] for split in ("train", "test")}
    summary = extract_dataset("eurosat", folder.parent, tiny_loaded, cfg)
    assert not summary.encoded  # nothing encoded again: only rewritten
    with h5py.File(path, "r") as f:
        assert f.attrs["schema_version"] == st.SCHEMA_VERSION and ATTRS_DIGEST in f.attrs
    with st.open_store(path) as s:
        assert all(np.array_equal(s.read(split)[0], before[split]) for split in before)
    inputs = _fit_tiny(tmp_path, tiny_loaded)[0]["store"]["inputs"]
    assert inputs.startswith("not verified") and "train images" in inputs  # still said, never "unchanged"
    result = check_store(path)
    assert result.ok and not any("attribute digests" in n for n in result.notes)


# ---------------------------------------------------------------- --targets


@pytest.fixture
def shift_stores(tmp_path, make_data, tiny_loaded):
    for name in ("imagenet", "imagenet-v2"):
        make_data(name, n_classes=12, n_train=2, n_test=2)
    cfg = ExtractConfig(
        cache_dir=str(tmp_path / "cache"), workers=0, batch_size=32, shots=(1,), seeds=(1,), aug_views=0
    )
    for name in ("imagenet", "imagenet-v2"):
        extract_dataset(name, tmp_path / "data", tiny_loaded, cfg)
    return st.store_path(tmp_path / "cache", tiny_loaded.model_id, tiny_loaded.weights_id, "imagenet-v2")


def _fit_targets(tmp_path, tiny_loaded):
    cfg = _fit_cfg(tmp_path, method="linear-probe", views="clean", targets=("imagenet-v2",))
    return fit_dataset("imagenet", tiny_loaded.ref, cfg)


def test_a_target_store_is_verified_like_the_source(tmp_path, shift_stores, tiny_loaded):
    """A target's test labels edited in place, or its images changed, gave a target score with exit 0."""
    assert "imagenet-v2" in _fit_targets(tmp_path, tiny_loaded)[0]["metrics"]["targets"]
    with h5py.File(shift_stores, "r+") as f:
        _shift_labels(f)
    with pytest.raises(StoreDamagedError, match="does not hold what its split file says"):
        _fit_targets(tmp_path, tiny_loaded)
    with h5py.File(shift_stores, "r+") as f:  # undo; then change an image instead
        labels = f["splits/test/labels"]
        labels[...] = (labels[()] - 1) % len(f["classnames"])
        first = f["splits/test/paths"][0].decode()
    with st.open_store(shift_stores) as s:
        image = Path(s.attrs["image_root"]) / first
    Image.new("RGB", (40, 30), (250, 10, 10)).save(image)
    os.utime(image, ns=(10**18, 10**18))
    with pytest.raises(StoreMismatchError, match=r"target imagenet-v2: .* is stale: image files changed"):
        _fit_targets(tmp_path, tiny_loaded)


def test_a_target_store_whose_class_wnids_were_swapped_is_refused(tmp_path, shift_stores, tiny_loaded):
    with h5py.File(shift_stores, "r+") as f:
        ids = f["class_ids"][()]
        ids[[0, 1]] = ids[[1, 0]]
        f["class_ids"][...] = ids
    with pytest.raises(StoreDamagedError, match="class wnids differ"):
        _fit_targets(tmp_path, tiny_loaded)
