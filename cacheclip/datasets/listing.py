"""Listing a dataset's files: sorted sub-folders and image files, one hash over the files that
define a split (so a store can tell when the split changed), and opening an image only when
it is a regular file.

Odd entries never crash a listing and are never dropped without a word: a symlink loop, a
broken link, a FIFO, socket or device, a nested folder among images, or a name that is not
UTF-8 (a store records paths as UTF-8) is skipped, counted and reported through a
``SkippedFilesWarning`` that names the paths (the CLI prints it as ``warning: ...``).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO


class SkippedFilesWarning(UserWarning):
    """Entries of an image folder that were skipped; the message says how many, why and which."""


class LargeImageWarning(UserWarning):
    """An image beyond PIL's decompression-bomb limit was decoded anyway; the message names it."""


class UnreadableImageError(Exception):
    """An image that cannot be read, said in our words (the caller names the path)."""


def shown(path: str | os.PathLike) -> str:
    """``path`` printable whatever its bytes: a name that is not UTF-8 shows as ``caf\\xe9.jpg``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def kind_of(mode: int) -> str:
    """What a non-regular file is, in words."""
    for test, word in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return word
    return "not a regular file"


@dataclass
class Skipped:
    """Entries skipped while listing, with the reason for each."""

    entries: list[tuple[str, str]] = field(default_factory=list)  # (path as shown, reason)

    def add(self, path: str | os.PathLike, reason: str) -> None:
        self.entries.append((shown(path), reason))

    def summary(self, where: str | os.PathLike, shown_max: int = 3) -> str:
        """One line: how many were skipped under ``where``, why, and the first few of each reason."""
        parts = []
        for reason, n in Counter(r for _, r in self.entries).most_common():
            paths = [p for p, r in self.entries if r == reason]
            parts.append(f"{reason} ({n}): {', '.join(paths[:shown_max])}{' ...' if n > shown_max else ''}")
        n = len(self.entries)
        return f"skipped {n} {'entry' if n == 1 else 'entries'} under {shown(where)}; {'; '.join(parts)}"

    def warn(self, where: str | os.PathLike) -> None:
        if self.entries:
            warnings.warn(SkippedFilesWarning(self.summary(where)), stacklevel=3)


def _not_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return False
    except UnicodeEncodeError:  # os.listdir's surrogate escapes of undecodable bytes
        return True


def _entry_kind(entry: os.DirEntry) -> str:
    """ "dir", "file" (regular), or why it is neither (a symlink loop, a FIFO...)."""
    try:
        if entry.is_dir():
            return "dir"
        if entry.is_file():
            return "file"
        return kind_of(entry.stat().st_mode).removeprefix("a ")
    except FileNotFoundError:
        return "broken symlink"
    except OSError as e:
        return "symlink loop" if e.errno == errno.ELOOP else f"unreadable entry ({e.strerror})"


def _scan(
    path: Path, skipped: Skipped, extensions: frozenset[str] | None, need_utf8: bool = True
) -> tuple[list[str], list[str]]:
    """(sorted sub-folder names, sorted regular file names, only ``extensions`` if given) of the
    non-hidden entries of ``path``; everything odd (a loop, a FIFO, a name not UTF-8) goes to
    ``skipped``. Files of other extensions (notes.txt, README) are left out without a word."""
    dirs, files = [], []
    with os.scandir(path) as entries:
        for e in entries:
            if e.name.startswith("."):
                continue
            kind = _entry_kind(e)
            if kind == "file" and extensions is not None and os.path.splitext(e.name)[1].lower() not in extensions:
                continue
            if kind not in ("dir", "file"):
                skipped.add(e.path, kind)
            elif need_utf8 and _not_utf8(e.name):
                skipped.add(e.path, "name not UTF-8")
            else:
                (dirs if kind == "dir" else files).append(e.name)
    return sorted(dirs), sorted(files)


def subdirs(path: Path, skipped: Skipped | None = None) -> list[str]:
    """Sorted names of the non-hidden sub-folders of ``path``. Odd entries go to ``skipped``;
    without one they are reported at once (``SkippedFilesWarning``)."""
    own = skipped if skipped is not None else Skipped()
    dirs, _ = _scan(Path(path), own, None)
    if skipped is None:
        own.warn(path)
    return dirs


def files_in(path: Path, extensions: frozenset[str] | None = None, skipped: Skipped | None = None) -> list[str]:
    """Sorted names of the non-hidden regular files in ``path`` (optionally only some
    extensions); a nested folder is not searched, and is reported with the odd entries (as
    for ``subdirs``)."""
    own = skipped if skipped is not None else Skipped()
    dirs, files = _scan(Path(path), own, extensions)
    for d in dirs:
        own.add(Path(path) / d, "nested folder, not searched")
    if skipped is None:
        own.warn(path)
    return files


def find_files(folder: Path, extensions: frozenset[str], skipped: Skipped) -> list[Path]:
    """Regular files with ``extensions`` under ``folder``, recursively, sorted; follows folder
    symlinks but enters each real folder once (so a symlink cycle ends). Names need not be
    UTF-8 here (nothing is stored): show them with ``shown``."""
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()

    def walk(d: Path) -> None:
        st = d.stat()
        if (st.st_dev, st.st_ino) in seen:
            skipped.add(d, "folder searched before: a symlink cycle")
            return
        seen.add((st.st_dev, st.st_ino))
        dirs, files = _scan(d, skipped, extensions, need_utf8=False)
        found.extend(d / f for f in files)
        for sub in dirs:
            walk(d / sub)

    walk(Path(folder))
    return sorted(found)


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """Open ``path`` for reading only if it is a regular file. Opened non-blocking (a FIFO
    would block ``open`` until a writer comes) and checked on the open descriptor, so a file
    swapped between a check and the open cannot slip through."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnreadableImageError(f"{kind_of(mode)}, not an image file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_rgb(path: str | os.PathLike):
    """Decode the image at ``path`` as an RGB PIL image, opening regular files only. An image
    beyond PIL's decompression-bomb limit (89M pixels) is decoded with a ``LargeImageWarning``
    that names it instead of PIL's raw warning; one beyond twice the limit is refused."""
    from PIL import Image

    with open_regular(path) as f, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with Image.open(f) as im:
                size = im.size
                image = im.convert("RGB")
        except Image.DecompressionBombError as e:
            raise UnreadableImageError(
                f"too large to decode safely ({e}); if the image is genuine, shrink it"
            ) from None
    for w in caught:
        if issubclass(w.category, Image.DecompressionBombWarning):
            warnings.warn(
                LargeImageWarning(
                    f"{shown(path)} is {size[0]} x {size[1]} ({size[0] * size[1]:,} pixels), beyond PIL's "
                    f"limit against decompression bombs ({Image.MAX_IMAGE_PIXELS:,}); decoded anyway"
                ),
                stacklevel=2,
            )
        else:  # not ours to swallow
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return image


def regular_file_problem(path: str) -> str | None:
    """None when ``path`` is a regular file (following links), else why not ("missing", "a FIFO"...)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return "symlink loop" if e.errno == errno.ELOOP else e.strerror or "unreadable"
    except ValueError:  # an embedded NUL byte
        return "not a valid path"
    return None if stat.S_ISREG(mode) else kind_of(mode)


def sha256_files(parts: Iterable[tuple[str, bytes]]) -> str:
    """sha256 over several named byte strings, each framed by its name and length."""
    h = hashlib.sha256()
    for name, data in parts:
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()
