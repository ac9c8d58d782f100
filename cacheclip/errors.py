"""Typed errors. Each carries a one-line message and a hint that names the fix.

The CLI turns any ``CacheClipError`` into ``error: <message>`` plus
``hint: <hint>`` and exit code 1; the library never prints.
"""

from __future__ import annotations


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


class StoreLockedError(StoreError):
    """Another process is writing the same store."""


class MissingFeaturesError(StoreError):
    """The store lacks features that a fit needs; the hint is the extract command."""


class ConfigError(CacheClipError):
    """An option value or config file that cannot work."""
