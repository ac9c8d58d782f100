"""Find the store of a (model, weights, dataset) without building the model."""

from __future__ import annotations

from pathlib import Path

from cacheclip.datasets.catalog import store_name
from cacheclip.features.models import resolve_model
from cacheclip.features.store import store_path


def locate_store(cache_dir: str | Path, model: str, pretrained: str, dataset: str) -> Path:
    ref = resolve_model(model, pretrained)
    return store_path(cache_dir, ref.model_id, ref.weights_id, store_name(dataset))
