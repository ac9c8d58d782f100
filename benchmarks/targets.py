"""What does `fit --targets imagenet-shift` add to an ImageNet grid?

Run: .venv/bin/python benchmarks/targets.py [--method tip-adapter] [--scale 0.2] [--seeds 1,2,3]

Writes synthetic stores (random features, no model) the size of ImageNet's at ``--scale``
(1.0: 1000 classes, 16-shot train, 50k test; V2 10k, Sketch 50,889, A 7,500 and R 30k test
images, A and R over 200 classes; D = 1024 as RN50) and fits the same 16-shot grid twice in
one process, with a fresh results folder each time: without targets, then with all four.
ratio = (with) / (without); the issue's bound is 1.2. Each fit is the best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from cacheclip.features import store as st
from cacheclip.features.models import resolve_model
from cacheclip.fit.methods import get_method
from cacheclip.fit.stage import FitConfig, fit_dataset

REF = resolve_model("RN50", "none")
D = 1024
SIZES = {
    "imagenet-v2": (10_000, 1000),
    "imagenet-sketch": (50_889, 1000),
    "imagenet-a": (7_500, 200),
    "imagenet-r": (30_000, 200),
}


def write(cache: Path, name: str, wnids: list[str], splits: dict, rng: np.random.Generator) -> None:
    path = st.store_path(cache, REF.model_id, REF.weights_id, name)
    centres = rng.standard_normal((len(wnids), D)).astype(np.float32)
    listings = {}
    for split in ("train", "val", "test"):
        labels = splits.get(split, np.zeros(0, np.int64))
        listings[split] = st.SplitListing([f"{split}/{i}.jpg" for i in range(len(labels))], labels.tolist())
        for start in range(0, len(labels), 20_000):
            idx = np.arange(start, min(start + 20_000, len(labels)))
            feats = centres[labels[idx]] + 2 * rng.standard_normal((len(idx), D)).astype(np.float32)
            st.write_part(path, st.Chunk(split, idx, feats.astype(np.float16), None))
    attrs = {
        "dataset": name,
        **REF.identity(),
        "logit_scale": 100.0,
        "dtype": "float16",
        "aug_views": 0,
        "preprocess": "{}",
        "precision": "fp32",
        "templates_spec": "default",
    }
    text = (centres + rng.standard_normal(centres.shape).astype(np.float32))[None]
    contents = st.StoreContents(
        attrs, [f"class {w}" for w in wnids], listings, ["a photo of a {}."], text, text[0], wnids
    )
    st.commit(path, contents, "float16")


def make_stores(cache: Path, scale: float) -> None:
    rng = np.random.default_rng(0)
    wnids = [f"n{i:08d}" for i in range(1000)]
    n = lambda count: max(1, int(count * scale))  # noqa: E731
    train = np.repeat(np.arange(1000), 16)  # exactly the 16-shot union: every train image is used
    write(cache, "imagenet", wnids, {"train": train, "test": rng.integers(0, 1000, n(50_000))}, rng)
    for name, (count, classes) in SIZES.items():
        subset = sorted(rng.choice(1000, classes, replace=False).tolist()) if classes < 1000 else list(range(1000))
        labels = rng.integers(0, classes, n(count))  # only shapes and the class mapping matter for timing
        write(cache, name, [wnids[i] for i in subset], {"test": labels}, rng)


def best_fit(cfg: FitConfig, root: Path, repeats: int) -> float:
    times = []
    for r in range(repeats):
        run_cfg = replace(cfg, results_dir=str(root / f"results-{len(cfg.targets)}-{r}"))
        start = time.perf_counter()
        fit_dataset("imagenet", REF, run_cfg)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", default="tip-adapter")
    parser.add_argument("--scale", type=float, default=0.2)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--epochs", type=int, help="trained methods: fewer epochs (shorter fit: ratio is an upper bound)"
    )
    args = parser.parse_args()
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_stores(root / "cache", args.scale)
        settings = get_method(args.method).config()
        if args.epochs:
            settings = replace(settings, epochs=args.epochs)
        cfg = FitConfig(
            method=args.method,
            method_config=settings,
            shots=(16,),
            seeds=tuple(int(s) for s in args.seeds.split(",")),
            views="clean",
            cache_dir=str(root / "cache"),
        )
        without = best_fit(cfg, root, args.repeats)
        with_targets = best_fit(replace(cfg, targets=tuple(SIZES)), root, args.repeats)
    print(f"CPU: {cpu} ({os.cpu_count()} cores), python {platform.python_version()}, load {os.getloadavg()[0]:.2f}")
    epochs = f" ({args.epochs} epochs)" if args.epochs else ""
    print(f"{args.method}{epochs}, 16 shots x {len(cfg.seeds)} seeds, ImageNet-sized stores at scale {args.scale}:")
    print(f"fit without targets {without:.2f} s, with the four targets {with_targets:.2f} s")
    print(f"ratio {with_targets / without:.2f} (bound 1.2)")


if __name__ == "__main__":
    main()
