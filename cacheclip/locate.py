"""Find the store of a (model, weights, dataset) without building the model."""

from __future__ import annotations

from pathlib import Path

from .datasets import resolve_name
from .models import resolve_model
from .store import store_path


def locate_store(cache_dir: str | Path, model: str, pretrained: str, dataset: str) -> Path:
    ref = resolve_model(model, pretrained)
    name = resolve_name(dataset)
    if name.startswith("imagefolder:"):
        name = f"imagefolder-{Path(name.split(':', 1)[1]).expanduser().resolve().name}"
    return store_path(cache_dir, ref.model_id, ref.weights_id, name)
