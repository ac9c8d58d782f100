"""How a CPU forward shares the cores with extraction's DataLoader workers (``CpuPlan``)."""

from __future__ import annotations

import collections
import sys
import time
from typing import TYPE_CHECKING

import torch

from cacheclip.features.models import LoadedModel, encode_images

if TYPE_CHECKING:
    from cacheclip.features.pipeline import ImageReader


class CpuPlan:
    """Where, and on how many threads, a CPU forward runs beside the DataLoader workers.

    The workers and the forward share the cores. ``choose`` measures, before the workers
    start, how fast they decode (the first items of each split decoded in this process,
    weighted by the split's share of the work and its forwards per item) and how fast a
    one-thread forward runs (random batches), then picks one of three cases:

    - the model binds (one thread cannot keep up with the decoding): the forward runs here
      on every thread;
    - decoding binds and the workers leave a core free: the forward runs here on one thread
      (a multi-threaded forward spin-waits at every op for a core that a worker holds:
      measured on 2 cores, a tiny model's forward 20x slower on 2 threads than on 1);
    - decoding binds and the workers fill every core: each worker encodes its own batches on
      one thread (``in_workers``). Run here, the forward would take its CPU from the workers
      anyway, plus an image transfer and a context switch per batch: measured on 2 cores
      with a tiny ViT, this process's CPU fell from 0.42 to 0.15 s per 8000 images and the
      run from 0.87 to 0.94 of the decode-only rate (medians). Linux only (forked workers).

    Inactive on GPU, without workers, or with one thread. ``close`` restores the thread
    count. (Conv models' features can differ in the last bit between thread counts; the
    last two cases both compute on one thread.)
    """

    def __init__(self, device: str, workers: int):
        self.initial = torch.get_num_threads()
        self.workers = workers
        self.active = device == "cpu" and workers > 0 and self.initial > 1
        self.forward_seconds: float | None = None  # one image, one thread
        self.in_workers = False

    def choose(self, loaded: LoadedModel, reader: ImageReader, batch_size: int, precision: str = "fp32") -> int:
        """Decide for ``reader``'s items; set and return this process's thread count."""
        self.in_workers = False
        if not self.active:
            return torch.get_num_threads()
        decode, forwards_per_item = decode_cost(reader)
        if self.forward_seconds is None:
            torch.set_num_threads(1)
            self.forward_seconds = forward_seconds_per_image(loaded, batch_size, precision)
        decode_rate = min(self.workers, self.initial) / max(decode, 1e-9)  # items/s
        forward_rate = 1.0 / (self.forward_seconds * forwards_per_item)  # items/s on one thread
        decode_binds = forward_rate >= decode_rate
        self.in_workers = decode_binds and self.workers >= self.initial and sys.platform.startswith("linux")
        threads = 1 if decode_binds else self.initial
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return threads

    def close(self) -> None:
        if torch.get_num_threads() != self.initial:
            torch.set_num_threads(self.initial)


def decode_cost(reader: ImageReader, per_split: int = 2) -> tuple[float, float]:
    """(decode + transform seconds, forwards) per item, as a worker does it: the first
    ``per_split`` items of each split timed, weighted by the split's share of the work."""
    counts = collections.Counter(split for split, _, _ in reader.work)
    first: dict[str, int] = {}
    for position, (split, _, _) in enumerate(reader.work):
        first.setdefault(split, position)
    seconds = 0.0
    for split, n in counts.items():
        timed = range(first[split], first[split] + min(per_split, n))
        start = time.perf_counter()
        for i in timed:
            reader[i]
        seconds += n * (time.perf_counter() - start) / len(timed)
    views = reader.views.cfg.views if reader.views else 0
    forwards = len(reader.work) + views * counts.get("train", 0)
    total = max(len(reader.work), 1)
    return seconds / total, forwards / total


def forward_seconds_per_image(
    loaded: LoadedModel, max_batch: int, precision: str = "fp32", enough: float = 0.02
) -> float:
    """Seconds per image of the forward on random input, at the current thread count: batches
    of 1, 4, 16... up to ``max_batch``, stopping at the first that takes ``enough`` seconds
    (a fast model's cost per image falls with the batch; a slow one is measured at once)."""
    size = loaded.preprocess["size"]
    side = (size, size) if isinstance(size, int) else tuple(size)
    batch = 1
    while True:
        x = torch.randn(batch, 3, *side)
        start = time.perf_counter()
        encode_images(loaded, x, precision)
        seconds = time.perf_counter() - start
        if seconds >= enough or batch >= max_batch:
            return seconds / batch
        batch = min(batch * 4, max_batch)
