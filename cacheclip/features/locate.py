"""Find the store of a (model, weights, dataset) without building the model.

Resolving ``--model`` / ``--pretrained`` needs open_clip's registry, and importing open_clip
(torchvision, torch's compiler stack with it) costs 1-3 s: most of a small fit's start-up. The
resolved names are remembered in ``<cache dir>/model-refs.json``, keyed by the two arguments, the
installed open_clip version and the size and mtime of any file they name, so commands that only
need a store's name (fit, batch's planning) resolve without that import after the first time.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from cacheclip.common import write_json_atomic
from cacheclip.datasets.catalog import store_name
from cacheclip.features.models import ModelRef, resolve_model
from cacheclip.features.store import store_path

REFS_FILE = "model-refs.json"


def resolve_remembered(model: str, pretrained: str, cache_dir: str | Path) -> ModelRef:
    """``resolve_model(model, pretrained)``, from the cache dir's memo when it holds this exact
    question (same arguments, open_clip version and named files); remembered otherwise."""
    memo_path, key = Path(cache_dir) / REFS_FILE, _memo_key(model, pretrained)
    memo = _read_memo(memo_path)
    if key in memo:
        try:
            return ModelRef(**memo[key])
        except TypeError:  # written by another version of ModelRef: resolve again
            pass
    ref = resolve_model(model, pretrained)
    if memo_path.parent.is_dir():
        try:
            write_json_atomic(memo_path, {**memo, key: asdict(ref)})
        except OSError:  # a read-only cache dir only costs the import next time
            pass
    return ref


def _memo_key(model: str, pretrained: str) -> str:
    files = []
    for arg in (model, pretrained):
        path = Path(arg).expanduser()
        if path.is_file():
            st = path.stat()
            files.append([str(path.resolve()), st.st_size, st.st_mtime_ns])
    try:
        version = metadata.version("open_clip_torch")
    except metadata.PackageNotFoundError:
        version = "?"
    return json.dumps([model, pretrained, version, files])


def _read_memo(path: Path) -> dict[str, Any]:
    try:
        memo = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def locate_store(cache_dir: str | Path, model: str, pretrained: str, dataset: str) -> tuple[Path, dict[str, Any]]:
    """(store path, identity its attributes must show): readers pass both to ``open_store``, so a
    store copied under another dataset's name, or built from other weights, is refused."""
    ref = resolve_remembered(model, pretrained, cache_dir)
    name = store_name(dataset)
    return store_path(cache_dir, ref.model_id, ref.weights_id, name), {"dataset": name, **ref.identity()}
