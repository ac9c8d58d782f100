"""`data check`: is a dataset on disk complete and the published one?

For each dataset: the layout loads (the same loaders `extract` uses), the split counts are the
published ones, the split file's sha256 is the pinned one where CoOp's file is pinned, and every
item is a regular, readable image file. Each problem comes with the command or step that fixes it.
``check_items`` is the part `extract` runs on the items it is about to read.
"""

from __future__ import annotations

import hashlib
import os
import stat
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from cacheclip.datasets.catalog import DatasetSplits, Item, dataset_folder, resolve_data_root, resolve_name
from cacheclip.datasets.layouts import load_dataset
from cacheclip.datasets.listing import SkippedFilesWarning
from cacheclip.datasets.sources import DatasetSource, resolve_source
from cacheclip.errors import CacheClipError, CorruptImageError, MissingImagesError, UnknownNameError

Progress = Callable[[str, int, int], None]


def _no_progress(stage: str, done: int, total: int) -> None:
    pass


@dataclass(frozen=True)
class Problem:
    message: str  # what is wrong, one line
    fix: str  # the command or step that fixes it


@dataclass
class CheckResult:
    name: str
    folder: Path
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # worth knowing, not a failure (duplicate items)
    counts: tuple[int, int, int] | None = None  # train / val / test items found in the split
    split_sha256: str = ""  # as load_dataset computes it (what a store records)

    @property
    def ok(self) -> bool:
        return not self.problems


# --------------------------------------------------------------------------- items


@dataclass
class BadItems:
    missing: list[str] = field(default_factory=list)  # no such file
    not_regular: list[str] = field(default_factory=list)  # a folder, device, ...
    unreadable: list[str] = field(default_factory=list)  # cannot be read or is not an image


def scan_items(
    image_root: Path, items: Sequence[Item], *, deep: bool = False, progress: Progress = _no_progress, stage: str = ""
) -> BadItems:
    """Sort every item that is not a regular, readable image file. The image header is read
    (format and size); ``deep`` decodes every pixel too (slow; finds truncated files)."""
    bad = BadItems()
    base = str(image_root)
    total = len(items)
    for i, it in enumerate(items, start=1):
        path = os.path.join(base, it.path)
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            bad.missing.append(it.path)
        except OSError:
            bad.unreadable.append(it.path)
        else:
            if not stat.S_ISREG(mode):
                bad.not_regular.append(it.path)
            elif not _readable_image(path, deep):
                bad.unreadable.append(it.path)
        if i % 256 == 0 or i == total:
            progress(stage, i, total)
    return bad


def _readable_image(path: str, deep: bool) -> bool:
    """The header (``deep``: every pixel) decodes. PIL's raw DecompressionBombWarning is kept in:
    decoding warns in our words (``listing.read_rgb``), and beyond twice the limit PIL refuses."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if deep:
                    im.load()
                return im.width > 0 and im.height > 0
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False


class DuplicateItemsWarning(SkippedFilesWarning):
    """The same image twice in a split or in two splits (shown like skipped files: ``warning: ...``)."""


def duplicate_items(ds: DatasetSplits) -> str:
    """One line on images listed twice in one split or in two splits ("" when none: CoOp's splits
    have none). A test image also trained on makes the test score not a held-out one."""
    parts = []
    for split in ("train", "val", "test"):
        counts = Counter(it.path for it in ds.split(split))
        twice = [p for p, n in counts.items() if n > 1]
        if twice:
            parts.append(f"{len(twice)} images more than once in {split} (e.g. {', '.join(sorted(twice)[:3])})")
    paths = {s: {it.path for it in ds.split(s)} for s in ("train", "val", "test")}
    for a, b in (("train", "test"), ("train", "val"), ("val", "test")):
        both = paths[a] & paths[b]
        if both:
            parts.append(f"{len(both)} images in both {a} and {b} (e.g. {', '.join(sorted(both)[:3])})")
    if not parts:
        return ""
    return f"{ds.name}: {'; '.join(parts)} in {ds.split_source}; scores on such splits are not held out"


def check_items(
    ds: DatasetSplits, items: Sequence[Item], *, deep: bool = False, progress: Progress = _no_progress
) -> None:
    """Raise MissingImagesError / CorruptImageError unless every item is a regular, readable image.
    What `extract` calls on the items it is about to encode, before any encoding."""
    duplicates = duplicate_items(ds)
    if duplicates:
        warnings.warn(DuplicateItemsWarning(duplicates), stacklevel=2)
    bad = scan_items(ds.image_root, items, deep=deep, progress=progress, stage=f"check {ds.name}")
    fix = _get_fix(ds.name)
    if bad.missing:
        raise MissingImagesError(
            f"{ds.name}: {_some(bad.missing, len(items))} listed in {ds.split_source} "
            f"are missing under {ds.image_root}",
            fix,
        )
    if bad.not_regular or bad.unreadable:
        worse = bad.not_regular + bad.unreadable
        more = f" (and {len(worse) - 1} more of {len(items)} images)" if len(worse) > 1 else ""
        raise CorruptImageError(
            f"cannot decode {ds.image_root / worse[0]}{more}: not a readable image file",
            "replace or delete the file (and its line in the split file), then rerun; "
            f"`cacheclip data check {ds.name}` lists every problem",
        )


def _some(paths: list[str], total: int) -> str:
    return f"{len(paths)} of {total} images (e.g. {', '.join(paths[:3])})"


# --------------------------------------------------------------------------- one dataset


def _source(name: str, overrides: dict | None) -> DatasetSource | None:
    try:
        return resolve_source(name, overrides)
    except UnknownNameError:  # a dataset with no download source (imagefolder:, a plugin's)
        return None


def _get_fix(name: str, source: DatasetSource | None = None, folder: Path | None = None) -> str:
    if name.startswith("imagefolder"):
        return "fix the image folder, then run `cacheclip data check` again"
    if source is not None and source.manual:
        return source.manual.format(folder=folder or f"<root>/{name}")
    if folder is not None and folder.exists():  # `data get` leaves an existing layout alone: never loop back to it
        return f"move the folder aside (mv {folder} {folder}.old), then run `cacheclip data get {name}`"
    return f"run `cacheclip data get {name}` (moves nothing of yours; a partial layout is named)"


def check_dataset(
    name: str,
    root: str | Path | None,
    *,
    overrides: dict | None = None,
    deep: bool = False,
    progress: Progress = _no_progress,
) -> CheckResult:
    """Every check for dataset ``name`` under the data root ``root`` (None: $CACHECLIP_DATA)."""
    name = resolve_name(name)
    source = None if name.startswith("imagefolder:") else _source(name, overrides)
    folder = dataset_folder(name, resolve_data_root(root) if not name.startswith("imagefolder:") else Path())
    result = CheckResult(name, folder)
    try:
        ds = load_dataset(name, root)
    except CacheClipError as err:
        result.problems.append(Problem(err.message, _get_fix(name, source, folder)))
        return result
    result.counts = (len(ds.train), len(ds.val), len(ds.test))
    result.split_sha256 = ds.split_sha256
    result.warnings = [w for w in (duplicate_items(ds),) if w]
    if source is not None:
        result.problems.extend(_published(ds, source))
    bad = scan_items(ds.image_root, _unique_items(ds), deep=deep, progress=progress, stage=f"check {name}")
    n = len(_unique_items(ds))
    fix = _get_fix(name, source, folder)
    for paths, what in (
        (bad.missing, "missing"),
        (bad.not_regular, "not regular files"),
        (bad.unreadable, "unreadable"),
    ):
        if paths:
            result.problems.append(Problem(f"{name}: {_some(paths, n)} are {what} under {ds.image_root}", fix))
    return result


def _unique_items(ds: DatasetSplits) -> list[Item]:
    seen: dict[str, Item] = {}
    for items in (ds.train, ds.val, ds.test):
        for it in items:
            seen.setdefault(it.path, it)
    return list(seen.values())


def _published(ds: DatasetSplits, source: DatasetSource) -> list[Problem]:
    """The split file is the pinned one, and the counts are the published ones."""
    problems = []
    pinned = next((f for f in source.files if f.filename == source.split_file and f.checksum), None)
    if pinned is not None:
        path = ds.root / pinned.dest
        algo, _, want = pinned.checksum.partition(":")
        got = hashlib.new(algo, path.read_bytes()).hexdigest()
        if got != want:
            problems.append(
                Problem(
                    f"{ds.name}: {pinned.dest} differs from CoOp's published file ({algo} {got[:12]}..., "
                    f"published {want[:12]}...)",
                    f"move {path} aside and run `cacheclip data get {ds.name}` to fetch the published one",
                )
            )
    counts = (len(ds.train), len(ds.val), len(ds.test))
    if source.counts is not None and counts != tuple(source.counts):
        problems.append(
            Problem(
                f"{ds.name}: split has {'/'.join(map(str, counts))} train/val/test items, "
                f"published {'/'.join(map(str, source.counts))} ({ds.split_source})",
                source.manual.format(folder=ds.root)
                if source.manual
                else f"move {ds.root} aside and run `cacheclip data get {ds.name}`",
            )
        )
    return problems
