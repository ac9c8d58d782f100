"""Fit time per run of the baselines on synthetic CLIP-like features (16 shots, D = 1024).

Times ``method.train`` for one (shots, seed) run through the real ``FitContext`` over an
in-memory store: training plus selection on val, no file I/O, no test evaluation. 10 and 397
classes have a 4-shot val (the selection grids are searched); 1000 classes has none, like
ImageNet (fixed hyperparameters), unless ``--val-at-1000``.

    .venv/bin/python benchmarks/baselines.py              # default: under 2 minutes, 1 thread
    .venv/bin/python benchmarks/baselines.py --full       # Tip-Adapter-F's 20 epochs measured everywhere
    .venv/bin/python benchmarks/baselines.py --threads 0  # torch's default thread count

By default Tip-Adapter-F is measured over 1 epoch at 397+ classes and its 20-epoch time is
extrapolated (marked ~): its cost is linear in epochs. The table also gives each method's
top-1 on a synthetic test split (10 per class) next to zero-shot's, as a sanity check.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from cacheclip.datasets.fewshot import sample_run
from cacheclip.fit.methods import FitContext, FitData, RunPlan, get_method
from cacheclip.fit.methods.base import zero_shot_predictor
from cacheclip.fit.metrics import top1
from cacheclip.fit.stage import FitConfig

SHOTS, DIM, VIEWS, VAL_SHOTS, TEST_SHOTS = 16, 1024, 10, 4, 10


class MemoryStore:
    """The part of FeatureStore that FitContext uses, over arrays."""

    path = Path("memory.h5")

    def __init__(self, splits: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]]):
        self.splits = splits

    def read(self, split, indices=None, *, aug=False):
        feats, labels, views = self.splits[split]
        idx = np.arange(len(labels)) if indices is None else np.asarray(indices)
        return feats[idx], labels[idx], views[idx] if aug and views is not None else None


def synthetic(classes: int, with_val: bool, seed: int = 0) -> tuple[MemoryStore, FitData]:
    """Clusters around a shared direction (cosines high, as CLIP's), raw norms varied, 10
    augmented views per train image; text weights = centres + noise. At 397 classes zero-shot
    gets about 50% and a nearest-class-mean of 16 shots about 64%."""
    rng = np.random.default_rng(seed)
    common = rng.standard_normal(DIM, dtype=np.float32)
    centers = common + 0.7 * rng.standard_normal((classes, DIM), dtype=np.float32)

    def draw(n: int):
        labels = np.repeat(np.arange(classes), n)
        feats = centers[labels] + 3.9 * rng.standard_normal((len(labels), DIM), dtype=np.float32)
        return feats * rng.uniform(0.5, 2, (len(labels), 1)).astype(np.float32), labels

    train, train_labels = draw(SHOTS)
    views = train[:, None] + 1.5 * rng.standard_normal((len(train), VIEWS, DIM), dtype=np.float32)
    val, val_labels = draw(VAL_SHOTS) if with_val else (np.zeros((0, DIM), np.float32), np.zeros(0, np.int64))
    test, test_labels = draw(TEST_SHOTS)
    text = centers + 1.1 * rng.standard_normal((classes, DIM), dtype=np.float32)
    store = MemoryStore(
        {"train": (train, train_labels, views), "val": (val, val_labels, None), "test": (test, test_labels, None)}
    )
    data = FitData(
        dataset=f"synthetic{classes}",
        store=store.path,
        attrs={"aug_scale": "[0.08, 1.0]"},
        classnames=[f"c{k}" for k in range(classes)],
        class_weights=torch.from_numpy(text),
        classifier="synthetic",
        logit_scale=100.0,
        train_labels=train_labels.tolist(),
        val_labels=val_labels.tolist(),
        train_paths=[f"t{i}" for i in range(len(train_labels))],
        val_paths=[f"v{i}" for i in range(len(val_labels))],
        aug_views=VIEWS,
    )
    return store, data


def time_run(method: str, store: MemoryStore, data: FitData, cfg: FitConfig) -> tuple[float, dict, float]:
    """(seconds to train and select, chosen values, top-1 % on the synthetic test split)."""
    split = sample_run(data.train_labels, data.val_labels, SHOTS, 1)
    ctx = FitContext(store, data, dataclasses.replace(cfg, method=method), SHOTS, "")
    start = time.perf_counter()
    [trained] = get_method(method).train(ctx, [RunPlan(1, split, "bench", Path("unused"))])
    seconds = time.perf_counter() - start
    return seconds, trained.selection["chosen"], _top1(trained.predict, store)


def _top1(predict, store: MemoryStore) -> float:
    feats, labels, _ = store.splits["test"]
    return top1(predict(torch.from_numpy(feats)), torch.from_numpy(labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", default="10,397,1000", help="comma list of class counts")
    parser.add_argument("--full", action="store_true", help="measure Tip-Adapter-F's 20 epochs at every size")
    parser.add_argument("--val-at-1000", action="store_true", help="give 1000 classes a 4-shot val too")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: steady numbers on a shared machine; 0: torch's default)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = FitConfig()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {SHOTS} shots, D={DIM}, "
        f"{VIEWS} aug views; grids: {len(cfg.lp_cs)} C, {len(cfg.tip_betas)} x {len(cfg.tip_alphas)} (beta, alpha)"
    )
    rows = []
    for classes in (int(c) for c in args.classes.split(",")):
        with_val = classes < 1000 or args.val_at_1000
        store, data = synthetic(classes, with_val)
        zs = _top1(zero_shot_predictor(data), store)
        times = {}
        for method in ("linear-probe", "tip-adapter", "tip-adapter-f"):
            epochs = cfg.tipf_epochs if (args.full or classes < 397 or method != "tip-adapter-f") else 1
            seconds, chosen, acc = time_run(method, store, data, dataclasses.replace(cfg, tipf_epochs=epochs))
            times[method] = seconds
            note = ""
            if epochs != cfg.tipf_epochs:  # the cache and selection once, the epochs scaled
                once = times["tip-adapter"]
                seconds = once + (seconds - once) * cfg.tipf_epochs / epochs
                note = f"~ ({epochs} of {cfg.tipf_epochs} epochs measured; test top-1 after {epochs})"
            rows.append((classes, len(data.train_labels), len(data.val_labels), method, seconds, chosen, acc, zs, note))
            print(f"  {classes:5d} classes  {method:14s} {seconds:8.2f} s  {note}", flush=True)
    print("\n| classes | train | val | method | s / run | chosen | test top-1 (zero-shot) | note |")
    print("|---|---|---|---|---|---|---|---|")
    for classes, n, m, method, seconds, chosen, acc, zs, note in rows:
        print(
            f"| {classes} | {n} | {m or 'none'} | {method} | {seconds:.2f} | {json.dumps(chosen)} | "
            f"{acc:.1f} ({zs:.1f}) | {note} |"
        )


if __name__ == "__main__":
    main()
