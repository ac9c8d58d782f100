"""Your own data: an image folder (one sub-folder per class), with ``train/ val/ test/``
sub-folders or a seeded split per class."""

from __future__ import annotations

import random
from pathlib import Path

from cacheclip.common import IMAGE_SUFFIXES
from cacheclip.datasets.catalog import SPLITS, DatasetSplits, Item, imagefolder_store_name
from cacheclip.datasets.listing import Skipped, files_in, sha256_files, subdirs
from cacheclip.errors import ConfigError, DatasetLayoutError


def _split_class(
    files: list[str], val_fraction: float, test_fraction: float, rng: random.Random
) -> tuple[list[str], list[str], list[str]]:
    """Shuffle one class's files and cut test, val, train (train keeps at least one)."""
    order = list(files)
    rng.shuffle(order)
    n = len(order)
    n_test = round(n * test_fraction)
    n_val = round(n * val_fraction)
    while n_test + n_val >= n and n_test + n_val > 0:
        if n_val >= n_test and n_val > 0:
            n_val -= 1
        else:
            n_test -= 1
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return sorted(train), sorted(val), sorted(test)


def load_imagefolder(
    path: Path, *, val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0
) -> DatasetSplits:
    """Your own images: one sub-folder per class (the folder name is the class name).

    Either ``train/``, ``test/`` and optionally ``val/`` each hold the class folders,
    or the class folders sit directly in ``path`` and each class is split on its own:
    its sorted files are shuffled by ``random.Random(f"{seed}:{class name}")`` (so
    adding a class leaves the other classes' splits unchanged), then test and val
    fractions are cut off. split_sha256 covers the file listing (and the fractions/seed).
    Odd entries (symlink loops, FIFOs, names that are not UTF-8...) are skipped and reported
    in one ``SkippedFilesWarning``.
    """
    path = Path(path)
    if not path.is_dir():
        raise DatasetLayoutError(
            f"image folder {path} not found",
            "imagefolder:<path> needs a folder with one sub-folder of images per class, "
            "or train/, val/, test/ folders that each hold such class folders",
        )
    if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
        raise ConfigError(
            f"val_fraction {val_fraction} and test_fraction {test_fraction} must be >= 0 and sum below 1",
            "use fractions such as 0.2 and 0.2",
        )
    skipped = Skipped()
    if (path / "train").is_dir():
        classnames, splits, how = _read_split_folders(path, skipped)
        extra = b""
    else:
        classnames, splits = _read_class_folders(path, val_fraction, test_fraction, seed, skipped)
        how = f"seeded split: val {val_fraction}, test {test_fraction}, seed {seed}"
        extra = f"val_fraction={val_fraction!r} test_fraction={test_fraction!r} seed={seed!r}".encode()
    skipped.warn(path)
    listing = "\n".join(sorted(it.path for s in SPLITS for it in splits[s])).encode()
    return DatasetSplits(
        name=imagefolder_store_name(path),
        root=path,
        image_root=path,
        classnames=tuple(classnames),
        train=tuple(splits["train"]),
        val=tuple(splits["val"]),
        test=tuple(splits["test"]),
        split_sha256=sha256_files([("listing", listing), ("split", extra)]),
        split_source=f"class folders of {path} ({how})",
    )


def _no_images(path: Path) -> DatasetLayoutError:
    return DatasetLayoutError(
        f"image folder {path} holds no class folders with images",
        f"put images ({', '.join(sorted(IMAGE_SUFFIXES))}) in one sub-folder per class",
    )


def _read_split_folders(path: Path, skipped: Skipped) -> tuple[list[str], dict[str, list[Item]], str]:
    if not (path / "test").is_dir():
        raise DatasetLayoutError(
            f"image folder {path} has train/ but no test/",
            "add test/ (and optionally val/) with the same class folders as train/",
        )
    classnames = subdirs(path / "train", skipped)
    if not classnames:
        raise _no_images(path / "train")
    label_of = {c: i for i, c in enumerate(classnames)}
    splits: dict[str, list[Item]] = {}
    for split in SPLITS:
        split_dir = path / split
        found = subdirs(split_dir, skipped if split != "train" else Skipped()) if split_dir.is_dir() else []
        unknown = [c for c in found if c not in label_of]
        if unknown:
            raise DatasetLayoutError(
                f"{split_dir} has class folders that train/ lacks: {', '.join(unknown[:3])}",
                "every class folder in val/ and test/ must also exist in train/",
            )
        splits[split] = [
            Item(f"{split}/{c}/{f}", label_of[c], c)
            for c in found
            for f in files_in(split_dir / c, IMAGE_SUFFIXES, skipped)
        ]
    if not splits["train"]:
        raise _no_images(path / "train")
    return classnames, splits, "train/val/test folders"


def _read_class_folders(
    path: Path, val_fraction: float, test_fraction: float, seed: int, skipped: Skipped
) -> tuple[list[str], dict[str, list[Item]]]:
    per_class = {c: files_in(path / c, IMAGE_SUFFIXES, skipped) for c in subdirs(path, skipped)}
    classnames = [c for c, files in per_class.items() if files]
    if not classnames:
        raise _no_images(path)
    splits: dict[str, list[Item]] = {s: [] for s in SPLITS}
    for label, c in enumerate(classnames):
        rng = random.Random(f"{seed}:{c}")
        parts = _split_class(per_class[c], val_fraction, test_fraction, rng)
        for split, files in zip(SPLITS, parts, strict=False):
            splits[split].extend(Item(f"{c}/{f}", label, c) for f in files)
    return classnames, splits
