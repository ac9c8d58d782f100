"""Mechanisms and constants every stage shares; the bottom layer beside ``errors``.

Imports nothing heavy (no torch, h5py or open_clip) so that any module may use it.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
COOP_CROP_SCALE = (0.08, 1.0)  # CoOp's RandomResizedCrop scale, the default of the cached views
DEFAULT_MODEL = "RN50"
DEFAULT_PRETRAINED = "openai"


# ---------------------------------------------------------------- atomic files


@contextmanager
def atomic_path(path: str | Path, *, fsync: bool = False) -> Iterator[Path]:
    """A fresh temporary file beside ``path`` to write to; renamed over ``path`` when the
    block ends normally, removed when it raises. The name is unpredictable and created
    exclusively, in the destination folder (the rename never crosses filesystems)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if fsync:
            _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write text (UTF-8) or bytes to ``path`` atomically."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8", newline="")
        else:
            tmp.write_bytes(data)
    return Path(path)


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    return write_atomic(path, json.dumps(payload, indent=1, default=str) + "\n")


def _fsync(path: Path) -> None:
    """Flush a file's data to disk, so a crash after the rename cannot leave it empty."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- versions


def package_versions() -> dict[str, str]:
    """Versions of the packages that change the numbers, recorded in stores and results."""
    out = {}
    for label, dist in (
        ("cacheclip", "cacheclip"),
        ("torch", "torch"),
        ("open_clip", "open_clip_torch"),
        ("numpy", "numpy"),
    ):
        try:
            out[label] = version(dist)
        except PackageNotFoundError:  # e.g. a source tree that was not installed
            out[label] = "unknown"
    out["python"] = platform.python_version()
    return out
