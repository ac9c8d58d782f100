"""Classify new images with a fitted run: CLIP model + the run's adapter file.

The adapter file is self-contained: tensors, class weights, class names, the
adapter config and the identity of the CLIP model it expects (see ``runs``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from cacheclip.common import IMAGE_SUFFIXES
from cacheclip.errors import ConfigError, CorruptImageError, ModelLoadError, StoreError
from cacheclip.features.models import LoadedModel, encode_images, load_model
from cacheclip.results.runs import load_adapter


@dataclass
class FittedRun:
    """A run's adapter, ready to score features from the CLIP model it was trained on."""

    folder: Path
    method: str
    classnames: list[str]
    predict: Callable[[torch.Tensor], torch.Tensor]  # raw features (M, D) -> logits (M, K)
    model: dict  # identity of the CLIP model it expects


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
    expected = {k: ident.get(k) for k in ("weights_sha256", "preprocess") if ident.get(k)}
    actual = {k: v for k, v in loaded.identity().items() if k in expected}
    if actual != expected or loaded.name != ident["model"]:
        raise ModelLoadError(
            f"the model loaded ({loaded.name}, {loaded.weights_id}) is not the one the run was "
            f"trained on ({ident['model']}, {ident['pretrained']})",
            "pass --model/--pretrained of the run's store (see its result.json)",
        )
    return loaded


def list_images(paths: Sequence[Path]) -> list[Path]:
    """Files as given, folders searched recursively for images, in sorted order."""
    images: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            images += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            images.append(p)
        else:
            raise ConfigError(f"no such image or folder: {p}", "check the path")
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
    """Per image: its top-k classes with probabilities (softmax of the run's logits)."""
    from PIL import Image

    out = []
    k = min(top_k, len(run.classnames))
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        tensors = []
        for path in batch:
            try:
                with Image.open(path) as im:
                    tensors.append(loaded.val_transform(im.convert("RGB")))
            except Exception as e:
                raise CorruptImageError(f"cannot decode {path}: {e}", "remove or replace the file") from e
        probs = run.predict(encode_images(loaded, torch.stack(tensors))).softmax(-1)
        top = probs.topk(k, dim=-1)
        for path, p, i in zip(batch, top.values.tolist(), top.indices.tolist(), strict=False):
            top = [{"class": run.classnames[c], "prob": q} for c, q in zip(i, p, strict=True)]
            out.append({"image": str(path), "top": top})
        if progress:
            progress("predict", min(start + batch_size, len(images)), len(images))
    return out


def result_json(predictions: list[dict]) -> str:
    return json.dumps(predictions, indent=1)
