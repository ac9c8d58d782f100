"""Are a store's features still those of the files on disk? The split files are hashed
again and every encoded image's size and mtime compared with those recorded at encoding.

Fit refuses a store that is stale; extract re-encodes the items whose files changed.
Where the data is not on this machine (features copied elsewhere) nothing can be
compared: the result records that the store was not verified.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cacheclip.common import file_stats
from cacheclip.datasets.catalog import DatasetSplits
from cacheclip.datasets.layouts import load_dataset
from cacheclip.errors import CacheClipError, StoreDamagedError
from cacheclip.features.store import REPAIR, FeatureStore


@dataclass
class Freshness:
    verified: bool  # the split and the items could be compared with the files on disk
    reason: str = ""  # why not, when not verified
    split_changed: bool = False
    changed: dict[str, list[int]] = field(default_factory=dict)  # split -> encoded item indices whose file changed
    unrecorded: list[str] = field(default_factory=list)  # splits whose images' size/mtime the store lacks

    @property
    def stale(self) -> bool:
        return self.split_changed or any(self.changed.values())

    def describe(self) -> str:
        if self.split_changed:
            return "the split files changed since extraction"
        if self.stale:
            counts = ", ".join(f"{len(v)} {s}" for s, v in self.changed.items() if v)
            return f"image files changed or removed since encoding ({counts})"
        if not self.verified:
            return f"not verified ({self.reason})"
        return "split files and images unchanged since encoding"


def dataset_source(store: FeatureStore) -> tuple[str, Path | None] | None:
    """(name for load_dataset, data root) the store was extracted from; None for stores that
    did not record it (written before this check existed)."""
    source = store.attrs.get("dataset_source")
    if not source:
        return None
    root = store.attrs.get("data_root") or None
    return str(source), (Path(root) if root else None)


def check_freshness(store: FeatureStore, *, items: bool = True) -> Freshness:
    """Compare the store with the dataset on disk (split hash, then each encoded file)."""
    source = dataset_source(store)
    if source is None:
        return Freshness(False, "the store predates input tracking; re-extract to enable it")
    name, root = source
    if root is not None and not root.is_dir():
        return Freshness(False, f"data root {root} is not on this machine")
    try:
        ds = load_dataset(name, root)
    except CacheClipError as e:
        return Freshness(False, f"the dataset cannot be read: {e.message}")
    if ds.split_sha256 != store.attrs.get("split_sha256"):
        return Freshness(True, split_changed=True)
    if not items:
        verify_content(store, ds)
        return Freshness(True)
    changed = changed_items(store, ds)
    unrecorded = [s for s in store.splits if len(store.encoded(s)) and store.item_stats(s) is None]
    reason = (
        f"the split files are unchanged, but the store holds no record of the {', '.join(unrecorded)} "
        "images' sizes and mtimes; delete the store and extract it again to record them"
    )
    return Freshness(not unrecorded, reason if unrecorded else "", changed=changed, unrecorded=unrecorded)


def verify_content(store: FeatureStore, ds: DatasetSplits) -> None:
    """The store's class names, and each split's item paths and labels, are what the split file
    it records says (same hash): StoreDamagedError naming the first difference otherwise. A
    store edited in place (labels shifted, two paths or class names swapped) would give
    numbers that look normal."""
    problems = []
    if list(store.classnames) != list(ds.classnames):
        diff = next((k for k, (a, b) in enumerate(zip(store.classnames, ds.classnames, strict=False)) if a != b), None)
        problems.append(
            f"{len(store.classnames)} class names for the split file's {len(ds.classnames)}"
            if diff is None
            else f"class {diff} is {store.classnames[diff]!r}, the split file says {ds.classnames[diff]!r}"
        )
    if ds.class_ids and list(store.class_ids) != list(ds.class_ids):  # ImageNet family: maps targets' classes
        problems.append("its class wnids differ from the dataset's")
    for split in store.splits:
        listing, items = store.listing(split), ds.split(split)
        if len(listing.paths) != len(items) or len(listing.labels) != len(items):
            problems.append(f"split '{split}' holds {len(listing.paths)} items, the split file {len(items)}")
            continue
        for what, have, want in (
            ("path", listing.paths, [it.path for it in items]),
            ("label", listing.labels, [it.label for it in items]),
        ):
            if list(have) != want:
                i = next(i for i, (a, b) in enumerate(zip(have, want, strict=True)) if a != b)
                problems.append(
                    f"split '{split}' item {i} ({items[i].path}): the store has {what} {have[i]!r}, "
                    f"the split file {want[i]!r} ({sum(a != b for a, b in zip(have, want, strict=True))} such items)"
                )
    if problems:
        raise StoreDamagedError(
            f"{store.path} does not hold what its split file says (same hash): {'; '.join(problems)}", REPAIR
        )


def changed_items(store: FeatureStore, ds: DatasetSplits) -> dict[str, list[int]]:
    """Per split, encoded item indices whose file's size or mtime differs from the record
    (``ds``: the dataset the store was built from, same split hash, so the same item paths:
    ``verify_content`` checks it first)."""
    verify_content(store, ds)
    changed = {}
    for split in store.splits:
        recorded = store.item_stats(split)
        if recorded is None or not len(recorded):
            continue
        encoded = store.encoded(split)
        items = ds.split(split)
        now = np.frombuffer(file_stats(ds.image_root, [items[i].path for i in encoded]), np.int64).reshape(-1, 2)
        changed[split] = encoded[np.any(now != recorded, axis=1)].tolist()
    return changed
