"""Odd files never hang or crash a command: real FIFOs, symlink loops, names that are not
UTF-8, huge images, unreadable files and split-file paths that leave the image root.

Each case runs under a deadline (SIGALRM), so a regression fails instead of blocking."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import warnings
from pathlib import Path

import pytest
from PIL import Image

from cacheclip.datasets.catalog import check_images
from cacheclip.datasets.layouts import load_dataset
from cacheclip.datasets.listing import LargeImageWarning, SkippedFilesWarning, UnreadableImageError, read_rgb
from cacheclip.datasets.synthetic import make_dataset, make_imagefolder
from cacheclip.errors import DatasetLayoutError, MissingImagesError

NOT_UTF8 = b"caf\xe9.jpg"  # Latin-1 bytes: not a valid UTF-8 name


@contextlib.contextmanager
def deadline(seconds: int = 60):
    """Raise TimeoutError in the test if the block runs longer (a blocked open() included)."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: would have hung")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def user_error(code: int, err: str, *fragments: str) -> None:
    assert code == 1, err
    assert "Traceback" not in err and "unexpected" not in err, err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"


def odd_entries(folder: Path) -> None:
    """Add to an image folder: a FIFO, a symlink loop, a broken link, a non-UTF-8 name, a nested folder."""
    cls = folder / "red_fox"
    os.mkfifo(cls / "pipe.jpg")
    os.symlink("loop.jpg", cls / "loop.jpg")  # points at itself
    os.symlink("missing.jpg", cls / "gone.jpg")
    with open(os.path.join(os.fsencode(cls), NOT_UTF8), "wb") as f:
        f.write((cls / "img_000.jpg").read_bytes())
    (cls / "nested").mkdir()
    os.symlink("..", folder / "green_apple" / "up")  # a folder link back up: a cycle for a recursive search


def tiny_args(tiny_clip, tmp_path) -> list:
    return ["-m", tiny_clip[0], "-p", tiny_clip[1], "--cache-dir", tmp_path / "cache", "--workers", 0]


# ---------------------------------------------------------------- image folders


def test_image_folder_skips_odd_entries_and_says_which(tmp_path):
    folder = make_imagefolder(tmp_path / "pets")
    odd_entries(folder)
    with deadline(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset(f"imagefolder:{folder}", None)
    paths = [it.path for s in ("train", "val", "test") for it in ds.split(s)]
    assert len(paths) == 24 and all(p.split("/")[-1].startswith("img_") for p in paths)  # only the real images
    [w] = [w for w in caught if issubclass(w.category, SkippedFilesWarning)]
    text = str(w.message)
    assert text.startswith(f"skipped 6 entries under {folder}")
    for fragment in (
        "FIFO (1)",
        "pipe.jpg",
        "symlink loop (1)",
        "broken symlink (1)",
        "name not UTF-8",
        "caf\\xe9.jpg",
    ):
        assert fragment in text, text
    assert "nested folder, not searched (2)" in text  # red_fox/nested and green_apple/up (a link to a folder)


def test_extract_of_an_odd_image_folder_warns_and_succeeds(cli, tiny_clip, tmp_path):
    folder = make_imagefolder(tmp_path / "pets")
    odd_entries(folder)
    with deadline():
        code, out, err = cli(
            "extract", "-d", f"imagefolder:{folder}", *tiny_args(tiny_clip, tmp_path), "--aug-views", 1
        )
    assert code == 0, err
    assert "warning: skipped 6 entries under" in err and "caf\\xe9.jpg" in err and "FIFO" in err, err
    assert "encoded train" in out


# ---------------------------------------------------------------- split files


def test_fifo_listed_in_a_split_file_is_refused_not_opened(cli, make_data, tiny_clip, tmp_path):
    folder = make_data("eurosat")
    ds = load_dataset("eurosat", folder.parent)
    victim = ds.image_root / ds.test[0].path
    victim.unlink()
    os.mkfifo(victim)
    with deadline():
        with pytest.raises(MissingImagesError, match="not regular files") as e:
            check_images(ds, ds.test)
        assert str(victim) in str(e.value) and "FIFO" in str(e.value)
        with pytest.raises(UnreadableImageError, match="a FIFO, not an image file"):
            read_rgb(victim)  # the reader's own check, should a FIFO appear after the listing check
        code, _, err = cli("extract", "-d", "eurosat", "--root", folder.parent, *tiny_args(tiny_clip, tmp_path))
    user_error(code, err, "not regular files", ds.test[0].path, "FIFO")


@pytest.mark.parametrize("bad", ["../../outside.jpg", "/etc/hostname", "Forest/../../x.jpg", ""])
def test_split_paths_that_leave_the_image_root_are_refused(make_data, bad):
    folder = make_data("eurosat")
    split_file = folder / "split_zhou_EuroSAT.json"
    split = json.loads(split_file.read_text())
    split["train"][2][0] = bad
    split_file.write_text(json.dumps(split))
    with pytest.raises(DatasetLayoutError, match="not inside the image root") as e:
        load_dataset("eurosat", folder.parent)
    assert repr(bad) in str(e.value) and "train item 2" in str(e.value)


def test_split_paths_with_dotdot_inside_the_root_are_kept(make_data):
    folder = make_data("eurosat")
    split_file = folder / "split_zhou_EuroSAT.json"
    split = json.loads(split_file.read_text())
    first = split["train"][0][0]
    split["train"][0][0] = f"{first.split('/')[0]}/../{first}"
    split_file.write_text(json.dumps(split))
    ds = load_dataset("eurosat", folder.parent)
    check_images(ds, ds.train[:1])  # the file is found through the ..


# ---------------------------------------------------------------- huge images


def test_huge_image_is_decoded_with_our_warning_or_refused(tmp_path, monkeypatch):
    """PIL's limit is lowered so that small files stand for a 10000 x 10000 image (memory)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    Image.new("RGB", (120, 100), "white").save(tmp_path / "big.png")  # 12,000 px: beyond the limit
    Image.new("RGB", (300, 100), "white").save(tmp_path / "bomb.png")  # 30,000 px: beyond twice the limit
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert read_rgb(tmp_path / "big.png").size == (120, 100)
    assert [w.category for w in caught] == [LargeImageWarning]  # PIL's own warning is not shown
    assert str(caught[0].message).startswith(f"{tmp_path / 'big.png'} is 120 x 100 (12,000 pixels), beyond PIL's")
    with pytest.raises(UnreadableImageError, match="too large to decode safely"):
        read_rgb(tmp_path / "bomb.png")


# ---------------------------------------------------------------- predict on a folder


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory, tiny_loaded) -> Path:
    from cacheclip.features.extract import ExtractConfig, extract_dataset
    from cacheclip.fit.methods.clip_adapter import ClipAdapterConfig
    from cacheclip.fit.stage import FitConfig, fit_dataset

    tmp = tmp_path_factory.mktemp("odd_predict")
    make_dataset("eurosat", tmp / "data", n_classes=3, n_train=2, n_val=1, n_test=1)
    cfg = ExtractConfig(cache_dir=str(tmp / "cache"), aug_views=1, shots=(1,), seeds=(1,), workers=0)
    extract_dataset("eurosat", tmp / "data", tiny_loaded, cfg)
    method = ClipAdapterConfig(alphas=(0.5,), epochs=1)
    fit_cfg = FitConfig(
        shots=(1,), seeds=(1,), method_config=method, cache_dir=str(tmp / "cache"), results_dir=str(tmp / "results")
    )
    fit_dataset("eurosat", tiny_loaded.ref, fit_cfg)
    return next((tmp / "results").rglob("1shot-seed1-*"))


def test_predict_on_a_folder_of_odd_files_goes_on_and_names_each(cli, fitted_run, tmp_path, monkeypatch):
    folder = make_imagefolder(tmp_path / "new", n_per_class=2)
    odd_entries(folder)
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3_000)
    Image.new("RGB", (60, 60), "white").save(folder / "huge.png")  # 3,600 px: beyond the lowered limit
    with deadline():
        code, out, err = cli("predict", folder, "--run", fitted_run, "--json")
    user_error(code, err, "1 of", "could not be read", "broken.jpg")
    rows = {Path(r["image"]).name: r for r in json.loads(out)}
    assert "error" in rows["broken.jpg"] and "top" not in rows["broken.jpg"]
    assert "top" in rows["huge.png"] and "top" in rows["caf\\xe9.jpg"]  # non-UTF-8 name: classified, shown safely
    assert sum("top" in r for r in rows.values()) == len(rows) - 1
    assert "pipe.jpg" not in rows and "loop.jpg" not in rows
    assert "warning: skipped" in err and "FIFO" in err and "symlink loop" in err and "symlink cycle" in err, err
    assert "huge.png is 60 x 60 (3,600 pixels), beyond PIL's limit" in err, err
    assert "DecompressionBombWarning" not in err


def test_predict_given_a_fifo_directly_reports_it(cli, fitted_run, tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    make_imagefolder(tmp_path / "ok", n_classes=1, n_per_class=1)
    [good] = (tmp_path / "ok").rglob("img_*")
    with deadline():
        code, out, err = cli("predict", tmp_path / "pipe.jpg", good, "--run", fitted_run)
    user_error(code, err, "1 of 2 images could not be read", "pipe.jpg: a FIFO, not an image file")
    assert "img_000" in out
