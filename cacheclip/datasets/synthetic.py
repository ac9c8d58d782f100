"""Small fake datasets in the exact on-disk layouts of the real ones (PIL + numpy).

Used by the tests and by ``cacheclip demo``. Every class gets its own colour and
stripe pattern (frequency and orientation), and every image its own stripe phase
and pixel noise, so classes are easy to tell apart yet no two images are equal.
Output is deterministic for a seed.
"""

from __future__ import annotations

import colorsys
import json
import math
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cacheclip.datasets.catalog import dataset_folder, get_dataset_spec, resolve_name

# --------------------------------------------------------------------------- images


def class_image(label: int, n_classes: int, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """An RGB image (width, height = ``size``) that looks like class ``label``."""
    w, h = size
    hue = label / max(n_classes, 1)
    fg = np.array(colorsys.hsv_to_rgb(hue, 0.85, 0.95)) * 255  # (3,)
    bg = np.array(colorsys.hsv_to_rgb((hue + 0.5) % 1.0, 0.6, 0.35)) * 255
    theta = math.pi * label / max(n_classes, 1)  # stripe orientation per class
    freq = 2.0 + 1.5 * (label % 4)  # stripe cycles per image side
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)  # (h, w) each
    phase = rng.uniform(0, 2 * math.pi)  # per-image offset of the pattern
    wave = 0.5 + 0.5 * np.sin(2 * math.pi * freq * (xx * math.cos(theta) + yy * math.sin(theta)) + phase)
    img = wave[..., None] * fg + (1 - wave[..., None]) * bg  # (h, w, 3)
    img += rng.normal(0, 12, size=img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def _size(square: bool, s: int, rng: random.Random) -> tuple[int, int]:
    if square:
        return (s, s)
    return rng.choice([(s, s), (s * 6 // 5, s * 9 // 10), (s * 3 // 4, s), (s * 4 // 3, s * 3 // 4)])


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    image.save(path, fmt, **({"quality": 90} if fmt == "JPEG" else {}))


# --------------------------------------------------------------------------- class pools

# (folder or file stem, class name as the real split file spells it)
_POOLS: dict[str, list[tuple[str, str]]] = {
    "imagenet": [
        ("n01440764", "tench"),
        ("n01443537", "goldfish"),
        ("n01484850", "great white shark"),
        ("n01491361", "tiger shark"),
        ("n01494475", "hammerhead shark"),
        ("n01496331", "electric ray"),
        ("n01498041", "stingray"),
        ("n01514668", "rooster"),
        ("n01514859", "hen"),
        ("n01518878", "ostrich"),
        ("n01530575", "brambling"),
        ("n01531178", "goldfinch"),
        ("n01532829", "house finch"),
        ("n01534433", "junco"),
        ("n01537544", "indigo bunting"),
        ("n01558993", "American robin"),
    ],
    "caltech101": [
        ("Faces", "face"),
        ("Leopards", "leopard"),
        ("Motorbikes", "motorbike"),
        ("accordion", "accordion"),
        ("airplanes", "airplane"),
        ("anchor", "anchor"),
        ("ant", "ant"),
        ("barrel", "barrel"),
    ],
    "oxford_pets": [
        ("Abyssinian", "abyssinian"),
        ("american_bulldog", "american_bulldog"),
        ("Bengal", "bengal"),
        ("beagle", "beagle"),
        ("Birman", "birman"),
        ("boxer", "boxer"),
        ("great_pyrenees", "great_pyrenees"),
        ("Russian_Blue", "russian_blue"),
    ],
    "stanford_cars": [
        ("", n)
        for n in (
            "2012 Audi TTS Coupe",
            "2000 AM General Hummer SUV",
            "2012 BMW M3 Coupe",
            "2007 Suzuki Aerio Sedan",
            "2012 Ferrari 458 Italia Convertible",
            "2012 Tesla Model S Sedan",
            "1993 Volvo 240 Sedan",
            "2012 smart fortwo Convertible",
        )
    ],
    "oxford_flowers": [
        ("", n)
        for n in (
            "pink primrose",
            "hard-leaved pocket orchid",
            "canterbury bells",
            "sweet pea",
            "passion flower",
            "sunflower",
            "blackberry lily",
            "english marigold",
        )
    ],
    "food101": [
        (c, c)
        for c in (
            "apple_pie",
            "baby_back_ribs",
            "baklava",
            "beef_carpaccio",
            "bibimbap",
            "churros",
            "hot_dog",
            "ice_cream",
        )
    ],
    "fgvc_aircraft": [
        ("", n)
        for n in ("707-320", "A300B4", "Boeing 717", "F-16A/B", "F/A-18", "Falcon 2000", "Cessna 172", "DHC-8-100")
    ],
    # SUN397 folders are <letter>/<name>[/<sub>]; CoOp's class name puts <sub> first.
    "sun397": [
        ("a/abbey", "abbey"),
        ("b/bakery/shop", "shop bakery"),
        ("a/apse/indoor", "indoor apse"),
        ("b/beach", "beach"),
        ("c/campsite", "campsite"),
        ("k/kitchen", "kitchen"),
        ("l/library/indoor", "indoor library"),
        ("s/skyscraper", "skyscraper"),
    ],
    "dtd": [(c, c) for c in ("banded", "blotchy", "braided", "bubbly", "bumpy", "chequered", "cobwebbed", "cracked")],
    "eurosat": [
        ("AnnualCrop", "Annual Crop Land"),
        ("Forest", "Forest"),
        ("HerbaceousVegetation", "Herbaceous Vegetation Land"),
        ("Highway", "Highway or Road"),
        ("Industrial", "Industrial Buildings"),
        ("Pasture", "Pasture Land"),
        ("PermanentCrop", "Permanent Crop Land"),
        ("Residential", "Residential Buildings"),
        ("River", "River"),
        ("SeaLake", "Sea or Lake"),
    ],
    "ucf101": [
        (c, c)
        for c in (
            "Apply_Eye_Makeup",
            "Archery",
            "Baby_Crawling",
            "Balance_Beam",
            "Band_Marching",
            "Basketball",
            "Biking",
            "Billiards",
        )
    ],
}
_SQUARE = {"eurosat", "dtd"}  # real images are square; the others vary in size
_SHUFFLED_CLASS_ORDER = {"oxford_flowers", "stanford_cars"}  # real files list classes unsorted


def _classes(name: str, n: int) -> list[tuple[str, str]]:
    pool = _POOLS[name]
    extra = [
        (f"{stem}{i}" if stem else "", f"{cname} {i}")
        for i in range(len(pool), n)
        for stem, cname in [pool[i % len(pool)]]
    ]
    return (pool + extra)[:n]


# --------------------------------------------------------------------------- layouts


@dataclass
class _Draw:
    label: int
    stem: str  # folder or file stem of the class
    classname: str
    split: str
    number: int  # unique image number within the dataset


PathFn = Callable[[_Draw, random.Random], str]


def _sun_name(d: _Draw, rng: random.Random) -> str:
    return f"{d.stem}/sun_{''.join(rng.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(16))}.jpg"


_PATHS: dict[str, PathFn] = {
    "caltech101": lambda d, r: f"{d.stem}/image_{d.number:04d}.jpg",
    "oxford_pets": lambda d, r: f"{d.stem}_{d.number}.jpg",
    "stanford_cars": lambda d, r: f"cars_{'test' if d.split == 'test' else 'train'}/{d.number:05d}.jpg",
    "oxford_flowers": lambda d, r: f"image_{d.number:05d}.jpg",
    "food101": lambda d, r: f"{d.stem}/{d.number + 100000}.jpg",
    "sun397": _sun_name,
    "dtd": lambda d, r: f"{d.stem}/{d.stem}_{d.number:04d}.jpg",
    "eurosat": lambda d, r: f"{d.stem}/{d.stem}_{d.number}.jpg",
    "ucf101": lambda d, r: f"{d.stem}/v_{d.stem.replace('_', '')}_g{d.number // 7 + 1:02d}_c{d.number % 7 + 1:02d}.jpg",
}


def _draws(name: str, classes: list[tuple[str, str]], counts: dict[str, int], rng: random.Random) -> list[_Draw]:
    """Every image of the dataset, with unique random numbers, per split in list order."""
    total = len(classes) * sum(counts.values())
    numbers = rng.sample(range(1, 10 * total + 10), total)
    draws = []
    for split, n in counts.items():
        order = list(range(len(classes)))
        if name in _SHUFFLED_CLASS_ORDER:
            rng.shuffle(order)
        for label in order:
            stem, cname = classes[label]
            draws.extend(_Draw(label, stem, cname, split, numbers.pop()) for _ in range(n))
    if name == "stanford_cars":  # the real test list is in file order, labels mixed
        test = sorted((d for d in draws if d.split == "test"), key=lambda d: d.number)
        draws = [d for d in draws if d.split != "test"] + test
    return draws


def _write_images(
    draws: list[_Draw],
    paths: list[str],
    image_root: Path,
    n_classes: int,
    image_size: int,
    square: bool,
    rng: random.Random,
    np_rng: np.random.Generator,
) -> None:
    for d, rel in zip(draws, paths, strict=False):
        _save(class_image(d.label, n_classes, _size(square, image_size, rng), np_rng), image_root / rel)


def make_dataset(
    name: str,
    data_root: Path,
    *,
    n_classes: int = 4,
    n_train: int = 6,
    n_val: int = 3,
    n_test: int = 3,
    image_size: int = 40,
    seed: int = 0,
) -> Path:
    """Write a fake ``name`` dataset under ``data_root`` in its real layout; return its folder.

    ``n_*`` are images per class. ImageNet has no val (its val/ folder is the test set),
    so it uses ``n_test`` for val/ and ignores ``n_val``. ImageNet's shift sets (V2, Sketch,
    A, R) are test only: ``n_classes`` is the ImageNet they shift (use the same value for
    both), ``n_test`` images per kept class; A and R keep a subset of the classes.
    """
    name = resolve_name(name)
    spec = get_dataset_spec(name)
    folder = dataset_folder(name, Path(data_root))
    image_root = folder / spec.image_root if spec.image_root else folder
    rng = random.Random(f"{seed}:{name}")
    np_rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    if spec.shift_of == "imagenet":
        return _make_imagenet_shift(name, folder, image_root, n_classes, n_test, image_size, rng, np_rng)
    classes = _classes(name, n_classes)
    square = name in _SQUARE
    if name == "imagenet":
        classes.sort()  # labels follow sorted wnids
        draws = _draws(name, classes, {"train": n_train, "val": n_test}, rng)
        paths = [
            f"{d.split}/{d.stem}/{d.stem}_{d.number}.JPEG"
            if d.split == "train"
            else f"val/{d.stem}/ILSVRC2012_val_{d.number:08d}.JPEG"
            for d in draws
        ]
        _write_images(draws, paths, image_root, n_classes, image_size, square, rng, np_rng)
        (folder / "classnames.txt").write_text("".join(f"{w} {c}\n" for w, c in classes))
        return folder
    draws = _draws(name, classes, {"train": n_train, "val": n_val, "test": n_test}, rng)
    if name == "fgvc_aircraft":
        paths = [f"{d.number + 1000000}.jpg" for d in draws]
        _write_images(draws, paths, image_root, n_classes, image_size, square, rng, np_rng)
        (folder / "variants.txt").write_text("".join(f"{c}\n" for _, c in classes))
        for split in ("train", "val", "test"):
            lines = sorted(f"{p[:-4]} {d.classname}\n" for d, p in zip(draws, paths, strict=False) if d.split == split)
            (folder / f"images_variant_{split}.txt").write_text("".join(lines))
        return folder
    paths = [_PATHS[name](d, rng) for d in draws]
    _write_images(draws, paths, image_root, n_classes, image_size, square, rng, np_rng)
    if name == "caltech101":  # present in the real download, absent from the split
        for i in range(2):
            _save(
                class_image(0, 1, (image_size, image_size), np_rng),
                image_root / "BACKGROUND_Google" / f"image_{i + 1:04d}.jpg",
            )
    split = {
        s: [[p, d.label, d.classname] for d, p in zip(draws, paths, strict=True) if d.split == s]
        for s in ("train", "val", "test")
    }
    (folder / spec.split_file).write_text(json.dumps(split, indent=4))
    return folder


# --------------------------------------------------------------------------- ImageNet shift sets

# Which of ImageNet's labels a generated A or R keeps (the real ones keep 200 of 1000): neither a
# prefix nor the same set, so matching the classes by wnid is exercised.
_SHIFT_SUBSETS: dict[str, Callable[[int], bool]] = {
    "imagenet-a": lambda label: label % 2 == 1,
    "imagenet-r": lambda label: label % 3 != 0,
}


def _shift_path(name: str, label: int, wnid: str, number: int) -> str:
    if name == "imagenet-v2":  # the folder is the class index; file names are content hashes
        return f"{label}/{zlib.crc32(str(number).encode()):08x}{number}.jpeg"
    if name == "imagenet-sketch":
        return f"{wnid}/sketch_{number}.JPEG"
    return f"{wnid}/{number:04d}_{wnid}.jpg"


def _make_imagenet_shift(
    name: str,
    folder: Path,
    image_root: Path,
    n_classes: int,
    n_test: int,
    image_size: int,
    rng: random.Random,
    np_rng: np.random.Generator,
) -> Path:
    """A test-only shift set of the ImageNet that ``make_dataset("imagenet", n_classes=...)`` writes:
    the same classes (classnames.txt), each image drawn like its ImageNet class (Sketch in grey),
    A and R with a class subset and a README.txt beside the class folders."""
    classes = sorted(_classes("imagenet", n_classes))  # ImageNet's label order
    keep = _SHIFT_SUBSETS.get(name, lambda label: True)
    numbers = iter(rng.sample(range(1, 10 * n_classes * n_test + 10), n_classes * n_test))
    for label, (wnid, _) in enumerate(classes):
        if not keep(label):
            continue
        for _ in range(n_test):
            image = class_image(label, n_classes, _size(False, image_size, rng), np_rng)
            if name == "imagenet-sketch":
                image = image.convert("L").convert("RGB")
            _save(image, image_root / _shift_path(name, label, wnid, next(numbers)))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classnames.txt").write_text("".join(f"{w} {c}\n" for w, c in classes))
    if name in _SHIFT_SUBSETS:
        (image_root / "README.txt").write_text(f"{name}: {sum(map(keep, range(n_classes)))} classes\n")
    return folder


# --------------------------------------------------------------------------- image folders

_FOLDER_CLASSES = ["red_fox", "blue_whale", "green_apple", "golden_retriever", "snow_owl", "sea_turtle"]


def make_imagefolder(
    path: Path,
    *,
    n_classes: int = 3,
    n_per_class: int = 8,
    with_splits: bool = False,
    n_eval_per_class: int = 3,
    image_size: int = 40,
    seed: int = 0,
) -> Path:
    """Write class folders of images under ``path`` (for ``imagefolder:<path>``); return ``path``.

    Without splits: ``path/<class>/`` with ``n_per_class`` images each. With splits:
    ``path/{train,val,test}/<class>/``, train with ``n_per_class`` and val/test with
    ``n_eval_per_class`` images per class. Every fourth image is a PNG, and each class
    folder also holds a non-image file and a hidden file, which loaders must skip.
    """
    path = Path(path)
    rng = random.Random(f"{seed}:imagefolder")
    np_rng = np.random.default_rng([seed, 1])
    names = [_FOLDER_CLASSES[i] if i < len(_FOLDER_CLASSES) else f"class_{i}" for i in range(n_classes)]
    parts = (
        {"train": n_per_class, "val": n_eval_per_class, "test": n_eval_per_class} if with_splits else {"": n_per_class}
    )
    for part, n in parts.items():
        for label, cname in enumerate(names):
            class_dir = path / part / cname if part else path / cname
            for j in range(n):
                suffix = ".png" if j % 4 == 3 else ".jpg"
                size = _size(False, image_size, rng)
                _save(class_image(label, n_classes, size, np_rng), class_dir / f"img_{j:03d}{suffix}")
            (class_dir / "notes.txt").write_text("not an image\n")
            (class_dir / ".DS_Store").write_bytes(b"\0")
    return path
