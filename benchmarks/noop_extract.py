"""What does checking every image's size and mtime add to a no-op re-extract of ImageNet?

Run: .venv/bin/python benchmarks/noop_extract.py [--classes 1000] [--per-class 1300] [--repeats 3]

Writes an ImageNet-layout folder of empty files (a no-op re-extract decodes nothing, so the
files need no pixels), commits a store through extract's own code in which every item is
encoded (zero features, real item stats), then times ``extract_dataset`` with nothing to do:

(a) as today: listing the dataset, opening the store, planning, and comparing every encoded
    item's size and mtime with the store (``changed_items``);
(b) the same with ``changed_items`` replaced by "nothing changed" (the code before the check).

ratio = (a) / (b); the issue's bound is 1.5. Each time is the best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

import cacheclip.features.extract as ex
from cacheclip.common import file_stats
from cacheclip.datasets.catalog import SPLITS
from cacheclip.datasets.layouts import load_dataset
from cacheclip.datasets.templates import get_templates
from cacheclip.features import store as st
from cacheclip.features.models import load_model, write_random_model


def make_layout(root: Path, classes: int, per_class: int) -> None:
    folder = root / "imagenet"
    lines = []
    for c in range(classes):
        wnid = f"n{c:08d}"
        lines.append(f"{wnid} class {c}\n")
        for split, count in (("train", per_class), ("val", 50)):
            d = folder / "images" / split / wnid
            d.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                (d / f"{wnid}_{i}.JPEG").touch()
    (folder / "classnames.txt").write_text("".join(lines))


def build_store(root: Path, cache: Path, loaded) -> Path:
    cfg = ex.ExtractConfig(cache_dir=str(cache), train="all", aug_views=0, workers=0)
    ds = load_dataset("imagenet", root)
    identity = ex.store_identity(ds, loaded, cfg, "fp32")
    path = st.store_path(cache, loaded.model_id, loaded.weights_id, ds.name)
    for split in SPLITS:
        items = ds.split(split)
        for start in range(0, len(items), 100_000):
            idx = np.arange(start, min(start + 100_000, len(items)))
            stats = np.frombuffer(file_stats(ds.image_root, [items[i].path for i in idx]), np.int64).reshape(-1, 2)
            st.write_part(path, st.Chunk(split, idx, np.zeros((len(idx), loaded.embed_dim), np.float16), None, stats))
    templates = list(get_templates(cfg.templates, ds.name))
    text = ex._encode_text(loaded, templates, ds, None)
    st.commit(path, ex._contents(ds, loaded, cfg, identity, templates, text), cfg.dtype)
    return path


def best_noop(root: Path, cache: Path, loaded, repeats: int) -> float:
    cfg = ex.ExtractConfig(cache_dir=str(cache), train="all", aug_views=0, workers=0)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        summary = ex.extract_dataset("imagenet", root, loaded, cfg)
        times.append(time.perf_counter() - start)
        assert not summary.encoded, summary.encoded
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--per-class", type=int, default=1300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_layout(tmp / "data", args.classes, args.per_class)
        config, checkpoint = write_random_model(tmp / "model", "bench-tiny", TINY, seed=0)
        loaded = load_model(str(config), str(checkpoint))
        build_store(tmp / "data", tmp / "cache", loaded)
        n = args.classes * (args.per_class + 50)
        checked = best_noop(tmp / "data", tmp / "cache", loaded, args.repeats)
        ex.changed_items = lambda store, root: {}
        unchecked = best_noop(tmp / "data", tmp / "cache", loaded, args.repeats)
    print(f"CPU: {cpu} ({os.cpu_count()} cores), python {platform.python_version()}, load {os.getloadavg()[0]:.2f}")
    print(f"no-op re-extract of {n} items: with item checks {checked:.2f} s, without {unchecked:.2f} s")
    print(f"ratio {checked / unchecked:.2f} (bound 1.5)")


TINY = {
    "embed_dim": 32,
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
}

if __name__ == "__main__":
    main()
