"""ImageNet's distribution-shift test sets (V2, Sketch, A, R) in CoOp's layouts: names, groups,
labels (both traps), class ids and split hashes, on generated data."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cacheclip.datasets.catalog import (
    COOP11,
    IMAGENET_SHIFT,
    dataset_folder,
    expand_group,
    expand_names,
    get_dataset_spec,
    is_shift_set,
    resolve_name,
)
from cacheclip.datasets.layouts import load_dataset
from cacheclip.datasets.synthetic import make_dataset
from cacheclip.errors import DatasetLayoutError, UnknownNameError

N_CLASSES = 12  # more than ten, so a sorted listing of V2's folders puts '10' before '2'


@pytest.fixture(scope="module")
def shift_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ImageNet and its four shift sets, 12 classes, generated once; read only."""
    root = tmp_path_factory.mktemp("shift_data")
    make_dataset("imagenet", root, n_classes=N_CLASSES, n_train=1, n_test=1, image_size=16)
    for name in IMAGENET_SHIFT:
        make_dataset(name, root, n_classes=N_CLASSES, n_test=2, image_size=16)
    return root


def _copy(shift_root: Path, name: str, tmp_path: Path) -> tuple[Path, Path]:
    """(data root, dataset folder) of a private copy of ``name``."""
    folder = dataset_folder(name, shift_root)
    shutil.copytree(folder, tmp_path / folder.name)
    return tmp_path, tmp_path / folder.name


def _imagenet_lines(shift_root: Path) -> list[tuple[str, str]]:
    """(wnid, name) of classnames.txt, read here independently of the loaders."""
    text = (shift_root / "imagenet" / "classnames.txt").read_text()
    return [tuple(line.split(" ", 1)) for line in text.splitlines()]


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "alias, canonical",
    [
        ("imagenetv2", "imagenet-v2"),
        ("ImageNet-V2", "imagenet-v2"),
        ("imagenet_v2", "imagenet-v2"),
        ("imagenet_sketch", "imagenet-sketch"),
        ("ImageNet-Sketch", "imagenet-sketch"),
        ("ImageNet-A", "imagenet-a"),
        ("imagenet_a", "imagenet-a"),
        ("imagenet-adversarial", "imagenet-a"),
        ("ImageNet-R", "imagenet-r"),
        ("imagenet-rendition", "imagenet-r"),
    ],
)
def test_aliases(alias, canonical):
    assert resolve_name(alias) == canonical
    assert is_shift_set(alias) and get_dataset_spec(alias).shift_of == "imagenet"


def test_group_name_expands_wherever_a_list_is_accepted():
    assert expand_group("imagenet-shift") == list(IMAGENET_SHIFT) == expand_group("ImageNet_Shift")
    assert list(IMAGENET_SHIFT) == ["imagenet-v2", "imagenet-sketch", "imagenet-a", "imagenet-r"]
    assert expand_names("imagenet,imagenet-shift") == ["imagenet", *IMAGENET_SHIFT]
    assert expand_names(["ImageNet-A", "imagenet-shift"]) == [
        "imagenet-a",
        "imagenet-v2",
        "imagenet-sketch",
        "imagenet-r",
    ]
    # 'all' is what one can fit on: the test-only sets stay out of it
    assert expand_names("all") == list(COOP11) and not is_shift_set("imagenet")
    assert expand_group("eurosat") is None
    with pytest.raises(UnknownNameError) as err:  # a group is not a dataset
        resolve_name("imagenet-shift")
    assert "imagenet-shift" in err.value.hint


# --------------------------------------------------------------------------- labels


def test_v2_label_is_the_integer_folder_not_the_sorted_position(shift_root):
    ds = load_dataset("imagenetv2", shift_root)
    lines = _imagenet_lines(shift_root)
    assert ds.classnames == tuple(n for _, n in lines) and ds.class_ids == tuple(w for w, _ in lines)
    assert not ds.train and not ds.val and len(ds.test) == 2 * N_CLASSES
    for item in ds.test:
        index = int(item.path.split("/")[0])
        assert item.label == index and item.classname == lines[index][1]
    sorted_folders = sorted({it.path.split("/")[0] for it in ds.test})
    assert sorted_folders[:4] == ["0", "1", "10", "11"]  # the trap is live: position 2 is folder '10'
    assert {it.label for it in ds.test if it.path.startswith("10/")} == {10}


def test_sketch_keeps_imagenet_order_and_every_class(shift_root):
    ds, imagenet = load_dataset("imagenet_sketch", shift_root), load_dataset("imagenet", shift_root)
    assert ds.class_ids == imagenet.class_ids and ds.classnames == imagenet.classnames
    for item in ds.test:
        assert ds.class_ids[item.label] == item.path.split("/")[0]


@pytest.mark.parametrize(
    "name, kept", [("imagenet-a", [1, 3, 5, 7, 9, 11]), ("imagenet-r", [1, 2, 4, 5, 7, 8, 10, 11])]
)
def test_a_and_r_have_a_class_subset_matched_by_wnid(shift_root, name, kept):
    ds = load_dataset(name, shift_root)
    lines = _imagenet_lines(shift_root)
    assert ds.class_ids == tuple(lines[i][0] for i in kept)  # the present wnids, in ImageNet order
    assert ds.classnames == tuple(lines[i][1] for i in kept)  # ImageNet's readable names
    for item in ds.test:
        wnid = item.path.split("/")[0]
        assert ds.class_ids[item.label] == wnid and item.classname == dict(lines)[wnid]
    assert (ds.image_root / "README.txt").is_file() and "README.txt" not in {it.path for it in ds.test}
    assert len(ds.test) == 2 * len(kept) and not ds.train and not ds.val


def test_imagenet_records_its_wnids(shift_root):
    ds = load_dataset("imagenet", shift_root)
    assert ds.class_ids == tuple(w for w, _ in _imagenet_lines(shift_root))


# --------------------------------------------------------------------------- split hash and errors


def test_split_hash_covers_classnames_and_listing(shift_root, tmp_path):
    root, folder = _copy(shift_root, "imagenet-a", tmp_path)
    before = load_dataset("imagenet-a", root).split_sha256
    assert before == load_dataset("imagenet-a", shift_root).split_sha256  # location is not part of it
    (folder / "imagenet-a" / "README.txt").write_text("another readme\n")
    assert load_dataset("imagenet-a", root).split_sha256 == before  # not part of the split
    image = next((folder / "imagenet-a").glob("n*/*.jpg"))
    shutil.copy(image, image.with_name("extra.jpg"))
    after_image = load_dataset("imagenet-a", root).split_sha256
    assert after_image != before
    names = folder / "classnames.txt"
    names.write_text(names.read_text().replace("goldfish", "gold fish"))
    assert load_dataset("imagenet-a", root).split_sha256 != after_image


def test_v2_hash_changes_when_an_image_moves_class(shift_root, tmp_path):
    root, folder = _copy(shift_root, "imagenet-v2", tmp_path)
    before = load_dataset("imagenet-v2", root)
    image_root = before.image_root
    moved = next((image_root / "2").iterdir())
    moved.rename(image_root / "10" / moved.name)
    after = load_dataset("imagenet-v2", root)
    assert after.split_sha256 != before.split_sha256
    assert [it.label for it in after.test if it.path.endswith(moved.name)] == [10]


def test_layout_errors(shift_root, tmp_path):
    root, folder = _copy(shift_root, "imagenet-v2", tmp_path)
    image_root = folder / "imagenetv2-matched-frequency-format-val"
    (image_root / "3").rename(image_root / "03")  # not a class index as written
    with pytest.raises(DatasetLayoutError, match="class indices"):
        load_dataset("imagenet-v2", root)
    shutil.rmtree(image_root / "03")  # a partial download: class 3 missing
    with pytest.raises(DatasetLayoutError, match="1 of the 12 classes"):
        load_dataset("imagenet-v2", root)
    root, folder = _copy(shift_root, "imagenet-sketch", tmp_path / "s")
    (folder / "images" / "n99999999").mkdir()
    with pytest.raises(DatasetLayoutError, match="no line in classnames.txt"):
        load_dataset("imagenet-sketch", root)
    (folder / "images" / "n99999999").rmdir()
    shutil.rmtree(next((folder / "images").iterdir()))
    with pytest.raises(DatasetLayoutError, match="no class folder"):
        load_dataset("imagenet-sketch", root)
    (folder / "classnames.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="classnames.txt"):
        load_dataset("imagenet-sketch", root)
