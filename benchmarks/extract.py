"""How close does extraction come to its binding limit?

Run: .venv/bin/python benchmarks/extract.py [--model rn50|tiny|both|NAME|CONFIG.json]
         [--images N] [--workers W] [--batch-size B] [--image-size S] [--device cpu|cuda]
         [--precision auto|fp32|amp] [--cpu-plan auto|off|here]

Writes a synthetic EuroSAT-layout dataset (S x S JPEGs, EuroSAT's are 64 x 64)
with ``cacheclip.datasets.synthetic``, then measures in one process, for each model:

(a) end-to-end ``extract_dataset`` rate: train=all, aug_views=0, so exactly one
    forward per image in every split; the time includes listing the dataset,
    checking the files, encoding the text, writing the parts and the commit;
(b) the bare model forward rate on pre-loaded (B, 3, H, W) tensors (on CPU the
    better of all torch threads and one, the two settings extraction picks from);
(c) the decode-only rate of the same DataLoader (same reader, transform,
    collate, workers and batch size), no model.

ratio = (a) / min(b, c): how close extraction gets to whichever of the model or
the decoding binds. Target >= 0.9. Models: RN50 with random weights (the
RN50-quickgelu config; on a small CPU the model binds) and a tiny ViT (32 px
input, 1 layer; the decoding binds). Each rate is the best of ``--repeats``
runs, which hides short interference from other processes on a shared
machine but not a permanently busy one; the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from cacheclip.datasets.catalog import SPLITS
from cacheclip.datasets.layouts import load_dataset
from cacheclip.datasets.synthetic import make_dataset
from cacheclip.features import extract as ex
from cacheclip.features import pipeline
from cacheclip.features.models import encode_images, load_model

TINY_CONFIG = {  # the tests' tiny ViT
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
DEFAULT_IMAGES = {"RN50-quickgelu": 192, "tiny": 8000}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="both", help="rn50, tiny, both, an open_clip name or a config JSON")
    p.add_argument("--pretrained", default="none", help="weights tag or file (default: random weights)")
    p.add_argument("--images", type=int, default=0, help="images per model (default: 192 RN50, 8000 tiny)")
    p.add_argument("--workers", type=int, default=ex.ExtractConfig.workers)
    p.add_argument("--batch-size", type=int, default=ex.ExtractConfig.batch_size)
    p.add_argument("--image-size", type=int, default=64, help="side of the synthetic JPEGs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="auto", help="auto, fp32 or amp (as extract's --precision)")
    p.add_argument("--repeats", type=int, default=2, help="best of this many runs of each measurement")
    p.add_argument(
        "--cpu-plan",
        choices=("auto", "off", "here"),
        default="auto",
        help="extract's CPU plan (cacheclip.cpu_plan.CpuPlan): auto; off (torch's threads, forward here: the "
        "behaviour before it); here (its thread choice, never the forward in the workers)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary data and cache")
    return p.parse_args()


def model_specs(arg: str, folder: Path) -> list[tuple[str, str]]:
    """(label, --model value) pairs."""
    tiny = folder / "bench-tiny-vit.json"
    tiny.write_text(json.dumps(TINY_CONFIG))
    named = {"rn50": [("RN50-quickgelu", "RN50-quickgelu")], "tiny": [("tiny", str(tiny))]}
    named["both"] = named["rn50"] + named["tiny"]
    return named.get(arg.lower(), [(Path(arg).stem, arg)])


def make_data(root: Path, images: int, size: int) -> None:
    """EuroSAT layout, 10 classes, the images split about 1/2 train, 1/4 val, 1/4 test."""
    per_class = max(images // 10, 4)
    n_val = max(per_class // 4, 1)
    make_dataset(
        "eurosat", root, n_classes=10, n_train=per_class - 2 * n_val, n_val=n_val, n_test=n_val, image_size=size
    )


def end_to_end(root: Path, loaded, cfg: ex.ExtractConfig) -> tuple[float, int]:
    """(images/s, images) of one fresh extraction into an empty cache."""
    shutil.rmtree(cfg.cache_dir, ignore_errors=True)
    summary = ex.extract_dataset("eurosat", root, loaded, cfg)
    n = sum(summary.encoded.values())
    return n / summary.seconds, n


def forward_rate(loaded, batch_size: int, precision: str, min_batches: int = 3, min_seconds: float = 1.0) -> float:
    """Images/s of encode_images alone on a pre-loaded (B, 3, H, W) tensor, same batch size:
    at least ``min_batches`` batches and ``min_seconds``; on CPU the better of all torch
    threads and one (the two settings extract chooses from)."""
    size = loaded.preprocess["size"]
    side = size[0] if isinstance(size, (list, tuple)) else size
    x = torch.randn(batch_size, 3, side, side)
    initial = torch.get_num_threads()
    best = 0.0
    for threads in sorted({initial, 1} if loaded.device == "cpu" else {initial}, reverse=True):
        torch.set_num_threads(threads)
        if threads == initial:
            encode_images(loaded, x, precision)  # warm-up (allocator, oneDNN primitives)
        start, batches = time.perf_counter(), 0
        least = min_batches if threads == initial else 1  # one thread: a check, not worth RN50's time
        while batches < least or time.perf_counter() - start < min_seconds:
            encode_images(loaded, x, precision)
            if loaded.device.startswith("cuda"):
                torch.cuda.synchronize()
            batches += 1
        best = max(best, batches * batch_size / (time.perf_counter() - start))
    torch.set_num_threads(initial)
    return best


def decode_rate(root: Path, loaded, cfg: ex.ExtractConfig) -> float:
    """Images/s of extraction's DataLoader alone (every split, same reader, batches and workers)."""
    ds = load_dataset("eurosat", root)
    reader = pipeline.image_reader(ds, {s: list(range(len(ds.split(s)))) for s in SPLITS}, loaded, cfg.augment)
    loader = pipeline.image_loader(reader, loaded, cfg.batch_size, cfg.workers)
    start, n = time.perf_counter(), 0
    for _, idx, _, _, _ in loader:
        n += len(idx)
    return n / (time.perf_counter() - start)


def bench_model(label: str, model: str, args: argparse.Namespace, folder: Path) -> dict:
    images = args.images or DEFAULT_IMAGES.get(label, 512)
    root = folder / f"data-{label}"
    make_data(root, images, args.image_size)
    loaded = load_model(model, args.pretrained, device=args.device)
    cfg = ex.ExtractConfig(
        cache_dir=str(folder / f"cache-{label}"),
        train="all",
        aug_views=0,
        batch_size=args.batch_size,
        workers=args.workers,
        precision=args.precision,
    )
    precision = ex.resolve_precision(cfg.precision, args.device)
    a = b = c = 0.0
    for _ in range(args.repeats):  # interleaved, so a drifting background load hits all three alike
        rate, n = end_to_end(root, loaded, cfg)
        a = max(a, rate)
        b = max(b, forward_rate(loaded, args.batch_size, precision))
        c = max(c, decode_rate(root, loaded, cfg))
    return {
        "model": label,
        "images": n,
        "end_to_end": a,
        "forward": b,
        "decode": c,
        "binds": "model" if b < c else "decode",
        "ratio": a / min(b, c),
    }


class _PlanOff(ex.CpuPlan):
    """Never changes torch's thread count nor runs the forward in the workers."""

    def __init__(self, device: str, workers: int):
        super().__init__(device, 0)


class _PlanHere(ex.CpuPlan):
    """Chooses the thread count but always runs the forward in this process."""

    def choose(self, *args, **kwargs) -> int:
        threads = super().choose(*args, **kwargs)
        self.in_workers = False
        return threads


def main() -> None:
    args = parse_args()
    ex.CpuPlan = {"auto": ex.CpuPlan, "off": _PlanOff, "here": _PlanHere}[args.cpu_plan]
    folder = Path(tempfile.mkdtemp(prefix="cacheclip-bench-"))
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
        f"{torch.get_num_threads()}, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    print(
        f"# device {args.device}, precision {args.precision}, workers {args.workers}, batch {args.batch_size}, "
        f"{args.image_size}px JPEGs, aug_views=0 (one forward per image), best of {args.repeats}, "
        f"CPU plan {args.cpu_plan}"
    )
    print(f"{'model':>16} {'images':>6} {'(a) e2e':>9} {'(b) fwd':>9} {'(c) decode':>10} {'binds':>6} {'ratio':>6}")
    try:
        for label, model in model_specs(args.model, folder):
            r = bench_model(label, model, args, folder)
            print(
                f"{r['model']:>16} {r['images']:>6} {r['end_to_end']:>9.1f} {r['forward']:>9.1f} "
                f"{r['decode']:>10.1f} {r['binds']:>6} {r['ratio']:>6.2f}",
                flush=True,
            )
    finally:
        if args.keep:
            print(f"# kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    print("# rates in images/s; ratio = (a) / min((b), (c)), target >= 0.9")


if __name__ == "__main__":
    main()
