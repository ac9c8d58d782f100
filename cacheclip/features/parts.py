"""A store's parts: each encoded chunk in its own HDF5 file under ``<store>.parts/``, written
atomically, so a kill loses at most the chunk in flight; ``store.commit`` merges them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from cacheclip.common import atomic_path


def plain_attr(value):
    """An HDF5 attribute as a plain Python value (bytes decoded, numpy values unwrapped)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def parts_dir(path: Path) -> Path:
    return path.with_name(path.name + ".parts")


@dataclass(frozen=True)
class Chunk:
    """Features of some items of one split, as produced by one encoding step."""

    split: str
    indices: np.ndarray  # (M,) item indices into the split listing
    features: np.ndarray  # (M, D)
    aug_features: np.ndarray | None  # (M, V, D) or None
    stats: np.ndarray | None = None  # (M, 2) int64 size and mtime (ns) of each item's file


def write_part(path: Path, chunk: Chunk) -> Path:
    """Write one finished chunk next to the store; atomic (temp file + rename)."""
    folder = parts_dir(path)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{chunk.split}-{int(chunk.indices[0]):09d}-{uuid.uuid4().hex[:8]}.h5"
    arrays = {"indices": chunk.indices.astype(np.int64), "features": chunk.features}
    arrays.update(
        {k: v for k, v in (("aug_features", chunk.aug_features), ("item_stats", chunk.stats)) if v is not None}
    )
    with atomic_path(final, fsync=True) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["split"] = chunk.split
        for name, values in arrays.items():
            f.create_dataset(name, data=values, fletcher32=bool(values.size))  # a damaged part is refused
    return final


def read_part(part: Path, with_features: bool) -> Chunk | None:
    """One part file, or None when it cannot be read whole (damaged or truncated):
    its items then count as not encoded and are encoded again."""
    try:
        with h5py.File(part, "r") as f:
            split, indices = str(plain_attr(f.attrs["split"])), f["indices"][()]
            rows = {len(f[k]) for k in ("features", "aug_features") if k in f} | {len(indices)}
            if "features" not in f or len(rows) != 1:
                return None
            if not with_features:  # cheap: arrays of the right shape holding no data (one zero each)
                shape_only = {
                    k: np.broadcast_to(np.float32(0), f[k].shape)
                    for k in ("features", "aug_features", "item_stats")
                    if k in f
                }
                return Chunk(
                    split, indices, shape_only["features"], shape_only.get("aug_features"), shape_only.get("item_stats")
                )
            optional = [f[k][()] if k in f else None for k in ("aug_features", "item_stats")]
            features = f["features"][()]
            if not np.isfinite(features).all():
                return None
            return Chunk(split, indices, features, *optional)
    except (OSError, KeyError, ValueError):
        return None


def set_aside_damaged_parts(path: Path) -> list[str]:
    """Rename every unreadable part (a full disk, flipped bytes) to ``*.damaged``, out of the
    way of the merge (commit deletes it); their items are encoded again. One note per part."""
    notes = []
    for part in sorted(parts_dir(path).glob("*.h5")):
        if read_part(part, True) is None:
            part.rename(part.with_name(part.name + ".damaged"))
            notes.append(f"part {part.name} was unreadable: set aside, its items are encoded again")
    return notes


def read_parts(path: Path) -> list[Chunk]:
    """Committed chunks not yet merged into the store. Unfinished temp files and
    unreadable parts are skipped."""
    parts = (read_part(p, True) for p in sorted(parts_dir(path).glob("*.h5")))
    return [c for c in parts if c is not None]


def part_index(path: Path) -> list[tuple[Path, Chunk]]:
    """(file, metadata-only chunk) of every readable part, in name order."""
    parts = ((p, read_part(p, False)) for p in sorted(parts_dir(path).glob("*.h5")))
    return [(p, c) for p, c in parts if c is not None]


def staged_indices(path: Path) -> dict[str, set[int]]:
    """Item indices per split already written as readable parts (reads only the index arrays)."""
    done: dict[str, set[int]] = {}
    for _, chunk in part_index(path):
        done.setdefault(chunk.split, set()).update(chunk.indices.tolist())
    return done
