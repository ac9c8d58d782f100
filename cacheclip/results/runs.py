"""Run artifacts: where a run's result lives, its key, and atomic writes.

A run is identified by a key hashed from everything that changes its numbers
(dataset, shots, seed, method, resolved configuration, the store identity).
Its folder is ``<results>/<model>/<weights>/<dataset>/<method>/<K>shot-seed<S>-<key10>/``
holding ``result.json`` and, for trained methods, ``adapter.safetensors``.
A run whose ``result.json`` exists with the same key is done.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cacheclip.common import atomic_path, write_json_atomic

if TYPE_CHECKING:
    import torch

RESULT_SCHEMA = "cacheclip.result/1"
ADAPTER_FORMAT = "cacheclip.adapter/1"


def run_key(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def run_dir(
    results_dir: Path, model_id: str, weights_id: str, dataset: str, method: str, shots: int, seed: int, key: str
) -> Path:
    return Path(results_dir) / model_id / weights_id / dataset / method / f"{shots}shot-seed{seed}-{key[:10]}"


def is_done(folder: Path, key: str) -> bool:
    try:
        return json.loads((folder / "result.json").read_text()).get("run_key") == key
    except (OSError, ValueError, RecursionError, AttributeError):  # unreadable, not JSON, too deep, not an object
        return False


DIVERGED_AT = 1e8  # no classifier on CLIP's unit-norm features has weights this large unless training blew up


def divergence(folder: Path, result: dict[str, Any]) -> str | None:
    """Why the run's saved adapter shows that training diverged (a tensor holding NaN or inf, or
    values beyond ``DIVERGED_AT``, as ``--lr 1e30`` gives), else None. Read back from the file
    the run saved, so every method is judged the same way."""
    name = result.get("adapter_file")
    if not name or not (folder / name).is_file():
        return None
    import torch

    tensors, _, _ = load_adapter(folder / name)
    for key, tensor in sorted(tensors.items()):
        values = tensor.float()
        if not values.numel() or not values.is_floating_point():
            continue
        if not torch.isfinite(values).all():
            return f"training diverged: the adapter's {key} holds NaN or inf; lower the learning rate"
        peak = float(values.abs().max())
        if peak > DIVERGED_AT:
            return (
                f"training diverged: the adapter's {key} reaches {peak:.3g} (beyond {DIVERGED_AT:g}); "
                "lower the learning rate"
            )
    return None


def write_result(folder: Path, result: dict[str, Any]) -> None:
    """Written last: its presence (with the run key) is what marks the run done. A run whose
    adapter diverged is flagged (``result["diverged"]``), never recorded as a normal one."""
    flag = divergence(folder, result)
    if flag:
        result["diverged"] = flag
    write_json_atomic(folder / "result.json", result)


def read_result(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "result.json").read_text())


def save_adapter(
    path: Path, state: dict[str, torch.Tensor], class_weights: torch.Tensor, metadata: dict[str, Any]
) -> None:
    """safetensors file: the adapter tensors (names as in ClipAdapterHead.state_dict), plus
    ``class_weights`` (K, D) so the file alone can classify; metadata holds the adapter config,
    class names, logit scale and the model identity it expects (JSON strings)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    tensors["class_weights"] = class_weights.detach().cpu().float().contiguous()
    meta = {"format": ADAPTER_FORMAT, **{k: json.dumps(v, default=str) for k, v in metadata.items()}}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_adapter(path: Path) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, Any]]:
    """(adapter state, class_weights (K, D), metadata) from ``save_adapter``'s file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    class_weights = tensors.pop("class_weights")
    return tensors, class_weights, {k: (json.loads(v) if k != "format" else v) for k, v in meta.items()}
