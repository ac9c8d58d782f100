"""Dataset names, loaders on generated fixtures in the real layouts, and every error path."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from cacheclip.datasets.catalog import (
    COOP11,
    DatasetSpec,
    check_images,
    dataset_folder,
    expand_names,
    get_dataset_spec,
    list_datasets,
    register_dataset,
    resolve_data_root,
    resolve_name,
    unregister_dataset,
)
from cacheclip.datasets.imagefolder import load_imagefolder
from cacheclip.datasets.layouts import load_dataset
from cacheclip.datasets.synthetic import make_dataset
from cacheclip.errors import ConfigError, DatasetLayoutError, MissingImagesError, UnknownNameError

COOP_ORDER = [
    "imagenet",
    "caltech101",
    "oxford_pets",
    "stanford_cars",
    "oxford_flowers",
    "food101",
    "fgvc_aircraft",
    "sun397",
    "dtd",
    "eurosat",
    "ucf101",
]

# --------------------------------------------------------------------------- names


def test_list_datasets_is_coop_order():
    assert list_datasets()[:11] == COOP_ORDER
    assert list(COOP11) == COOP_ORDER


@pytest.mark.parametrize(
    "alias, canonical",
    [
        ("EuroSAT", "eurosat"),
        ("euro_sat", "eurosat"),
        ("Flowers102", "oxford_flowers"),
        ("oxford-flowers", "oxford_flowers"),
        ("OxfordPets", "oxford_pets"),
        ("pets", "oxford_pets"),
        ("StanfordCars", "stanford_cars"),
        ("cars", "stanford_cars"),
        ("FGVCAircraft", "fgvc_aircraft"),
        ("aircraft", "fgvc_aircraft"),
        ("Food101", "food101"),
        ("food-101", "food101"),
        ("SUN397", "sun397"),
        ("Caltech101", "caltech101"),
        ("caltech-101", "caltech101"),
        ("DescribableTextures", "dtd"),
        ("DTD", "dtd"),
        ("UCF101", "ucf101"),
        ("ImageNet", "imagenet"),
        ("IMAGENET", "imagenet"),
    ],
)
def test_resolve_name_aliases(alias, canonical):
    assert resolve_name(alias) == canonical


def test_resolve_name_unknown_lists_valid_names():
    with pytest.raises(UnknownNameError) as err:
        resolve_name("mnist")
    assert "mnist" in err.value.message and "eurosat" in err.value.message and "ucf101" in err.value.message
    assert "imagefolder:" in err.value.hint


def test_resolve_name_imagefolder_passes_through():
    assert resolve_name("imagefolder:/some/Path_x") == "imagefolder:/some/Path_x"
    with pytest.raises(UnknownNameError):
        resolve_name("imagefolder:")


def test_expand_names():
    assert expand_names(["all"]) == COOP_ORDER
    assert expand_names("coop11") == COOP_ORDER
    assert expand_names(["EuroSAT,dtd", "eurosat", " pets , "]) == ["eurosat", "dtd", "oxford_pets"]
    assert expand_names(["dtd", "ALL"]) == ["dtd"] + [n for n in COOP_ORDER if n != "dtd"]
    with pytest.raises(UnknownNameError):
        expand_names(["dtd,nope"])


def test_register_dataset(coop_root):
    spec = DatasetSpec(
        name="eurosat_copy",
        folder="eurosat",
        image_root="2750",
        split_file="split_zhou_EuroSAT.json",
        template_key="eurosat",
        aliases=("ESC",),
    )
    with pytest.raises(ConfigError):  # the folder name 'eurosat' is taken
        register_dataset(spec)
    spec = DatasetSpec(
        name="eurosat_copy",
        folder="eurosat_copy",
        image_root="2750",
        split_file="split_zhou_EuroSAT.json",
        aliases=("ESC",),
    )
    register_dataset(spec)
    try:
        assert resolve_name("esc") == "eurosat_copy" and get_dataset_spec("ESC") is spec
        assert list_datasets()[-1] == "eurosat_copy" and "eurosat_copy" not in expand_names("coop11")
        shutil.copytree(coop_root / "eurosat", coop_root.parent / "reg" / "eurosat_copy")
        ds = load_dataset("ESC", coop_root.parent / "reg")
        assert ds.name == "eurosat_copy" and len(ds.classnames) == 4
    finally:
        unregister_dataset("eurosat_copy")
    with pytest.raises(UnknownNameError):
        resolve_name("esc")


# --------------------------------------------------------------------------- roots and folders


def test_resolve_data_root(monkeypatch, tmp_path):
    monkeypatch.delenv("CACHECLIP_DATA", raising=False)
    assert resolve_data_root(tmp_path) == tmp_path
    assert resolve_data_root(str(tmp_path)) == tmp_path
    (tmp_path / "sub").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "sub")
    assert resolve_data_root(tmp_path / "sub" / "..") == tmp_path  # messages show no ".."
    assert resolve_data_root(tmp_path / "link") == tmp_path / "link"  # a symlink is kept as given
    with pytest.raises(DatasetLayoutError) as err:
        resolve_data_root(None)
    assert "--root" in err.value.message and "CACHECLIP_DATA" in err.value.message
    assert "CACHECLIP_DATA" in err.value.hint
    monkeypatch.setenv("CACHECLIP_DATA", str(tmp_path))
    assert resolve_data_root(None) == tmp_path
    with pytest.raises(DatasetLayoutError) as err:
        resolve_data_root(tmp_path / "nope")
    assert "nope" in err.value.message and "not a folder" in err.value.message


def test_dataset_folder_uses_coop_folder_names(tmp_path):
    assert dataset_folder("Caltech101", tmp_path) == tmp_path / "caltech-101"
    assert dataset_folder("food101", tmp_path) == tmp_path / "food-101"
    assert dataset_folder("imagefolder:/x/y", tmp_path) == Path("/x/y")


# --------------------------------------------------------------------------- loaders, all datasets


@pytest.mark.parametrize("name", COOP_ORDER)
def test_load_every_dataset(coop_root, name):
    ds = load_dataset(name, coop_root)
    spec = get_dataset_spec(name)
    assert ds.name == name and ds.root == coop_root / spec.folder
    assert ds.image_root == (ds.root / spec.image_root if spec.image_root else ds.root)
    assert len(ds.classnames) == 4
    for split in ("train", "val", "test"):
        items = ds.split(split)
        assert all(ds.classnames[it.label] == it.classname for it in items)
        check_images(ds, items)
    assert {it.label for it in ds.train} == set(range(4))
    assert ds.has_val == (name != "imagenet")
    assert len(ds.split_sha256) == 64
    assert load_dataset(name, coop_root) == ds  # deterministic


def test_eurosat(coop_root):
    ds = load_dataset("EuroSAT", coop_root)
    assert ds.image_root == coop_root / "eurosat" / "2750"
    assert ds.classnames[:2] == ("Annual Crop Land", "Forest")
    assert ds.train[0].path.startswith("AnnualCrop/AnnualCrop_")
    assert ds.split_source == "split_zhou_EuroSAT.json"
    raw = (coop_root / "eurosat" / "split_zhou_EuroSAT.json").read_bytes()
    assert ds.split_sha256 == hashlib.sha256(raw).hexdigest()
    first = json.loads(raw)["train"][0]
    assert (ds.train[0].path, ds.train[0].label, ds.train[0].classname) == tuple(first)
    with pytest.raises(UnknownNameError):
        ds.split("valid")


def test_oxford_pets_flat_paths(coop_root):
    ds = load_dataset("pets", coop_root)
    assert ds.image_root == coop_root / "oxford_pets" / "images"
    assert all("/" not in it.path for it in ds.train + ds.val + ds.test)
    assert ds.train[0].path.startswith("Abyssinian_") and ds.classnames[0] == "abyssinian"


def test_stanford_cars_prefixed_paths(coop_root):
    ds = load_dataset("cars", coop_root)
    assert ds.image_root == ds.root == coop_root / "stanford_cars"
    assert all(it.path.startswith("cars_train/") for it in ds.train + ds.val)
    assert all(it.path.startswith("cars_test/") for it in ds.test)
    first_seen = list(dict.fromkeys(it.label for it in ds.train))
    assert first_seen != sorted(first_seen)  # like the real file: class order not sorted
    assert ds.classnames[0] == "2012 Audi TTS Coupe"


def test_imagenet(coop_root):
    ds = load_dataset("imagenet", coop_root)
    assert ds.val == () and not ds.has_val
    assert ds.classnames == ("tench", "goldfish", "great white shark", "tiger shark")
    wnids = sorted(os.listdir(coop_root / "imagenet" / "images" / "train"))
    assert all(it.path.startswith(f"train/{wnids[it.label]}/") for it in ds.train)
    assert all(it.path.startswith(f"val/{wnids[it.label]}/") for it in ds.test)
    for label in range(4):  # file names are sorted within each class
        names = [it.path for it in ds.train if it.label == label]
        assert names == sorted(names)


def test_imagenet_sha_covers_listing_and_classnames(make_data):
    folder = make_data("imagenet")
    before = load_dataset("imagenet", folder.parent).split_sha256
    extra = folder / "images" / "val" / "n01440764" / "ILSVRC2012_val_99999999.JPEG"
    shutil.copy(next(extra.parent.iterdir()), extra)
    after = load_dataset("imagenet", folder.parent)
    assert after.split_sha256 != before and len(after.test) == 13
    names = folder / "classnames.txt"
    names.write_text(names.read_text().replace("tench", "Tinca tinca"))
    assert load_dataset("imagenet", folder.parent).split_sha256 != after.split_sha256


def test_fgvc_aircraft(coop_root):
    ds = load_dataset("fgvc_aircraft", coop_root)
    folder = coop_root / "fgvc_aircraft"
    assert ds.classnames == tuple(folder.joinpath("variants.txt").read_text().splitlines())
    assert "F-16A/B" in ds.classnames and "Boeing 717" in ds.classnames
    assert ds.image_root == folder / "images"
    assert all(it.path.endswith(".jpg") and "/" not in it.path for it in ds.train)
    line = folder.joinpath("images_variant_train.txt").read_text().splitlines()[0]
    image_id, variant = line.split(" ", 1)
    assert any(it.path == f"{image_id}.jpg" and it.classname == variant for it in ds.train)


def test_fgvc_sha_covers_all_files(make_data):
    folder = make_data("fgvc_aircraft")
    before = load_dataset("aircraft", folder.parent).split_sha256
    val = folder / "images_variant_val.txt"
    val.write_text("\n".join(val.read_text().splitlines()[1:]) + "\n")
    assert load_dataset("aircraft", folder.parent).split_sha256 != before


def test_split_sha_changes_with_split_file(make_data):
    folder = make_data("dtd")
    path = folder / "split_zhou_DescribableTextures.json"
    before = load_dataset("dtd", folder.parent)
    split = json.loads(path.read_text())
    split["val"].append(split["train"].pop())
    path.write_text(json.dumps(split))
    after = load_dataset("dtd", folder.parent)
    assert after.split_sha256 != before.split_sha256
    assert len(after.train) == len(before.train) - 1


# --------------------------------------------------------------------------- error paths


def test_dataset_folder_missing(tmp_path):
    with pytest.raises(DatasetLayoutError) as err:
        load_dataset("eurosat", tmp_path)
    msg = err.value.message
    assert str(tmp_path / "eurosat") in msg
    assert f"{(tmp_path / 'eurosat').as_posix()}/2750/<class>/<image>.jpg" in msg
    assert "split_zhou_EuroSAT.json" in msg and "\n" not in msg
    assert "DATASETS.md" in err.value.hint and "--root" in err.value.hint


def test_split_file_missing(make_data):
    folder = make_data("oxford_flowers")
    (folder / "split_zhou_OxfordFlowers.json").unlink()
    with pytest.raises(DatasetLayoutError) as err:
        load_dataset("flowers", folder.parent)
    assert str(folder / "split_zhou_OxfordFlowers.json") in err.value.message
    assert "DATASETS.md" in err.value.hint


def test_split_file_malformed(make_data):
    folder = make_data("eurosat")
    path = folder / "split_zhou_EuroSAT.json"
    path.write_text(path.read_text()[:200])  # truncated download
    with pytest.raises(DatasetLayoutError) as err:
        load_dataset("eurosat", folder.parent)
    assert "split_zhou_EuroSAT.json" in err.value.message and "not valid JSON" in err.value.message
    assert "line" in err.value.message and "re-download" in err.value.hint


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda s: s.pop("val"), "missing list 'val'"),
        (lambda s: s["train"].__setitem__(1, ["a.jpg", "0", "x"]), "train item 1"),
        (lambda s: s["test"][0].__setitem__(2, "Not The Same"), "label 0 is called both"),
        (lambda s: [s[k].__setitem__(slice(None), [r for r in s[k] if r[1] != 1]) for k in s], "1 never appear"),
    ],
)
def test_split_file_bad_content(make_data, mutate, words):
    folder = make_data("eurosat")
    path = folder / "split_zhou_EuroSAT.json"
    split = json.loads(path.read_text())
    mutate(split)
    path.write_text(json.dumps(split))
    with pytest.raises(DatasetLayoutError) as err:
        load_dataset("eurosat", folder.parent)
    assert words in err.value.message and "split_zhou_EuroSAT.json" in err.value.message


def test_images_missing(make_data):
    folder = make_data("eurosat")
    ds = load_dataset("eurosat", folder.parent)
    gone = [ds.train[3].path, ds.train[7].path]
    for p in gone:
        (ds.image_root / p).unlink()
    check_images(ds, ds.val)  # the other splits are complete
    with pytest.raises(MissingImagesError) as err:
        check_images(ds, ds.train)
    msg = err.value.message
    assert msg.startswith(f"2 of {len(ds.train)} images listed in split_zhou_EuroSAT.json are missing")
    assert str(ds.image_root) in msg and f"e.g. {gone[0]}, {gone[1]}" in msg
    assert "--root" in err.value.hint


def test_images_missing_shows_first_three(make_data):
    folder = make_data("oxford_pets")
    ds = load_dataset("oxford_pets", folder.parent)
    shutil.rmtree(ds.image_root)
    with pytest.raises(MissingImagesError) as err:
        check_images(ds, ds.test)
    assert f"{len(ds.test)} of {len(ds.test)} images" in err.value.message
    assert ", ".join(it.path for it in ds.test[:3]) in err.value.message
    assert ds.test[3].path not in err.value.message and "does not exist" in err.value.message


def test_imagenet_errors(make_data):
    folder = make_data("imagenet")
    names = folder / "classnames.txt"
    lines = names.read_text().splitlines()
    names.write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(DatasetLayoutError) as err:
        load_dataset("imagenet", folder.parent)
    assert "1 wnid folders have no line in classnames.txt" in err.value.message
    names.unlink()
    with pytest.raises(DatasetLayoutError) as err:
        load_dataset("imagenet", folder.parent)
    assert "classnames.txt" in err.value.message and "DATASETS.md" in err.value.hint
    names.write_text("\n".join(lines) + "\n")
    shutil.rmtree(folder / "images" / "val" / "n01443537")
    with pytest.raises(DatasetLayoutError) as err:
        load_dataset("imagenet", folder.parent)
    assert "n01443537" in err.value.message
    shutil.rmtree(folder / "images" / "val")
    with pytest.raises(DatasetLayoutError) as err:
        load_dataset("imagenet", folder.parent)
    assert "images/val" in err.value.message


def test_fgvc_errors(make_data):
    folder = make_data("fgvc_aircraft")
    test_txt = folder / "images_variant_test.txt"
    test_txt.write_text(test_txt.read_text() + "1234567 Spitfire Mk IX\n")
    with pytest.raises(DatasetLayoutError) as err:
        load_dataset("fgvc_aircraft", folder.parent)
    assert "'Spitfire Mk IX' is not in variants.txt" in err.value.message
    assert "images_variant_test.txt line" in err.value.message
    (folder / "variants.txt").unlink()
    with pytest.raises(DatasetLayoutError) as err:
        load_dataset("fgvc_aircraft", folder.parent)
    assert "variants.txt not found" in err.value.message and "fgvc-aircraft-2013b" in err.value.hint


# --------------------------------------------------------------------------- image folders


def test_imagefolder_seeded_split(image_folder):
    ds = load_dataset(f"imagefolder:{image_folder}", None)
    assert ds.name.startswith("imagefolder-my_pets-") and ds.root == ds.image_root == image_folder
    assert ds.classnames == ("blue_whale", "green_apple", "red_fox")  # sorted, "_" kept
    every = ds.train + ds.val + ds.test
    assert len({it.path for it in every}) == len(every) == 24  # .png counted, notes/hidden skipped
    assert any(it.path.endswith(".png") for it in every)
    for label in range(3):  # 8 per class: round(1.6) = 2 val, 2 test, 4 train
        assert [sum(it.label == label for it in s) for s in (ds.train, ds.val, ds.test)] == [4, 2, 2]
    check_images(ds, every)
    assert load_dataset(f"imagefolder:{image_folder}", None) == ds


def test_imagefolder_relative_path_made_absolute(image_folder, monkeypatch):
    monkeypatch.chdir(image_folder.parent)
    ds = load_dataset("imagefolder:my_pets", None)
    assert ds.root == ds.image_root == image_folder and ds.root.is_absolute()


def test_imagefolder_split_is_per_class_and_keyed(image_folder):
    before = load_imagefolder(image_folder)
    other = load_imagefolder(image_folder, seed=1)
    assert other.split_sha256 != before.split_sha256 and other.test != before.test
    assert load_imagefolder(image_folder, val_fraction=0.1).split_sha256 != before.split_sha256
    shutil.copytree(image_folder / "red_fox", image_folder / "aa_new_class")
    after = load_imagefolder(image_folder)
    old = {it.path for it in before.test}
    assert old <= {it.path for it in after.test}  # other classes keep their split
    assert after.split_sha256 != before.split_sha256
    with pytest.raises(ConfigError):
        load_imagefolder(image_folder, val_fraction=0.5, test_fraction=0.5)


def test_imagefolder_with_split_folders(image_folder_splits):
    ds = load_dataset(f"imagefolder:{image_folder_splits}", Path("/ignored"))
    assert ds.classnames == ("blue_whale", "green_apple", "red_fox")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (24, 9, 9)
    assert all(it.path.startswith(f"train/{it.classname}/") for it in ds.train)
    assert all(it.path.startswith(f"test/{it.classname}/") for it in ds.test)
    check_images(ds, ds.train + ds.val + ds.test)
    shutil.copytree(image_folder_splits / "test" / "red_fox", image_folder_splits / "test" / "zebra")
    with pytest.raises(DatasetLayoutError) as err:
        load_dataset(f"imagefolder:{image_folder_splits}", None)
    assert "zebra" in err.value.message


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DatasetLayoutError) as err:
        load_dataset(f"imagefolder:{tmp_path / 'nope'}", None)
    assert "nope" in err.value.message and "sub-folder" in err.value.hint
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}", None)
    (tmp_path / "half" / "train" / "a").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError) as err:
        load_dataset(f"imagefolder:{tmp_path / 'half'}", None)
    assert "no test/" in err.value.message


# --------------------------------------------------------------------------- synthetic data


def test_synthetic_is_deterministic_and_varied(tmp_path):
    a = make_dataset("oxford_pets", tmp_path / "a", n_classes=3, n_train=2, n_val=1, n_test=1)
    b = make_dataset("oxford_pets", tmp_path / "b", n_classes=3, n_train=2, n_val=1, n_test=1)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    sizes = set()
    for f in files:
        if f.suffix == ".jpg":
            with Image.open(a / f) as im:
                assert im.format == "JPEG" and im.mode == "RGB"
                sizes.add(im.size)
    assert len(sizes) > 1 and any(w != h for w, h in sizes)


def test_synthetic_more_classes_than_pool(tmp_path):
    folder = make_dataset("eurosat", tmp_path, n_classes=12, n_train=1, n_val=1, n_test=1)
    ds = load_dataset("eurosat", folder.parent)
    assert len(set(ds.classnames)) == 12


def test_store_name_matches_the_loaded_name(image_folder):
    from cacheclip.datasets.catalog import store_name
    from cacheclip.datasets.layouts import load_dataset

    assert store_name("EuroSAT") == "eurosat"
    assert store_name(f"imagefolder:{image_folder}") == load_dataset(f"imagefolder:{image_folder}", None).name
