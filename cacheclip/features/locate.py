"""Find the store of a (model, weights, dataset) without building the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cacheclip.datasets.catalog import store_name
from cacheclip.features.models import resolve_model
from cacheclip.features.store import store_path


def locate_store(cache_dir: str | Path, model: str, pretrained: str, dataset: str) -> tuple[Path, dict[str, Any]]:
    """(store path, identity its attributes must show): readers pass both to ``open_store``, so a
    store copied under another dataset's name, or built from other weights, is refused."""
    ref = resolve_model(model, pretrained)
    name = store_name(dataset)
    return store_path(cache_dir, ref.model_id, ref.weights_id, name), {"dataset": name, **ref.identity()}
