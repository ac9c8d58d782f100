"""Issue 27, hand-made layouts: an empty split is refused when the dataset is read (extract, data
check), duplicate images are reported with their count, a label out of range names the item
holding it, PIL's raw warning does not leak beside ours, and a symlink-loop --cache-dir is named."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import pytest
from PIL import Image

from cacheclip.datasets.check import DuplicateItemsWarning, check_dataset, check_items
from cacheclip.datasets.layouts import load_dataset
from cacheclip.datasets.listing import LargeImageWarning
from cacheclip.errors import DatasetLayoutError, EnvironmentFault, require_writable_dir

SPLIT = "split_zhou_EuroSAT.json"


def _edit_split(folder: Path, edit) -> None:
    path = folder / SPLIT
    split = json.loads(path.read_text())
    edit(split)
    path.write_text(json.dumps(split))


def _check(cli, folder: Path, tmp_path: Path):
    """`data check eurosat` with the split file as it is now pinned (the generated one is not CoOp's)."""
    digest = hashlib.sha256((folder / SPLIT).read_bytes()).hexdigest()
    sources = tmp_path / "sources.json"
    sources.write_text(json.dumps({"eurosat": {"counts": None, "files": {SPLIT: {"checksum": f"sha256:{digest}"}}}}))
    return cli("data", "check", "eurosat", "--root", folder.parent, "--sources", sources)


def _extract(cli, root: Path, tiny_clip, tmp_path: Path):
    return cli(
        "extract", "--dataset", "eurosat", "--root", root, "-m", tiny_clip[0], "-p", tiny_clip[1],
        "--cache-dir", tmp_path / "cache", "--workers", 0, "--aug-views", 0, "--shots", 1, "--seeds", 1,
    )  # fmt: skip


@pytest.mark.parametrize("split", ["test", "train"])
def test_an_empty_split_a_command_needs_is_refused_at_extract_and_by_data_check(
    cli, make_data, tiny_clip, tmp_path, split
):
    folder = make_data("eurosat", n_classes=2, n_train=2, n_val=1, n_test=1, image_size=32)
    _edit_split(folder, lambda s: s.__setitem__(split, []))
    with pytest.raises(DatasetLayoutError, match=f"the {split} split \\({SPLIT}\\) lists no items"):
        load_dataset("eurosat", folder.parent)
    code, out, err = _extract(cli, folder.parent, tiny_clip, tmp_path)
    assert code == 1 and f"the {split} split ({SPLIT}) lists no items" in err and "unexpected" not in err
    assert not list((tmp_path / "cache").rglob("*.h5"))
    code, out, _ = cli("data", "check", "eurosat", "--root", folder.parent)
    assert code == 1 and "lists no items" in out


def test_an_empty_val_split_is_still_read(make_data):
    folder = make_data("eurosat", n_classes=2, n_train=2, n_val=1, n_test=1, image_size=32)
    _edit_split(folder, lambda s: s.__setitem__("val", []))
    assert load_dataset("eurosat", folder.parent).val == ()


def test_duplicate_images_are_reported_with_their_count_by_data_check_and_extract(cli, make_data, tiny_clip, tmp_path):
    folder = make_data("eurosat", n_classes=2, n_train=2, n_val=1, n_test=1, image_size=32)
    root = folder.parent
    code, out, err = _check(cli, folder, tmp_path)
    assert code == 0 and "warning" not in out + err, out + err  # the generated (CoOp-like) split has none

    def leak(split):
        split["test"].append(split["train"][0])  # a train image also tested on
        split["train"].append(split["train"][1])  # and one listed twice

    _edit_split(folder, leak)
    code, out, err = _check(cli, folder, tmp_path)
    assert code == 0, out + err
    assert "warning: eurosat: 1 images more than once in train" in err and "1 images in both train and test" in err
    ds = load_dataset("eurosat", root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_items(ds, ds.test)
    assert [str(w.message) for w in caught if w.category is DuplicateItemsWarning] == [
        check_dataset("eurosat", root).warnings[0]
    ]
    code, out, err = _extract(cli, root, tiny_clip, tmp_path)
    assert code == 0 and "1 images in both train and test" in err, out + err


def test_a_label_out_of_range_names_the_item_that_holds_it(make_data):
    folder = make_data("eurosat", n_classes=2, n_train=2, n_val=1, n_test=1, image_size=32)
    holder = {}

    def bad_label(split):
        split["test"][0][1] = 99
        holder["path"] = split["test"][0][0]

    _edit_split(folder, bad_label)
    with pytest.raises(DatasetLayoutError, match="never appear") as e:
        load_dataset("eurosat", folder.parent)
    assert f"the largest label, 99, is held by test item {holder['path']}" in e.value.message


def test_pils_raw_decompression_bomb_warning_does_not_leak_beside_ours(make_data, monkeypatch):
    from cacheclip.datasets.listing import read_rgb

    folder = make_data("eurosat", n_classes=2, n_train=2, n_val=1, n_test=1, image_size=32)
    ds = load_dataset("eurosat", folder.parent)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 700)  # 32 x 32 = 1024 pixels: beyond it, below twice
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_items(ds, ds.test[:1])  # what extract runs first: the header of every planned image
        read_rgb(ds.image_root / ds.test[0].path)  # then decoding it
    kinds = [w.category for w in caught]
    assert Image.DecompressionBombWarning not in kinds and kinds.count(LargeImageWarning) == 1


def test_a_cache_dir_that_is_a_symlink_loop_is_named_as_such(cli, tmp_path, make_data, tiny_clip):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(EnvironmentFault, match="is a symlink loop, not a folder"):
        require_writable_dir(loop, "--cache-dir")
    with pytest.raises(EnvironmentFault, match=r"loop/cache: .*/loop is a symlink loop"):
        require_writable_dir(loop / "cache", "--cache-dir")
    broken = tmp_path / "broken"
    broken.symlink_to(tmp_path / "nowhere" / "x")
    with pytest.raises(EnvironmentFault, match="is a broken symlink"):
        require_writable_dir(broken, "--cache-dir")
    folder = make_data("eurosat", n_classes=2, n_train=2, n_val=1, n_test=1, image_size=32)
    code, _, err = cli(
        "extract", "--dataset", "eurosat", "--root", folder.parent, "-m", tiny_clip[0], "-p", tiny_clip[1],
        "--cache-dir", loop, "--workers", 0,
    )  # fmt: skip
    assert code == 1 and "is a symlink loop, not a folder" in err and "unexpected" not in err


def test_a_split_file_nested_too_deeply_is_a_layout_error(make_data):
    folder = make_data("eurosat", n_classes=2, n_train=2, n_val=1, n_test=1, image_size=32)
    (folder / SPLIT).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DatasetLayoutError, match="is not valid JSON \\(nested too deeply\\)"):
        load_dataset("eurosat", folder.parent)


def test_check_and_ls_name_a_cache_dir_that_is_a_symlink_loop(cli, tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    for command in ("check", "ls"):
        code, out, err = cli(command, "--cache-dir", loop)
        assert code == 1 and f"--cache-dir {loop} is a symlink loop, not a folder" in err, out + err
