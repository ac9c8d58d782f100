"""Mechanisms and constants every stage shares; the bottom layer beside ``errors``.

Imports nothing heavy (no torch, h5py or open_clip) so that any module may use it.
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import platform
import signal
import sys
import tempfile
from array import array
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
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
    # the writer's pid in the name tells a later run whether the temporary is a dead writer's
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if fsync:
            _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def stale_temporaries(folder: str | Path, name: str | None = None) -> list[Path]:
    """Temporaries in ``folder`` (of the file ``name``, or of any file) left by a writer process
    that is gone: ``atomic_path`` names them ``.<name>.<pid>-<random>.tmp``. A name without a
    pid (older versions) counts as stale."""
    pattern = f".{glob_escape(name)}.*.tmp" if name else ".*.tmp"
    found = []
    for tmp in Path(folder).glob(pattern):
        pid = tmp.name[1:-4].rsplit(".", 1)[-1].split("-", 1)[0]
        if not (pid.isdigit() and _alive(int(pid))):
            found.append(tmp)
    return found


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


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


# ---------------------------------------------------------------- file stats


def file_stats(root: str | Path, paths: list[str]) -> array:
    """Size and mtime (ns) of each ``root/path``, flat: ``[size0, mtime0, size1, ...]`` (signed
    64-bit); -1, -1 for a file that is gone.

    About 2.5 us a file in one process (a stat relative to the open folder); long lists are
    split over forked processes, one per core (threads only contend for the GIL: measured),
    so the no-op re-extract of ImageNet's 1.33M files stays within its budget."""
    workers = min(8, _cores(), len(paths) // STATS_PER_PROCESS)
    if workers < 2 or not sys.platform.startswith("linux"):
        return _stats_here(os.fspath(root), paths)
    size = -(-len(paths) // workers)
    blocks = [paths[i : i + size] for i in range(0, len(paths), size)]
    out = array("q")
    with ProcessPoolExecutor(len(blocks), mp_context=multiprocessing.get_context("fork")) as pool:
        for block in pool.map(_stats_here, [os.fspath(root)] * len(blocks), blocks):
            out.extend(block)
    return out


STATS_PER_PROCESS = 50_000  # below this a forked process costs more than it saves


def _stats_here(root: str, paths: list[str]) -> array:
    out = array("q")
    folder = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for path in paths:
            try:
                st = os.stat(path, dir_fd=folder)
            except OSError:
                out.extend((-1, -1))
            else:
                out.extend((st.st_size, st.st_mtime_ns))
    finally:
        os.close(folder)
    return out


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# ---------------------------------------------------------------- child processes


def die_with_parent(_worker_id: int = 0) -> None:
    """Have Linux SIGKILL this process when its parent dies (a DataLoader ``worker_init_fn``):
    the workers of a ``kill -9``-ed extract would otherwise live on, reading images for nobody."""
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)


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
