"""Listing a dataset's files: sorted sub-folders and image files, and one hash over the files
that define a split (so a store can tell when the split changed)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path


def sha256_files(parts: Iterable[tuple[str, bytes]]) -> str:
    """sha256 over several named byte strings, each framed by its name and length."""
    h = hashlib.sha256()
    for name, data in parts:
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def subdirs(path: Path) -> list[str]:
    """Sorted names of the non-hidden sub-folders of ``path``."""
    with os.scandir(path) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def files_in(path: Path, extensions: frozenset[str] | None = None) -> list[str]:
    """Sorted names of the non-hidden files in ``path`` (optionally only some extensions)."""
    with os.scandir(path) as entries:
        return sorted(
            e.name
            for e in entries
            if not e.name.startswith(".")
            and e.is_file()
            and (extensions is None or os.path.splitext(e.name)[1].lower() in extensions)
        )
