"""Issue 14, silently wrong results and damaged stores: each fault reproduced for real (copied
stores, flipped bytes, NaN attributes, edited split files and images) and refused with a
clear error, never a number."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from stores import REF, clustered

from cacheclip.datasets.catalog import store_name
from cacheclip.errors import StoreDamagedError, StoreMismatchError
from cacheclip.features import store as st
from cacheclip.features.check import check_store, health
from cacheclip.features.extract import ExtractConfig, extract_dataset
from cacheclip.fit.stage import FitConfig, fit_dataset


def _fit_cfg(tmp_path: Path, **kw) -> FitConfig:
    base = FitConfig(
        method="zero-shot", shots=(1,), seeds=(1,), cache_dir=str(tmp_path / "cache"), results_dir=str(tmp_path / "r")
    )
    return replace(base, **kw)


def _flip(path: Path, offset: int, count: int = 256) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        data = bytearray(f.read(count))
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))


def _chunk_offset(path: Path, name: str) -> int:
    with h5py.File(path, "r") as f:
        return f[name].id.get_chunk_info(0).byte_offset


# ---------------------------------------------------------------- identity


def test_a_store_copied_under_another_datasets_name_is_refused(tmp_path):
    dtd = clustered(tmp_path / "cache", "dtd")
    shutil.copy(dtd, dtd.with_name("eurosat.h5"))
    with pytest.raises(StoreMismatchError, match="dataset: store has 'dtd', asked 'eurosat'") as e:
        fit_dataset("eurosat", REF, _fit_cfg(tmp_path))
    assert "cacheclip extract --dataset eurosat" in e.value.hint
    assert not (tmp_path / "r").exists() or not list((tmp_path / "r").rglob("result.json"))


def test_a_store_of_other_weights_is_refused(tmp_path):
    path = clustered(tmp_path / "cache", "eurosat")
    with h5py.File(path, "r+") as f:
        f.attrs["weights_sha256"] = "0" * 64
    with pytest.raises(StoreMismatchError, match="weights_sha256"):
        fit_dataset("eurosat", REF, _fit_cfg(tmp_path))


def test_a_store_of_another_schema_version_is_refused(tmp_path):
    path = clustered(tmp_path / "cache", "eurosat")
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(StoreDamagedError, match="schema_version 99"):
        st.open_store(path)


def test_two_image_folders_with_the_same_name_get_their_own_stores(tmp_path):
    a, b = tmp_path / "a" / "images", tmp_path / "b" / "images"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    name_a, name_b = store_name(f"imagefolder:{a}"), store_name(f"imagefolder:{b}")
    assert name_a != name_b and name_a.startswith("imagefolder-images-") and name_b.startswith("imagefolder-images-")
    assert store_name(f"imagefolder:{a}/../images") == name_a  # the resolved path is what counts


# ---------------------------------------------------------------- bytes and values


def test_flipped_feature_bytes_are_refused_on_read_and_found_by_check(tmp_path):
    path = clustered(tmp_path / "cache", "eurosat")
    _flip(path, _chunk_offset(path, "splits/test/features") + 64)
    assert health(path) == "ok"  # the structure is intact: only reading the bytes tells
    with st.open_store(path) as s, pytest.raises(StoreDamagedError, match="checksum mismatch"):
        s.read("test")
    with pytest.raises(StoreDamagedError, match="splits/test/features is damaged"):
        fit_dataset("eurosat", REF, _fit_cfg(tmp_path))
    problems = check_store(path).problems
    assert len(problems) == 1 and "splits/test/features is damaged (checksum mismatch)" in problems[0]
    assert "repair: rm " in problems[0] and "cacheclip extract --dataset eurosat" in problems[0]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: f.attrs.__setitem__("logit_scale", np.nan), "logit_scale is nan"),
        (lambda f: f["splits/test/labels"].__setitem__(0, 99), "labels outside"),
        (lambda f: f["splits/test/encoded"].__setitem__(slice(0, 2), [1, 0]), "not sorted"),
        (lambda f: f["splits/test/encoded"].__setitem__(-1, 10**6), "within its"),
        (lambda f: f.__delitem__("classnames"), "no class names"),
    ],
    ids=["nan-logit-scale", "label-out-of-range", "unsorted-encoded", "encoded-out-of-range", "no-classnames"],
)
def test_values_that_cannot_be_right_are_refused_when_the_store_opens(tmp_path, cli, damage, message):
    path = clustered(tmp_path / "cache", "eurosat")
    with h5py.File(path, "r+") as f:
        damage(f)
    with pytest.raises(StoreDamagedError, match=message):
        st.open_store(path)
    assert message in health(path)
    code, out, err = cli("check", "--cache-dir", tmp_path / "cache")
    assert code == 1 and message in out and "unexpected" not in out + err
    code, out, err = cli("ls", "--cache-dir", tmp_path / "cache")
    assert code == 0 and "damaged" in out
    code, _, err = cli(
        "fit", "-d", "eurosat", "--model", "RN50", "--pretrained", "none", "--cache-dir", tmp_path / "cache"
    )
    assert code == 1 and "is damaged" in err and "unexpected" not in err


def test_nan_features_in_a_store_are_refused(tmp_path):
    path = clustered(tmp_path / "cache", "eurosat")
    with h5py.File(path, "r+") as f:
        f["splits/train/features"][0, 0] = np.nan
    with st.open_store(path) as s, pytest.raises(StoreDamagedError, match="NaN or inf"):
        s.read("train")
    assert any("NaN or inf" in p for p in check_store(path).problems)


def test_a_store_written_before_checksums_still_opens(tmp_path):
    """Schema 1 stores (no fletcher32, no item stats) are read; check says what it cannot verify."""
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as f:
        f.attrs.update({"schema_version": 1, "dataset": "toy", "model": "RN50", "logit_scale": 100.0})
        f["classnames"] = np.array(["a", "b"], dtype=object)
        f["text/templates"] = np.array(["a {}."], dtype=object)
        f["text/per_template"] = np.ones((1, 2, 4), np.float32)
        f["text/ensemble"] = np.ones((2, 4), np.float32)
        f["splits/test/paths"] = np.array(["x.jpg", "y.jpg"], dtype=object)
        f["splits/test/labels"] = np.array([0, 1], np.int32)
        f["splits/test/encoded"] = np.array([0, 1])
        f["splits/test/features"] = np.ones((2, 4), np.float16)
    with st.open_store(path) as s:
        assert s.read("test")[0].shape == (2, 4) and s.item_stats("test") is None
    result = check_store(path)
    assert result.ok and any("schema 1" in n for n in result.notes)


# ---------------------------------------------------------------- the inputs changed


@pytest.fixture
def extracted(tmp_path, make_data, tiny_loaded):
    folder = make_data("eurosat", n_train=4, n_test=2)
    cfg = ExtractConfig(
        cache_dir=str(tmp_path / "cache"), workers=0, batch_size=16, shots=(1,), seeds=(1,), aug_views=0
    )
    summary = extract_dataset("eurosat", folder.parent, tiny_loaded, cfg)
    return folder, cfg, summary.store


def _fit_tiny(tmp_path, tiny_loaded, **kw):
    cfg = _fit_cfg(tmp_path, views="clean", **kw)
    return fit_dataset("eurosat", tiny_loaded.ref, cfg)


def test_fit_refuses_a_store_whose_split_file_changed(tmp_path, extracted, tiny_loaded):
    folder, _, _ = extracted
    assert _fit_tiny(tmp_path, tiny_loaded)[0]["store"]["inputs"] == "split files and images unchanged since encoding"
    split_file = folder / "split_zhou_EuroSAT.json"
    split = json.loads(split_file.read_text())
    split["test"] = split["test"][:-1]
    split_file.write_text(json.dumps(split))
    with pytest.raises(StoreMismatchError, match="stale: the split files changed") as e:
        _fit_tiny(tmp_path, tiny_loaded, force=True)
    assert "cacheclip extract --dataset eurosat" in e.value.hint


def test_an_image_edited_in_place_is_re_encoded_and_refused_until_then(tmp_path, extracted, tiny_loaded):
    folder, cfg, path = extracted
    with st.open_store(path) as s:
        first = s.listing("test").paths[int(s.encoded("test")[0])]
        before = s.read("test")[0][0]
    image = folder / "2750" / first
    Image.new("RGB", (40, 30), (250, 10, 10)).save(image)
    os.utime(image, ns=(10**18, 10**18))  # a different mtime whatever the clock's resolution
    with pytest.raises(StoreMismatchError, match=r"image files changed or removed since encoding \(1 test\)"):
        _fit_tiny(tmp_path, tiny_loaded)
    assert any("changed" in p for p in check_store(path).problems)
    summary = extract_dataset("eurosat", folder.parent, tiny_loaded, cfg)
    assert summary.changed == {"test": 1} and summary.encoded == {"test": 1}
    with st.open_store(path) as s:
        assert not np.array_equal(s.read("test")[0][0], before)
    assert _fit_tiny(tmp_path, tiny_loaded)[0]["store"]["inputs"].startswith("split files and images unchanged")
    assert check_store(path).ok


def test_a_store_whose_data_is_elsewhere_is_fitted_and_says_it_was_not_verified(tmp_path, extracted, tiny_loaded):
    folder, _, _ = extracted
    folder.parent.rename(tmp_path / "moved")
    result = _fit_tiny(tmp_path, tiny_loaded)[0]
    assert (
        result["store"]["inputs"].startswith("not verified (data root")
        and "is not on this machine" in result["store"]["inputs"]
    )
