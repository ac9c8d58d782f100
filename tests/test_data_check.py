"""`cacheclip data check`: finds a missing image, an unreadable one, a non-file, a split file that
is not the published one and split counts that are not the published ones; `data list` and the
`datasets` alias; ``check_items``, the check `extract` runs before encoding."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from cacheclip.datasets.check import check_dataset, check_items
from cacheclip.datasets.layouts import load_dataset
from cacheclip.errors import CorruptImageError, MissingImagesError

SMALL = {"n_classes": 2, "n_train": 2, "n_val": 1, "n_test": 1, "image_size": 32}


def _pin(tmp_path: Path, folder: Path, name: str, split_file: str) -> Path:
    """An overrides file that pins the generated split file (as the real one is pinned)."""
    digest = hashlib.sha256((folder / split_file).read_bytes()).hexdigest()
    path = tmp_path / "sources.json"
    path.write_text(json.dumps({name: {"counts": None, "files": {split_file: {"checksum": f"sha256:{digest}"}}}}))
    return path


@pytest.fixture
def eurosat(make_data, tmp_path):
    """(data root, dataset folder, overrides file pinning its split file)."""
    folder = make_data("eurosat", **SMALL)
    return folder.parent, folder, _pin(tmp_path, folder, "eurosat", "split_zhou_EuroSAT.json")


def _check(cli, root, sources, *names):
    return cli("data", "check", *names, "--root", root, "--sources", sources)


def test_complete_dataset_is_ok(cli, eurosat):
    root, folder, sources = eurosat
    code, out, err = _check(cli, root, sources)  # no names: the datasets under --root
    assert code == 0, out + err
    sha = load_dataset("eurosat", root).split_sha256
    assert f"eurosat: ok (4/2/2 train/val/test, split sha256 {sha[:12]})" in out


def test_missing_file(cli, eurosat):
    root, folder, sources = eurosat
    item = load_dataset("eurosat", root).test[0].path
    (folder / "2750" / item).unlink()
    code, out, err = _check(cli, root, sources, "eurosat")
    assert code == 1, out + err
    line = next(x for x in out.splitlines() if "missing" in x)
    assert item in line and "1 of 8 images" in line  # `data get` leaves a layout in place alone: move it aside
    assert f"fix: move the folder aside (mv {folder} {folder}.old), then run `cacheclip data get eurosat`" in line


def test_unreadable_and_not_regular_files(cli, eurosat):
    root, folder, sources = eurosat
    ds = load_dataset("eurosat", root)
    garbage, dirlike = ds.train[0].path, ds.val[0].path
    (folder / "2750" / garbage).write_bytes(b"this is not a jpeg")
    (folder / "2750" / dirlike).unlink()
    (folder / "2750" / dirlike).mkdir()
    code, out, err = _check(cli, root, sources, "eurosat")
    assert code == 1, out + err
    assert any("unreadable" in x and garbage in x for x in out.splitlines()), out
    assert any("not regular files" in x and dirlike in x for x in out.splitlines()), out


def test_truncated_image_needs_deep(cli, eurosat):
    root, folder, sources = eurosat
    path = folder / "2750" / load_dataset("eurosat", root).train[0].path
    path.write_bytes(path.read_bytes()[:-100])  # the header survives, the last pixels do not
    assert _check(cli, root, sources, "eurosat")[0] == 0
    code, out, _ = cli("data", "check", "eurosat", "--root", root, "--sources", sources, "--deep")
    assert code == 1 and "unreadable" in out


def test_split_file_that_differs_from_the_published_one(cli, eurosat):
    root, folder, sources = eurosat
    split = folder / "split_zhou_EuroSAT.json"
    split.write_text(split.read_text().replace("Forest", "Woods"))
    code, out, err = _check(cli, root, sources, "eurosat")
    assert code == 1, out + err
    line = next(x for x in out.splitlines() if "differs" in x)
    assert "split_zhou_EuroSAT.json differs from CoOp's published file" in line
    assert f"move {split} aside and run `cacheclip data get eurosat`" in line


def test_real_pins_and_counts_apply_without_overrides(cli, make_data, tmp_path, monkeypatch):
    monkeypatch.delenv("CACHECLIP_SOURCES", raising=False)
    root = make_data("food101", **SMALL).parent
    make_data("dtd", **SMALL)
    code, out, err = cli("data", "check", "food101,dtd", "--root", root)
    assert code == 1, out + err
    assert "food101: split has 4/2/2 train/val/test items, published 50500/20200/30300" in out  # no pin: counts
    assert "split_zhou_DescribableTextures.json differs from CoOp's published file" in out  # pinned sha256


def test_missing_layout_names_the_fix(cli, tmp_path):
    (tmp_path / "root").mkdir()
    code, out, _ = cli("data", "check", "eurosat,imagenet,stanford_cars", "--root", tmp_path / "root")
    assert code == 1
    lines = out.splitlines()
    assert any("eurosat" in x and "fix: run `cacheclip data get eurosat`" in x for x in lines), out
    assert any("imagenet" in x and "registered account" in x for x in lines), out
    assert any("stanford_cars" in x and "cars_train/" in x for x in lines), out


def test_check_dataset_result(make_data, tmp_path):
    folder = make_data("oxford_pets", **SMALL)
    sources = json.loads(_pin(tmp_path, folder, "oxford_pets", "split_zhou_OxfordPets.json").read_text())
    result = check_dataset("pets", folder.parent, overrides=sources)
    assert result.ok and result.counts == (4, 2, 2) and result.name == "oxford_pets"


def test_check_items_raises_before_extract_encodes(make_data):
    folder = make_data("eurosat", **SMALL)
    ds = load_dataset("eurosat", folder.parent)
    check_items(ds, ds.train)  # all fine
    (ds.image_root / ds.train[1].path).write_bytes(b"")
    with pytest.raises(CorruptImageError, match=f"cannot decode {ds.image_root / ds.train[1].path}: not a readable"):
        check_items(ds, ds.train)
    shutil.rmtree(ds.image_root / ds.test[0].path.split("/")[0])
    with pytest.raises(MissingImagesError, match="missing") as e:
        check_items(ds, ds.test)
    assert "cacheclip data get eurosat" in e.value.hint


def test_data_list_and_datasets_alias(cli):
    code, out, _ = cli("data", "list")
    assert code == 0 and "eurosat/" in out and "split file only; images by hand" in out
    code2, out2, _ = cli("datasets")
    assert code2 == 0 and out2 == out
