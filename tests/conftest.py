"""Shared fixtures. Everything is generated: tests never need the network or real data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest

# Without this a missing open_clip weight spends ~47 s in download retries before failing.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cacheclip.datasets import COOP11  # noqa: E402
from cacheclip.synthetic import make_dataset, make_imagefolder  # noqa: E402


@pytest.fixture(scope="session")
def coop_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with small synthetic copies of all 11 CoOp datasets, in their real layouts.

    Shared by the whole session: read it, never modify it (use ``make_data`` for that).
    """
    root = tmp_path_factory.mktemp("coop_data")
    for name in COOP11:
        make_dataset(name, root)
    return root


@pytest.fixture
def make_data(tmp_path: Path) -> Callable[..., Path]:
    """``make_data(name, **kw)`` writes a fresh synthetic dataset under ``tmp_path / "data"``
    (the data root) and returns the dataset folder; free to modify."""
    root = tmp_path / "data"
    root.mkdir(exist_ok=True)

    def make(name: str, **kw) -> Path:
        return make_dataset(name, root, **kw)

    return make


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """``<tmp>/my_pets/<class>/img_*.{jpg,png}``: 3 classes x 8 images, no split folders."""
    return make_imagefolder(tmp_path / "my_pets")


@pytest.fixture
def image_folder_splits(tmp_path: Path) -> Path:
    """``<tmp>/my_split/{train,val,test}/<class>/``: 3 classes, 8 train and 3 val/test each."""
    return make_imagefolder(tmp_path / "my_split", with_splits=True)
