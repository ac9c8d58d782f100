"""Typed errors. Each carries a one-line message and a hint that names the fix.

The CLI turns any ``CacheClipError`` into ``error: <message>`` plus
``hint: <hint>`` and exit code 1; the library never prints.
"""

from __future__ import annotations

import errno
import os
import tempfile


class CacheClipError(Exception):
    """Base class: a problem the user can fix. ``hint`` says how."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UnknownNameError(CacheClipError):
    """A dataset, template set, method or model name that is not registered."""


class PluginError(UnknownNameError):
    """A method asked for by name whose installed plugin could not be loaded or breaks the contract."""


class DatasetLayoutError(CacheClipError):
    """A dataset folder, split file or label file is missing or malformed."""


class MissingImagesError(CacheClipError):
    """Images listed by a split are not on disk."""


class CorruptImageError(CacheClipError):
    """An image file exists but cannot be decoded."""


class ModelLoadError(CacheClipError):
    """A model config or its weights cannot be found or loaded."""


class StoreError(CacheClipError):
    """A feature store is missing, incompatible with the request, or damaged."""


class StoreMismatchError(StoreError):
    """A store exists but was built from other inputs (model, weights, split file...)."""


class StoreDamagedError(StoreError):
    """A store or part whose bytes or structure cannot be right (checksum, ranges, NaN)."""


class StoreLockedError(StoreError):
    """Another process is writing the same store."""


class MissingFeaturesError(StoreError):
    """The store lacks features that a fit needs; the hint is the extract command."""


class ConfigError(CacheClipError):
    """An option value or config file that cannot work."""


class EnvironmentFault(CacheClipError):
    """The machine refused an operation: a read-only folder, a full disk, a path that is a file."""


_ERRNO_HINTS = {
    errno.ENOSPC: ("no space left on the device", "free space, or point --cache-dir / --results-dir at another disk"),
    errno.EDQUOT: ("disk quota exceeded", "free space, or point --cache-dir / --results-dir at another disk"),
    errno.EROFS: ("the file system is read-only", "use a writable --cache-dir / --results-dir"),
    errno.EACCES: ("permission denied", "use a folder you can write to, or fix its permissions"),
    errno.EPERM: ("operation not permitted", "use a folder you can write to, or fix its permissions"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "use a path whose folders are folders"),
    errno.EISDIR: ("it is a folder, where a file was expected", "give a file path, not a folder"),
    errno.ENAMETOOLONG: ("the file name is too long", "use a shorter path"),
    errno.ELOOP: ("too many levels of symbolic links", "remove the symlink loop"),
    errno.EEXIST: ("it exists and is not a folder", "move the file away or choose another path"),
}


def environment_fault(exc: BaseException) -> CacheClipError | None:
    """The user's words for an error the machine raised (``None``: a real bug, not the setup)."""
    if isinstance(exc, OSError) and exc.errno in _ERRNO_HINTS:
        what, hint = _ERRNO_HINTS[exc.errno]
        where = f" ({exc.filename})" if exc.filename else ""
        return EnvironmentFault(f"{what}{where}", hint)
    if isinstance(exc, UnicodeError):
        return EnvironmentFault(f"a file is not valid UTF-8 text: {exc}", "save the file as UTF-8")
    if isinstance(exc, OverflowError):
        return EnvironmentFault(f"a number is too large: {exc}", "use smaller values (e.g. seeds below 2**31)")
    if any(t.__name__ == "SafetensorError" for t in type(exc).__mro__):
        return EnvironmentFault(
            f"a saved adapter file is damaged: {exc}", "rerun the fit with --force to write it again"
        )
    return None


def require_writable_dir(path: str | os.PathLike, flag: str) -> None:
    """Fail before any work starts when ``path`` (given by ``flag``) cannot hold our files.
    Nothing is created: a probe file is made and removed in ``path``, or, when it does not
    exist yet, in the nearest folder above it (where it would be created)."""
    path = os.path.abspath(os.fspath(path))
    probe_in, problem = path, ""
    while not os.path.lexists(probe_in) and os.path.dirname(probe_in) != probe_in:
        probe_in = os.path.dirname(probe_in)
    if not os.path.isdir(probe_in):
        what = not_a_folder(probe_in)
        problem = f"is {what}" if probe_in == path else f"{probe_in} is {what}"
    else:
        try:
            fd, probe = tempfile.mkstemp(dir=probe_in, prefix=".cacheclip-probe-")
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            fallback = "it refuses new files" if e.errno == errno.ENOENT else (e.strerror or str(e))
            problem = _ERRNO_HINTS.get(e.errno, (fallback, ""))[0]
            problem = problem if probe_in == path else f"cannot be created in {probe_in}: {problem}"
    if problem:
        raise EnvironmentFault(f"{flag} {path}: {problem}", f"pass a folder you can write to as {flag}")


def not_a_folder(path: str | os.PathLike) -> str:
    """What ``path`` (which exists, at least as a link) is instead of a folder."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symlink loop, not a folder"
        if os.path.islink(path):
            return f"a broken symlink (to {os.readlink(path)}), not a folder"
        raise
    return "a file, not a folder"
