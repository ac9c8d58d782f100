"""Shared fixtures. Everything is generated: tests never need the network or real data."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

# Without this a missing open_clip weight spends ~47 s in download retries before failing.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cacheclip.datasets.catalog import COOP11
from cacheclip.datasets.synthetic import make_dataset, make_imagefolder


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


# --------------------------------------------------------------------------- tiny open_clip models

# Tiny architectures in open_clip's model-config format: building one takes well under a
# second, so tests exercise the real `--model CONFIG.json --pretrained CHECKPOINT` route.
_TINY_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
TINY_CONFIGS = {
    "cacheclip-tiny-vit": {
        "embed_dim": 32,
        "text_cfg": _TINY_TEXT,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    },
    "cacheclip-tiny-rn": {  # ModifiedResNet: the RN50 code path at toy size
        "embed_dim": 32,
        "quick_gelu": True,
        "text_cfg": _TINY_TEXT,
        "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 16},
    },
}


@pytest.fixture(scope="session")
def tiny_clip_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """name -> (model-config JSON, checkpoint file) for each of ``TINY_CONFIGS``, random weights."""
    from cacheclip.features.models import write_random_model

    folder = tmp_path_factory.mktemp("tiny_clip")
    return {name: write_random_model(folder, name, cfg, seed=1234) for name, cfg in TINY_CONFIGS.items()}


@pytest.fixture(scope="session")
def tiny_clip(tiny_clip_files) -> tuple[Path, Path]:
    """(config JSON, checkpoint) of the tiny ViT."""
    return tiny_clip_files["cacheclip-tiny-vit"]


@pytest.fixture(scope="session")
def tiny_clip_rn(tiny_clip_files) -> tuple[Path, Path]:
    """(config JSON, checkpoint) of the tiny ModifiedResNet."""
    return tiny_clip_files["cacheclip-tiny-rn"]


@pytest.fixture(scope="session")
def tiny_loaded(tiny_clip):
    """The tiny ViT loaded through ``load_model(config, checkpoint)`` on CPU (frozen; share it)."""
    from cacheclip.features.models import load_model

    return load_model(str(tiny_clip[0]), str(tiny_clip[1]), device="cpu")


# --------------------------------------------------------------------------- the CLI


@pytest.fixture
def cli(capsys, monkeypatch):
    """``cli(*args) -> (exit code, stdout, stderr)``, in-process through ``cacheclip.cli.main.main``
    (the same error boundary as the installed ``cacheclip`` command)."""
    from cacheclip.cli import common
    from cacheclip.cli.main import main

    monkeypatch.setattr(common.out, "_width", 300)  # no truncated table cells
    monkeypatch.delenv("CACHECLIP_DEBUG", raising=False)

    def run(*args) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["cacheclip", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run
