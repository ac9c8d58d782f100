"""cacheclip.store: parts, atomic commit, reading, identity checks, the writer lock."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cacheclip.errors import StoreError, StoreLockedError, StoreMismatchError
from cacheclip.features import store as st

D = 8


def _contents(n_train: int = 6, n_test: int = 4, attrs: dict | None = None) -> st.StoreContents:
    listings = {
        "train": st.SplitListing([f"tr/{i}.jpg" for i in range(n_train)], [i % 2 for i in range(n_train)]),
        "val": st.SplitListing([], []),
        "test": st.SplitListing([f"te/{i}.jpg" for i in range(n_test)], [i % 2 for i in range(n_test)]),
    }
    text = np.arange(2 * 2 * D, dtype=np.float32).reshape(2, 2, D)
    return st.StoreContents(
        attrs or {"dataset": "toy", "model": "tiny", "logit_scale": 100.0, "dtype": "float16"},
        ["cat", "dog"],
        listings,
        ["a {}.", "the {}."],
        text,
        text.mean(0),
    )


def _chunk(split: str, indices, views: int = 0, seed: int = 0) -> st.Chunk:
    rng = np.random.default_rng(seed)
    idx = np.asarray(indices, np.int64)
    aug = rng.normal(size=(len(idx), views, D)).astype(np.float32) if views else None
    return st.Chunk(split, idx, rng.normal(size=(len(idx), D)).astype(np.float32), aug)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return st.store_path(tmp_path / "cache", "tiny", "random-init", "toy")


def test_store_path_is_keyed_by_model_weights_dataset(tmp_path):
    assert (
        st.store_path(tmp_path, "RN50-quickgelu", "openai", "eurosat")
        == tmp_path / "RN50-quickgelu" / "openai" / "eurosat.h5"
    )
    assert st.store_path(tmp_path, "hf-hub:org/model", "w", "d").parent.parent.name == "hf-hub:org_model"


def test_parts_then_commit_merges_in_index_order(path):
    st.write_part(path, _chunk("train", [3, 4, 5], views=2, seed=1))
    st.write_part(path, _chunk("train", [0, 1, 2], views=2, seed=2))
    st.write_part(path, _chunk("test", [1, 3], seed=3))
    assert st.staged_indices(path) == {"train": {0, 1, 2, 3, 4, 5}, "test": {1, 3}}
    st.commit(path, _contents(), "float32")
    assert not st.parts_dir(path).exists()
    with st.open_store(path) as s:
        assert s.encoded("train").tolist() == [0, 1, 2, 3, 4, 5]
        assert s.encoded("test").tolist() == [1, 3]
        assert s.encoded("val").tolist() == []
        feats, labels, aug = s.read("train", [4, 0], aug=True)
        assert feats.dtype == np.float32 and feats.shape == (2, D) and aug.shape == (2, 2, D)
        np.testing.assert_array_equal(
            feats,
            np.stack([_chunk("train", [3, 4, 5], 2, 1).features[1], _chunk("train", [0, 1, 2], 2, 2).features[0]]),
        )
        assert labels.tolist() == [0, 0]
        assert s.num_aug_views() == 2
        assert s.classnames == ["cat", "dog"] and s.templates == ["a {}.", "the {}."]
        assert s.text_features()[0].shape == (2, 2, D)
        empty, _, none = s.read("val", aug=True)  # a split with no items reads as empty
        assert empty.shape == (0, D) and none is None
        with pytest.raises(KeyError) as e:
            s.read("test", [0, 1, 2])
        assert e.value.args[0] == [0, 2]


def test_commit_keeps_old_rows_and_adds_new(path):
    st.write_part(path, _chunk("test", [0, 1], seed=1))
    st.commit(path, _contents(), "float16")
    with st.open_store(path) as s:
        before = s.read("test")[0]
    st.write_part(path, _chunk("test", [1, 2, 3], seed=2))  # row 1 re-encoded (its file changed): new wins
    st.commit(path, _contents(), "float16")
    with st.open_store(path) as s:
        after = s.read("test")[0]
        assert s.encoded("test").tolist() == [0, 1, 2, 3]
        assert s.feature_dtype("test") == np.float16
    np.testing.assert_array_equal(after[:1], before[:1])
    np.testing.assert_array_equal(after[1:], _chunk("test", [1, 2, 3], seed=2).features.astype(np.float16))


@pytest.mark.parametrize("block_rows", [1, 3, 1000])
def test_commit_streams_blocks_with_the_same_result(path, monkeypatch, block_rows):
    """The merge holds block_rows rows at a time; any block size gives the same store."""
    row_bytes = D * 3 * 4  # clean + 2 views, float32
    monkeypatch.setattr(st, "COMMIT_BLOCK_BYTES", block_rows * row_bytes)
    first = [_chunk("train", [2, 5, 7], views=2, seed=1)]
    later = [
        _chunk("train", [0, 1], views=2, seed=2),
        _chunk("train", [7, 6, 3], views=2, seed=3),
        _chunk("train", [4], views=2, seed=4),
    ]
    for c in first:
        st.write_part(path, c)
    st.commit(path, _contents(n_train=8), "float32")
    for c in later:  # unsorted part, and a repeat of item 7
        st.write_part(path, c)
    st.commit(path, _contents(n_train=8), "float32")
    expected_f, expected_a = {}, {}
    for c in first + later:  # a repeat was re-encoded: the newer copy wins
        for i, f, a in zip(c.indices.tolist(), c.features, c.aug_features, strict=False):
            expected_f[i], expected_a[i] = f, a
    with st.open_store(path) as s:
        assert s.encoded("train").tolist() == list(range(8))
        feats, _, aug = s.read("train", aug=True)
    np.testing.assert_array_equal(feats, np.stack([expected_f[i] for i in range(8)]))
    np.testing.assert_array_equal(aug, np.stack([expected_a[i] for i in range(8)]))


def test_unfinished_and_damaged_parts_are_never_read(path):
    good = st.write_part(path, _chunk("test", [0, 1], seed=1))
    folder = st.parts_dir(path)
    (folder / "test-000000002-deadbeef.tmp").write_bytes(good.read_bytes()[:300])  # killed mid-write
    truncated = folder / "test-000000002-cafef00d.h5"  # cut short on disk
    truncated.write_bytes(st.write_part(path, _chunk("test", [2, 3], seed=2)).read_bytes()[:-200])
    for p in folder.glob("test-000000002-*.h5"):
        if p != truncated:
            p.unlink()
    (folder / "test-000000003-0badf00d.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 50)  # garbage
    assert st.staged_indices(path) == {"test": {0, 1}}
    assert [c.indices.tolist() for c in st.read_parts(path)] == [[0, 1]]
    st.commit(path, _contents(), "float32")
    with st.open_store(path) as s:
        assert s.encoded("test").tolist() == [0, 1]
    assert not folder.exists()


def test_identity_mismatch_names_each_attribute(path):
    recorded = {"model": "RN50-quickgelu", "dtype": "float16", "aug_views": 10}
    st.check_identity(path, recorded, dict(recorded))
    with pytest.raises(StoreMismatchError) as e:
        st.check_identity(path, recorded, {**recorded, "dtype": "float32", "aug_views": 4})
    assert "dtype: store has 'float16', asked 'float32'" in e.value.message
    assert "aug_views: store has 10, asked 4" in e.value.message
    assert "model" not in e.value.message.split("(", 1)[1]


def test_missing_or_unreadable_store_is_a_store_error(path):
    with pytest.raises(StoreError, match="no feature store"):
        st.open_store(path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not hdf5 at all")
    with pytest.raises(StoreError, match="cannot read store"):
        st.open_store(path)


def test_second_writer_is_refused_while_first_holds_the_lock(path):
    with st.writer_lock(path):
        with pytest.raises(StoreLockedError) as e:
            with st.writer_lock(path):
                pass
        assert f"pid {os.getpid()}" in e.value.message and str(path) in e.value.message
        assert "resumes" in e.value.hint
    with st.writer_lock(path):  # released on exit
        pass


def test_lock_dies_with_its_process(path):
    code = (
        "import sys, time; from pathlib import Path; from cacheclip.features.store import writer_lock\n"
        "with writer_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLockedError, match=f"pid {proc.pid}"):
            with st.writer_lock(path):
                pass
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 5
    while True:
        try:
            with st.writer_lock(path):
                break
        except StoreLockedError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_find_and_describe(path):
    st.write_part(path, _chunk("train", [0, 1, 2], views=2))
    attrs = {"dataset": "toy", "model": "tiny", "logit_scale": 100.0, "dtype": "float16", "aug_views": 2}
    st.commit(path, _contents(attrs=attrs), "float16")
    st.write_part(path, _chunk("test", [0]))  # an unfinished extraction
    assert st.find_stores(path.parent.parent.parent) == [path]
    d = st.describe(path)
    assert d["splits"] == {
        "test": {"items": 4, "encoded": 0},
        "train": {"items": 6, "encoded": 3},
        "val": {"items": 0, "encoded": 0},
    }
    assert d["pending_parts"] == 1 and d["aug_views"] == 2 and d["dataset"] == "toy"
