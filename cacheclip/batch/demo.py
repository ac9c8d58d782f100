"""The demo: a whole batch on generated data with a tiny random-weight model, offline, in seconds.

``prepare_demo(folder)`` writes, under ``folder``:

* ``data/``: small synthetic EuroSAT and DTD in their real CoOp layouts
  (``synthetic.make_dataset``: every class its own colour and stripes);
* ``tiny-clip.json`` + ``tiny-clip.pt``: a tiny open_clip architecture and its
  seeded random weights, loaded like any user checkpoint
  (``--model tiny-clip.json --pretrained tiny-clip.pt``);
* ``batch.toml``: the batch that runs them, so ``cacheclip batch --config`` reruns it.

The batch runs the fast methods side by side on the same cache (``DEMO_METHODS``: zero-shot
CLIP, CLIP-Adapter, Tip-Adapter, GDA, LP++), and the demo prints the report's side-by-side
table. With random weights zero-shot CLIP is at chance; the methods learn the classes from the
few-shot features alone, so CLIP-Adapter has to do more work than on real CLIP features: the
demo gives it a larger learning rate and chooses alpha on val from (0.2, 0.5, 0.8). LP++ trains
100 epochs instead of 300, to keep the demo fast. The numbers are synthetic and mean nothing
about real data. Existing files are kept, so a rerun only reports again.
"""

from __future__ import annotations

import json
from pathlib import Path

from cacheclip.batch.config import BatchConfig, load_config
from cacheclip.common import write_atomic

DEMO_DATASETS = {  # name -> make_dataset sizes (images per class)
    "eurosat": {"n_classes": 10, "n_train": 10, "n_val": 4, "n_test": 10},
    "dtd": {"n_classes": 16, "n_train": 10, "n_val": 4, "n_test": 10},
}
TINY_MODEL = "tiny-clip"
TINY_CONFIG = {  # open_clip model-config format; a few MB of random weights
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}
WEIGHTS_SEED = 0
DEMO_TOML = """\
# cacheclip demo batch: `cacheclip batch --config {toml}` reruns it (finished runs are skipped).
# Paths are relative to this file. The model has RANDOM weights: the numbers are synthetic.
root = "data"
cache_dir = "cache"
results_dir = "results"
datasets = {datasets}
models = [{{ model = "{model}.json", pretrained = "{model}.pt" }}]
shots = [1, 2, 4, 8]
seeds = [1, 2, 3]
methods = {methods}   # side by side on the same cache
aug_views = 4
workers = 0
device = "cpu"

[clip-adapter]             # CLIP-Adapter's settings (every method has a table of its own)
alphas = [0.2, 0.5, 0.8]   # chosen on the few-shot val split
lr = 0.05                  # CoOp uses 0.002; random features need bigger steps

["lp++"]
epochs = 100               # LP++ uses 300; enough here, and the demo stays fast
"""
DEMO_METHODS = ("zero-shot", "clip-adapter", "tip-adapter", "gda", "lp++")  # the fast ones: seconds for all
REAL_COMMAND = (
    "cacheclip batch --root /data/coop --datasets coop11 --model RN50 --pretrained openai "
    "--shots 1,2,4,8,16 --seeds 1,2,3"
)


def write_tiny_model(folder: Path) -> tuple[Path, Path]:
    """(model-config JSON, checkpoint) of the demo model; written once, then reused."""
    from cacheclip.features.models import write_random_model

    return write_random_model(folder, TINY_MODEL, TINY_CONFIG, WEIGHTS_SEED)


def write_demo_data(root: Path) -> list[str]:
    """The demo datasets under ``root`` in their CoOp layouts (kept when already there)."""
    from cacheclip.datasets.catalog import dataset_folder, get_dataset_spec
    from cacheclip.datasets.synthetic import make_dataset

    for name, sizes in DEMO_DATASETS.items():
        spec = get_dataset_spec(name)
        if not (dataset_folder(name, root) / spec.split_file).is_file():
            make_dataset(name, root, image_size=48, **sizes)
    return list(DEMO_DATASETS)


def prepare_demo(folder: Path) -> tuple[Path, BatchConfig]:
    """Data, model and ``batch.toml`` under ``folder``; returns (toml path, its config)."""
    folder = Path(folder)
    write_demo_data(folder / "data")
    write_tiny_model(folder)
    toml = folder / "batch.toml"
    if not toml.is_file():
        text = DEMO_TOML.format(
            toml=toml, model=TINY_MODEL, datasets=json.dumps(list(DEMO_DATASETS)), methods=json.dumps(DEMO_METHODS)
        )
        write_atomic(toml, text)
    return toml, load_config(toml)


def headline(results: list[dict], method: str = "clip-adapter") -> dict[int, tuple[float, float]]:
    """Per shots: (mean zero-shot test top-1, mean test top-1 of ``method``) over datasets and seeds."""
    by_shots: dict[int, list[tuple[float, float]]] = {}
    for r in results:
        if r["method"] != method:
            continue
        by_shots.setdefault(r["shots"], []).append((r["zero_shot"]["test"]["top1"], r["metrics"]["test"]["top1"]))
    return {k: (sum(z for z, _ in v) / len(v), sum(a for _, a in v) / len(v)) for k, v in sorted(by_shots.items())}


def side_by_side(report_md: str) -> str:
    """The report's "Methods side by side" section (every method's average per shot count), or ""."""
    start = report_md.find("## Methods side by side")
    if start < 0:
        return ""
    end = report_md.find("\n## ", start + 1)
    return report_md[start : end if end > 0 else None].strip()
