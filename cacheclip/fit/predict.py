"""Classify new images with a fitted run: CLIP model + the run's adapter file.

The adapter file is self-contained: tensors, class weights, class names, the
adapter config and the identity of the CLIP model it expects (see ``runs``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from cacheclip.common import IMAGE_SUFFIXES
from cacheclip.datasets.listing import Skipped, UnreadableImageError, find_files, read_rgb, shown
from cacheclip.errors import ConfigError, ModelLoadError, StoreError
from cacheclip.features.models import LoadedModel, encode_images, load_model
from cacheclip.features.preprocess import clean_transform, split_protocol
from cacheclip.results.runs import load_adapter


@dataclass
class FittedRun:
    """A run's adapter, ready to score features from the CLIP model it was trained on."""

    folder: Path
    method: str
    classnames: list[str]
    predict: Callable[[torch.Tensor], torch.Tensor]  # raw features (M, D) -> logits (M, K)
    model: dict  # identity of the CLIP model it expects

    @property
    def protocol(self) -> str:
        """The preprocessing protocol of the run's store (``extract --preprocess``)."""
        return split_protocol(self.model["preprocess"])[0] if self.model.get("preprocess") else "default"


def find_adapter(run: Path) -> Path:
    """The adapter file of a run given as its folder, its result.json or the file itself."""
    run = Path(run)
    candidate = (
        run if run.suffix == ".safetensors" else (run.parent if run.suffix == ".json" else run) / "adapter.safetensors"
    )
    if not candidate.is_file():
        raise StoreError(
            f"no adapter file at {candidate}",
            "pass a run folder written by `cacheclip fit` (it holds result.json and adapter.safetensors); "
            "zero-shot runs have none",
        )
    return candidate


def load_run(run: Path, device: str = "cpu") -> FittedRun:
    from cacheclip.fit.methods import get_method, list_methods

    path = find_adapter(run)
    tensors, class_weights, meta = load_adapter(path)
    method = get_method(meta.get("method", "clip-adapter"))
    if method.from_artifact is None:
        usable = [m for m in list_methods() if get_method(m).from_artifact is not None]
        raise ConfigError(
            f"{method.name} runs save no classifier to predict with",
            f"use a run of a method that does: {', '.join(usable)}",
        )
    predict = method.from_artifact(tensors, meta, class_weights.to(device), float(meta["logit_scale"]), device)
    return FittedRun(path.parent, method.name, list(meta["classnames"]), predict, meta["model"])


def load_model_for(
    run: FittedRun, model: str | None = None, pretrained: str | None = None, device: str = "cpu"
) -> LoadedModel:
    """The CLIP model recorded in the run (overridable when files moved); checked against it."""
    ident = run.model
    model = model or ident.get("model_config_path") or ident["model"]
    if pretrained is None:
        pretrained = {"file": ident.get("checkpoint_path"), "none": "none"}.get(
            ident["pretrained"], ident["pretrained"]
        )
    if ident["pretrained"] == "file" and not Path(pretrained or "").is_file():
        raise ModelLoadError(
            f"the run's weights file {pretrained} is not here",
            "pass --pretrained PATH to the same checkpoint (its SHA-256 is checked)",
        )
    if model.endswith(".json") and not Path(model).is_file():
        raise ModelLoadError(f"the run's model config {model} is not here", "pass --model PATH to the same JSON")
    loaded = load_model(model, pretrained, device=device)
    # content, not names: a config or checkpoint may move or be renamed; the weights actually
    # loaded are compared in every case (a tag or random init has no file hash)
    keys = ("weights_sha256", "model_config_sha256", "preprocess", "state_sha256")
    expected = {k: ident.get(k) for k in keys if ident.get(k)}
    if "preprocess" in expected:  # the model's own config, without the store's protocol
        expected["preprocess"] = split_protocol(expected["preprocess"])[1]
    actual = {k: v for k, v in loaded.identity().items() if k in expected}
    if "state_sha256" in expected:  # runs of older versions did not record it
        actual["state_sha256"] = loaded.state_sha256
    same_name = loaded.name == ident["model"] or "model_config_sha256" in expected
    if actual != expected or not same_name:
        raise ModelLoadError(
            f"the model loaded ({loaded.name}, {loaded.weights_id}) is not the one the run was "
            f"trained on ({ident['model']}, {ident['pretrained']})",
            "pass --model/--pretrained of the run's store (see its result.json)",
        )
    return loaded


def list_images(paths: Sequence[Path]) -> list[Path]:
    """Files as given, folders searched recursively for images (regular files only; symlinked
    folders once each), in sorted order. What a folder search skips (a FIFO, a symlink loop...)
    is reported in a ``SkippedFilesWarning`` per folder."""
    images: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            skipped = Skipped()
            images += find_files(p, IMAGE_SUFFIXES, skipped)
            skipped.warn(p)
        elif os.path.lexists(p):  # a file as given, even a FIFO: classify() names what is wrong
            images.append(p)
        else:
            raise ConfigError(f"no such image or folder: {shown(p)}", "check the path")
    if not images:
        raise ConfigError("no images found", f"give image files or folders with {', '.join(sorted(IMAGE_SUFFIXES))}")
    return images


def classify(
    run: FittedRun,
    loaded: LoadedModel,
    images: Sequence[Path],
    top_k: int = 5,
    batch_size: int = 32,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[dict]:
    """Per image, in order: its top-k classes with probabilities (softmax of the run's logits),
    or, for an image that cannot be read, ``error`` (the others are still classified). Images
    are preprocessed as the run's store was (``FittedRun.protocol``)."""
    transform = clean_transform(run.protocol, loaded.preprocess, loaded.val_transform)
    out = []
    k = min(top_k, len(run.classnames))
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        rows: list[dict] = [{"image": shown(path)} for path in batch]
        tensors, read = [], []
        for row, path in zip(rows, batch, strict=True):
            try:
                tensors.append(transform(read_rgb(path)))  # regular files only: a FIFO would block
                read.append(row)
            except Exception as e:  # PIL raises many types for broken files
                row["error"] = str(e) if isinstance(e, UnreadableImageError) else f"{type(e).__name__}: {e}"
        if tensors:
            probs = run.predict(encode_images(loaded, torch.stack(tensors))).softmax(-1)
            top = probs.topk(k, dim=-1)
            for row, p, i in zip(read, top.values.tolist(), top.indices.tolist(), strict=True):
                row["top"] = [{"class": run.classnames[c], "prob": q} for c, q in zip(i, p, strict=True)]
        out += rows
        if progress:
            progress("predict", min(start + batch_size, len(images)), len(images))
    return out


def result_json(predictions: list[dict]) -> str:
    return json.dumps(predictions, indent=1)
