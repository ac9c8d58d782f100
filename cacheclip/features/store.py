"""HDF5 feature stores. With ``parts``, the only modules that import h5py.

One store per (model, weights, dataset) at ``<cache>/<model>/<weights>/<dataset>.h5``::

    /                        attrs: identity (model, weights, split file, preprocessing,
                             augmentation, dtype, schema) + provenance (versions, time)
    /classnames              (K,) str
    /class_ids               (K,) str, each class's wnid (ImageNet family only)
    /text                    attrs: classifiers, JSON {name: template indices} (schema 3):
                             "single" (the dataset's CoOp template), "ensemble" (the 7
                             ImageNet templates; ImageNet stores hold both), or the
                             --templates set's own name
    /text/templates          (T,) str
    /text/per_template       (T, K, D) float32, raw text embeddings
    /text/ensemble           (K, D) float32, normalise -> mean -> normalise over a default
                             store's "ensemble" classifier (else over all T templates)
    /splits/<s>/paths        (N,) str, every item of split s, relative to the image root
    /splits/<s>/labels       (N,) int32
    /splits/<s>/encoded      (M,) int64, sorted item indices that have features
    /splits/<s>/features     (M, D) raw clean-view image features (val transform)
    /splits/<s>/item_stats   (M, 2) int64, size and mtime (ns) of each encoded image file
    /splits/train/aug_features (M, V, D) raw features of V augmented views

Numeric datasets carry HDF5's per-chunk fletcher32 checksum (schema >= 2), so a damaged chunk
is refused on read; ``validate`` checks the structure each time a store is opened.

Crash safety: the store file is never modified in place. Each encoded chunk is
written to its own file under ``<store>.parts/`` and renamed into place only
when complete, so a kill (even SIGKILL) loses at most the chunk in flight.
``commit`` merges the store and its parts into a new file that replaces the
store atomically; parts are deleted after. A lock file keeps a second writer out.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from cacheclip.common import atomic_path, stale_temporaries
from cacheclip.datasets.templates import ENSEMBLE, SINGLE, named_classifiers
from cacheclip.errors import StoreDamagedError, StoreError, StoreLockedError, StoreMismatchError, not_a_folder
from cacheclip.features.parts import (  # the store's public API includes its parts
    Chunk,
    part_index,
    parts_dir,
    plain_attr,
    read_part,
    read_parts,
    set_aside_damaged_parts,
    staged_indices,
    write_part,
)
from cacheclip.features.validate import (
    ATTRS_DIGEST,
    NO_ITEM_STATS,
    READABLE_SCHEMAS,
    SCHEMA_VERSION,
    attrs_digest,
    checksummed,
    damage_reason,
    digest_problems,
    structure_problems,
)

__all__ = [  # with the parts' API, re-exported: callers use the store module alone
    "Chunk",
    "FeatureStore",
    "SplitListing",
    "StoreContents",
    "commit",
    "describe",
    "find_stores",
    "open_store",
    "parts_dir",
    "read_parts",
    "set_aside_damaged_parts",
    "staged_indices",
    "store_path",
    "write_part",
    "writer_lock",
    "SCHEMA_VERSION",
]
REPAIR = (
    "delete the store and rerun the same `cacheclip extract` (it is only a cache); "
    "`cacheclip check` lists every problem"
)
STR = h5py.string_dtype("utf-8")
# Attributes that define what the features are; a mismatch on any is an error.
IDENTITY_KEYS = (
    "schema_version",
    "dataset",
    "model",
    "model_config_sha256",
    "pretrained",
    "weights_sha256",
    "quick_gelu",
    "preprocess",
    "split_sha256",
    "dtype",
    "precision",
    "aug_views",
    "aug_scale",
    "aug_ratio",
    "aug_seed",
)


def store_path(cache_dir: str | Path, model_id: str, weights_id: str, dataset: str) -> Path:
    """Where the store for this model, weights and dataset lives."""
    return Path(cache_dir) / _safe_name(model_id) / _safe_name(weights_id) / f"{_safe_name(dataset)}.h5"


def _safe_name(name: str) -> str:
    """One path component: separators replaced."""
    return name.replace("/", "_").replace(os.sep, "_")


@dataclass(frozen=True)
class SplitListing:
    paths: Sequence[str]
    labels: Sequence[int]


# ---------------------------------------------------------------- locking


_HELD: set[str] = set()  # lock files this process holds


@contextmanager
def writer_lock(path: Path) -> Iterator[None]:
    """Exclusive, non-blocking lock for writing ``path``; released on exit or process death.

    A POSIX record lock (``lockf``), not ``flock``: it belongs to this process alone, so
    forked DataLoader workers do not inherit it and cannot keep holding it after a
    ``kill -9`` of the main process. The lock file is never followed if it is a symlink."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    if str(lock_path) in _HELD:  # record locks do not exclude their own process: check first
        raise StoreLockedError(
            f"another process (pid {os.getpid()}) is writing {path}",
            "wait for it to finish, then rerun: extraction resumes where it stopped",
        )
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise StoreLockedError(
            f"the lock file {lock_path} is a symlink", f"remove it (`rm {lock_path}`); cacheclip creates its own"
        ) from None
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise StoreLockedError(
                f"another process (pid {holder}) is writing {path}",
                "wait for it to finish, then rerun: extraction resumes where it stopped",
            ) from None
        _HELD.add(str(lock_path))
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        for tmp in stale_temporaries(path.parent, path.name) + stale_temporaries(parts_dir(path)):
            tmp.unlink(missing_ok=True)  # a killed writer's (a live one would hold this lock)
        yield
    finally:
        _HELD.discard(str(lock_path))
        os.close(fd)


# ---------------------------------------------------------------- reading


class FeatureStore:
    """Read access to a committed store. Open with ``open_store``."""

    def __init__(self, path: Path, *, verify_attrs: bool = True):
        """Refuses a damaged structure; with ``verify_attrs`` also attributes that differ from
        those committed (their digest, schema 4). ``open_store`` checks the identity first, so
        a store of other inputs is named as such, then calls ``verify_attrs``."""
        self.path = path
        self._file = h5py.File(path, "r")
        self._whole: dict[str, np.ndarray] = {}  # small datasets read once, then indexed in memory
        self.attrs: dict[str, Any] = {k: plain_attr(v) for k, v in self._file.attrs.items()}
        try:
            problems = structure_problems(self._file)
        except (OSError, KeyError, ValueError, TypeError) as e:
            problems = [f"unreadable structure ({damage_reason(e) if isinstance(e, OSError) else e})"]
        if problems:
            self._file.close()
            raise StoreDamagedError(f"{path} is damaged: {'; '.join(problems)}", REPAIR)
        if verify_attrs:
            self.verify_attrs()

    def verify_attrs(self) -> None:
        """StoreDamagedError when the attributes are not those committed (schema 4 digest)."""
        problems = digest_problems(self._file)
        if problems:
            self._file.close()
            raise StoreDamagedError(f"{self.path} is damaged: {'; '.join(problems)}", REPAIR)

    def close(self) -> None:
        self._whole.clear()
        self._file.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def classnames(self) -> list[str]:
        return [s.decode() if isinstance(s, bytes) else s for s in self._file["classnames"][()]]

    @property
    def class_ids(self) -> list[str]:
        """Each class's wnid for the ImageNet family (matches a shift set's classes to ImageNet's); else []."""
        if "class_ids" not in self._file:
            return []
        return [s.decode() if isinstance(s, bytes) else s for s in self._file["class_ids"][()]]

    @property
    def splits(self) -> list[str]:
        return list(self._file["splits"].keys()) if "splits" in self._file else []

    @property
    def templates(self) -> list[str]:
        return [s.decode() for s in self._file["text/templates"][()]] if "text" in self._file else []

    @property
    def classifiers(self) -> dict[str, list[int]]:
        """The named text classifiers: name -> indices into ``templates`` (``/text`` attrs,
        schema 3). Older stores hold one, named as ``named_classifiers`` names it."""
        if "text" in self._file and "classifiers" in self._file["text"].attrs:
            return json.loads(self._file["text"].attrs["classifiers"])
        spec, templates = str(self.attrs.get("templates_spec", "default")), self.templates
        if spec == "default":  # before schema 3 a default store held one classifier of all its templates
            return {SINGLE if len(templates) == 1 else ENSEMBLE: list(range(len(templates)))}
        return named_classifiers(templates, str(self.attrs["dataset"]), spec)

    @property
    def ensemble_rows(self) -> list[int]:
        """The templates ``/text/ensemble`` averages: a default store's ``ensemble`` classifier
        when it holds one, else all of them."""
        named = self.classifiers
        if self.attrs.get("templates_spec", "default") == "default" and ENSEMBLE in named:
            return named[ENSEMBLE]
        return list(range(len(self.templates)))

    def text_features(self) -> tuple[np.ndarray, np.ndarray]:
        """(per-template raw (T, K, D), ensemble (K, D)), float32."""
        return self._checked_read("text/per_template"), self._checked_read("text/ensemble")

    def item_stats(self, split: str) -> np.ndarray | None:
        """(M, 2) size and mtime (ns) of each encoded item's file when encoded; None for
        stores written before they were recorded."""
        if split not in self.splits or "item_stats" not in self._split(split):
            return None
        return self._checked_read(f"splits/{split}/item_stats")

    def _checked_read(self, name: str, rows: Any = ()) -> np.ndarray:
        """A dataset's values; a failed chunk checksum becomes a StoreDamagedError."""
        try:
            return self._file[name][rows]
        except OSError as e:
            raise StoreDamagedError(f"{self.path}: {name} is damaged ({damage_reason(e)})", REPAIR) from None

    def listing(self, split: str) -> SplitListing:
        g = self._split(split)
        return SplitListing([p.decode() for p in g["paths"][()]], g["labels"][()].tolist())

    def encoded(self, split: str) -> np.ndarray:
        """Sorted item indices of ``split`` that have features (empty for a split with no items)."""
        if split not in self.splits or "encoded" not in self._split(split):
            return np.zeros(0, np.int64)
        return self._split(split)["encoded"][()]

    def feature_dtype(self, split: str) -> np.dtype:
        """The dtype the split's image features are stored in (float16 or float32)."""
        return self._split(split)["features"].dtype

    def num_aug_views(self) -> int:
        g = self._file.get("splits/train")
        return int(g["aug_features"].shape[1]) if g is not None and "aug_features" in g else 0

    def read(
        self, split: str, indices: Sequence[int] | None = None, *, aug: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Features of the given items (all encoded items when None), in the order asked.

        Returns (features (M, D) float32, labels (M,) int64, aug (M, V, D) float32 or None).
        Raises KeyError listing missing item indices; callers turn it into a hint.
        """
        g = self._split(split)
        encoded = self.encoded(split)
        wanted = encoded if indices is None else np.asarray(indices, dtype=np.int64)
        rows = np.searchsorted(encoded, wanted)
        ok = (
            (rows < len(encoded)) & (encoded[np.minimum(rows, len(encoded) - 1)] == wanted)
            if len(encoded)
            else np.zeros(len(wanted), bool)
        )
        if not ok.all():
            raise KeyError(wanted[~ok].tolist())
        labels = g["labels"][()][wanted].astype(np.int64)
        if "features" not in g:  # nothing encoded (e.g. ImageNet's empty val)
            dim = self._file["text/ensemble"].shape[-1]
            return np.zeros((0, dim), np.float32), labels, None
        features = self._take_rows(g["features"], rows)
        aug_features = self._take_rows(g["aug_features"], rows) if aug and "aug_features" in g else None
        for values in (features, aug_features):
            if values is not None and not np.isfinite(values).all():
                raise StoreDamagedError(f"{self.path}: the {split} image features hold NaN or inf", REPAIR)
        return features, labels, aug_features

    def _take_rows(self, dataset: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
        """Rows in the order asked, as float32. Small stores: the whole dataset is read once
        (kept for this handle: every seed and shot count reads the same arrays) and indexed
        in memory, faster than HDF5 fancy indexing (~0.2 s per 1600 scattered rows)."""
        if len(rows) == 0:
            return np.zeros((0,) + dataset.shape[1:], np.float32)
        try:
            return self._rows_in_order(dataset, rows)
        except OSError as e:
            raise StoreDamagedError(f"{self.path}: {dataset.name} is damaged ({damage_reason(e)})", REPAIR) from None

    def _rows_in_order(self, dataset: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
        if dataset.size * dataset.dtype.itemsize < (512 << 20):
            if dataset.name not in self._whole:
                self._whole[dataset.name] = dataset[()]
            return self._whole[dataset.name][rows].astype(np.float32)
        if len(rows) > dataset.shape[0] // 4:
            return dataset[()][rows].astype(np.float32)
        order = np.argsort(rows)
        out = np.empty((len(rows),) + dataset.shape[1:], np.float32)
        out[order] = dataset[np.sort(rows)]  # h5py needs increasing indices
        return out

    def _split(self, split: str) -> h5py.Group:
        if split not in self.splits:
            raise StoreError(f"{self.path} has no '{split}' split", "run `cacheclip extract` for this dataset")
        return self._file["splits"][split]


def open_store(path: Path, expect: dict[str, Any] | None = None, fix: str = "") -> FeatureStore:
    """Open a committed store after checking its structure and, with ``expect``, that its
    identity attributes are what the caller asked for (``fix``: the command that rebuilds it)."""
    if not path.is_file():
        raise StoreError(f"no feature store at {path}", "run `cacheclip extract` for this dataset first")
    try:
        store = FeatureStore(path, verify_attrs=False)
    except OSError as e:
        raise StoreDamagedError(f"cannot read store {path}: {damage_reason(e)}", REPAIR) from e
    if expect:
        try:
            check_identity(path, store.attrs, expect, fix)
        except StoreMismatchError:
            store.close()
            raise
    store.verify_attrs()
    return store


def older_schema(path: Path) -> bool:
    """The committed store at ``path`` is of an older schema this cacheclip reads: the next
    commit (re-encoding nothing) rewrites it at the current one."""
    if not path.is_file():
        return False
    with h5py.File(path, "r") as f:
        return int(plain_attr(f.attrs.get("schema_version", 1))) < SCHEMA_VERSION


def check_identity(path: Path, recorded: dict[str, Any], wanted: dict[str, Any], fix: str = "") -> None:
    """StoreMismatchError naming every identity attribute that differs."""
    diffs = [
        f"{k}: store has {recorded.get(k)!r}, asked {wanted[k]!r}"
        for k in IDENTITY_KEYS
        if k in wanted and plain_attr(recorded.get(k)) != wanted[k] and not _upgradable(k, recorded.get(k))
    ]
    if diffs:
        raise StoreMismatchError(
            f"{path} was built from other inputs ({'; '.join(diffs)})",
            fix or "pass the options it was built with, use another --cache-dir, or delete the store to rebuild it",
        )


def _upgradable(key: str, recorded: Any) -> bool:
    """An older schema this cacheclip reads holds the same features: the next commit rewrites
    the store at the current schema (re-encoding nothing)."""
    return key == "schema_version" and int(plain_attr(recorded) or 1) in READABLE_SCHEMAS


# ---------------------------------------------------------------- writing


@dataclass
class StoreContents:
    """Everything a store holds except the features, which come from the old store and parts."""

    attrs: dict[str, Any]
    classnames: Sequence[str]
    listings: dict[str, SplitListing]
    templates: Sequence[str]
    text_per_template: np.ndarray  # (T, K, D)
    text_ensemble: np.ndarray  # (K, D)
    class_ids: Sequence[str] = ()  # (K,) wnids, ImageNet family only
    classifiers: dict[str, list[int]] = field(default_factory=dict)  # name -> indices into templates


def commit(path: Path, contents: StoreContents, dtype: str) -> None:
    """Merge the current store (if any) and its parts into a new file that atomically
    replaces it; then delete the merged parts. Caller holds ``writer_lock``."""
    old = FeatureStore(path) if path.is_file() else None
    parts = part_index(path)
    try:
        with atomic_path(path, fsync=True) as tmp, h5py.File(tmp, "w") as f:
            _write_contents(f, contents)
            for split in contents.listings:
                sources = _merge_sources(split, old, parts)
                if sources:
                    _write_split_features(f[f"splits/{split}"], sources, dtype)
            f.attrs[ATTRS_DIGEST] = attrs_digest(f)  # last: it covers every attribute written above
    finally:
        if old is not None:
            old.close()
    for part in parts_dir(path).glob("*"):
        part.unlink()
    if parts_dir(path).exists():
        parts_dir(path).rmdir()


def _write_contents(f: h5py.File, c: StoreContents) -> None:
    for key, value in c.attrs.items():
        f.attrs[key] = value
    f.attrs["schema_version"] = SCHEMA_VERSION
    f.attrs["committed_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    f.create_dataset("classnames", data=_strings(c.classnames), dtype=STR)
    if c.class_ids:
        f.create_dataset("class_ids", data=_strings(c.class_ids), dtype=STR)
    f.create_dataset("text/templates", data=_strings(c.templates), dtype=STR)
    if c.classifiers:
        f["text"].attrs["classifiers"] = json.dumps(c.classifiers)
    for name, values in (("text/per_template", c.text_per_template), ("text/ensemble", c.text_ensemble)):
        f.create_dataset(name, data=values.astype(np.float32), **checksummed(values))
    for split, listing in c.listings.items():
        g = f.create_group(f"splits/{split}")
        g.create_dataset("paths", data=_strings(listing.paths), dtype=STR)
        labels = np.asarray(listing.labels, dtype=np.int32)
        g.create_dataset("labels", data=labels, **checksummed(labels))


def _strings(values: Sequence[str]) -> np.ndarray:
    return np.array(list(values), dtype=object) if len(values) else np.zeros(0, dtype=object)


COMMIT_BLOCK_BYTES = 128 << 20  # merged rows held in memory at once while committing


@dataclass
class _Source:
    """Rows for a merge: the committed store's split group, or one part file."""

    indices: np.ndarray  # item index of each row, in row order
    dim: int  # feature width
    views: int  # augmented views per row (0: none)
    has_stats: bool  # the size/mtime of each row's file is known
    origin: h5py.Group | Path

    def read(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(features, aug or None, item stats or None) of the given rows, in that order."""
        if isinstance(self.origin, Path):  # a part: small (one chunk), read whole
            chunk = read_part(self.origin, True)
            if chunk is None:
                raise StoreError(
                    f"part {self.origin} became unreadable while committing",
                    "rerun the same extract command: that chunk is encoded again",
                )
            return tuple(None if a is None else a[rows] for a in (chunk.features, chunk.aug_features, chunk.stats))
        lo, hi = int(rows.min()), int(rows.max()) + 1  # a contiguous run of the store (see below)
        names = ("features", "aug_features" if self.views else None, "item_stats" if self.has_stats else None)
        return tuple(None if n is None else self.origin[n][lo:hi][rows - lo] for n in names)


def _merge_sources(split: str, old: FeatureStore | None, parts: list[tuple[Path, Chunk]]) -> list[_Source]:
    """The parts in name order, then the committed store: the first copy of a row wins, so an
    item re-encoded because its file changed replaces its old features (a part that repeats
    committed rows after a kill between commit and cleanup holds the same values)."""
    sources = []
    for file, chunk in parts:
        if chunk.split == split:
            views = 0 if chunk.aug_features is None else chunk.aug_features.shape[1]
            sources.append(_Source(chunk.indices, chunk.features.shape[1], views, chunk.stats is not None, file))
    if old is not None and split in old.splits and len(old.encoded(split)):
        group = old._split(split)
        views = group["aug_features"].shape[1] if "aug_features" in group else 0
        sources.append(_Source(old.encoded(split), group["features"].shape[1], views, "item_stats" in group, group))
    return sources


def _write_split_features(g: h5py.Group, sources: list[_Source], dtype: str) -> None:
    """Write encoded / features / aug_features sorted by item index, streaming blocks of
    rows so memory stays bounded however large the split (ImageNet with --train all).
    Aug views are kept only when every source has them."""
    indices = np.concatenate([s.indices for s in sources])
    owner = np.repeat(np.arange(len(sources)), [len(s.indices) for s in sources])
    row = np.concatenate([np.arange(len(s.indices)) for s in sources])
    unique, first = np.unique(indices, return_index=True)
    owner, row = owner[first], row[first]
    g.create_dataset("encoded", data=unique, **checksummed(unique))
    dim, views = sources[0].dim, min(s.views for s in sources)
    features = g.create_dataset("features", (len(unique), dim), dtype, **checksummed((len(unique), dim)))
    aug_shape = (len(unique), views, dim)
    aug = g.create_dataset("aug_features", aug_shape, dtype, **checksummed(aug_shape)) if views else None
    with_stats = all(s.has_stats for s in sources)
    stats = (
        g.create_dataset("item_stats", (len(unique), 2), np.int64, **checksummed((len(unique), 2)))
        if with_stats
        else None
    )
    if not with_stats:  # said in the attributes (digest-covered): a deleted item_stats is damage
        g.attrs[NO_ITEM_STATS] = "some items were encoded before cacheclip recorded each image's size and mtime"
    block = max(1, COMMIT_BLOCK_BYTES // (dim * (1 + views) * np.dtype(dtype).itemsize))
    for start in range(0, len(unique), block):
        stop = min(start + block, len(unique))
        out = np.empty((stop - start, dim), dtype)
        out_aug = np.empty((stop - start, views, dim), dtype) if views else None
        # Rows of one block taken from the store are a contiguous run of it: the store and the
        # output are both sorted by item index. A part's rows are read from its small file.
        out_stats = np.empty((stop - start, 2), np.int64)
        for s in np.unique(owner[start:stop]):
            take = np.nonzero(owner[start:stop] == s)[0]
            feats, aug_feats, item_stats = sources[s].read(row[start:stop][take])
            out[take] = feats
            if out_aug is not None:
                out_aug[take] = aug_feats
            if stats is not None:
                out_stats[take] = item_stats
        features[start:stop] = out
        if aug is not None:
            aug[start:stop] = out_aug
        if stats is not None:
            stats[start:stop] = out_stats


# ---------------------------------------------------------------- listing


def find_stores(cache_dir: str | Path) -> list[Path]:
    """Every store under ``cache_dir`` ([] when it does not exist; an error when it is there but
    is not a folder: a file, a symlink loop, a broken link)."""
    root = Path(cache_dir)
    if os.path.lexists(root) and not root.is_dir():
        raise StoreError(
            f"--cache-dir {root} is {not_a_folder(root)}", "pass the folder that holds the stores as --cache-dir"
        )
    return sorted(p for p in root.glob("*/*/*.h5") if p.is_file()) if root.is_dir() else []


def describe(path: Path) -> dict[str, Any]:
    """Summary for `cacheclip ls`: identity, per-split counts, size on disk, pending parts."""
    with open_store(path) as s:
        splits = {
            name: {"items": len(s._split(name)["labels"]), "encoded": int(len(s.encoded(name)))} for name in s.splits
        }
        info = {k: s.attrs.get(k) for k in ("dataset", "model", "pretrained", "dtype", "aug_views")}
    info.update(
        path=str(path),
        splits=splits,
        bytes=path.stat().st_size,
        pending_parts=len(list(parts_dir(path).glob("*.h5"))) if parts_dir(path).exists() else 0,
    )
    return info


def json_attr(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
