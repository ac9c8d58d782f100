"""The image pipeline of extraction: decode planned items (clean view + augmented views) in
DataLoader workers, batch them by split, and run the forward on a batch."""

from __future__ import annotations

import itertools
import os

import numpy as np
import torch

from cacheclip.common import die_with_parent
from cacheclip.datasets.catalog import SPLITS, DatasetSplits, Item
from cacheclip.datasets.listing import UnreadableImageError, read_rgb
from cacheclip.features.augment import AugmentConfig, AugmentedViews
from cacheclip.features.models import LoadedModel, encode_images
from cacheclip.features.preprocess import Coop2021Views, clean_transform

Work = list[tuple[str, int, Item]]  # (split, index in the split, item), in SPLITS order


class ImageReader(torch.utils.data.Dataset):
    """Decodes work items in DataLoader workers (train items also get their augmented views);
    a bad file is reported, not raised, so the main process can name it cleanly (worker
    exceptions arrive as mangled tracebacks)."""

    def __init__(self, ds: DatasetSplits, work: Work, transform, views: AugmentedViews | Coop2021Views | None):
        self.root, self.work, self.transform, self.views = str(ds.image_root), work, transform, views

    def __len__(self) -> int:
        return len(self.work)

    def __getitem__(self, i: int):
        split, index, item = self.work[i]
        try:
            image = read_rgb(os.path.join(self.root, item.path))  # regular files only: a FIFO would block
            clean = self.transform(image)
            aug = self.views(image, item.path) if self.views and split == "train" else torch.zeros(0)
            return split, index, clean, aug, ""
        except Exception as e:  # PIL raises many types for broken files
            why = str(e) if isinstance(e, UnreadableImageError) else f"{type(e).__name__}: {e}"
            return split, index, torch.zeros(0), torch.zeros(0), why


def _collate(batch):
    """(split, indices, clean, aug or None, error or None) of a batch from one split. Indices
    travel as a numpy array (pickled): a tensor would cost a shared-memory file and a socket
    round trip to the worker per batch."""
    splits, indices, clean, aug, errors = zip(*batch, strict=False)
    indices = np.asarray(indices, dtype=np.int64)
    for index, err in zip(indices, errors, strict=False):
        if err:
            return splits[0], indices, None, None, (int(index), err)
    aug_t = torch.stack(aug) if aug[0].numel() else None
    return splits[0], indices, torch.stack(clean), aug_t, None


def split_batches(work: Work, batch_size: int) -> list[list[int]]:
    """Positions in ``work`` grouped into batches that never mix splits."""
    batches: list[list[int]] = []
    for _, group in itertools.groupby(range(len(work)), key=lambda i: work[i][0]):
        positions = list(group)
        batches += [positions[j : j + batch_size] for j in range(0, len(positions), batch_size)]
    return batches


def image_reader(
    ds: DatasetSplits,
    todo: dict[str, list[int]],
    loaded: LoadedModel,
    augment: AugmentConfig,
    preprocess: str = "default",
) -> ImageReader:
    """The planned items of every split, in SPLITS order, decoded the model's way with the
    transforms of the ``preprocess`` protocol (``preprocess.PROTOCOLS``)."""
    work = [(s, i, ds.split(s)[i]) for s in SPLITS for i in todo.get(s, [])]
    views = train_views(preprocess, augment, loaded) if augment.views and todo.get("train") else None
    return ImageReader(ds, work, clean_transform(preprocess, loaded.preprocess, loaded.val_transform), views)


def train_views(preprocess: str, augment: AugmentConfig, loaded: LoadedModel) -> AugmentedViews | Coop2021Views:
    """The augmented train views of a protocol: RandomResizedCrop + flip (default) or CoOp's
    2021 squash, flip, translate and centre crop; both seeded per (seed, path, view)."""
    if preprocess == "coop-2021":
        return Coop2021Views(augment.views, augment.seed, loaded.preprocess)
    return AugmentedViews(augment, loaded.preprocess)


class _EncodingCollate:
    """Collates a batch and encodes it, in the DataLoader worker (``CpuPlan.in_workers``)."""

    def __init__(self, loaded: LoadedModel, precision: str):
        self.loaded, self.precision = loaded, precision

    def __call__(self, batch):
        split, indices, clean, aug, error = _collate(batch)
        if error is not None:
            return split, indices, None, None, error
        return (split, indices, *encode_batch(self.loaded, clean, aug, self.precision), None)


def image_loader(
    reader: ImageReader, loaded: LoadedModel, batch_size: int, workers: int, encode: str | None = None
) -> torch.utils.data.DataLoader:
    """One DataLoader over all of ``reader``'s items: its workers start once and stay busy
    across split boundaries; batches never mix splits. Batches are (split, indices, clean
    images, augmented views or None, error or None). With ``encode`` (a precision) the workers
    also run the forward and batches carry features instead of images: forked, so each worker
    shares this process's model instead of unpickling a copy."""
    collate = _collate if encode is None else _EncodingCollate(loaded, encode)
    return torch.utils.data.DataLoader(
        reader,
        batch_sampler=split_batches(reader.work, batch_size),
        num_workers=workers,
        collate_fn=collate,
        pin_memory=loaded.device.startswith("cuda"),
        persistent_workers=False,
        multiprocessing_context="fork" if encode is not None and workers else None,
        worker_init_fn=die_with_parent,  # a killed extract leaves no worker behind
    )


def encode_batch(loaded: LoadedModel, clean: torch.Tensor, aug: torch.Tensor | None, precision: str):
    """One forward over clean + augmented views: (B, D) and (B, V, D) or None."""
    if aug is None:
        return encode_images(loaded, clean, precision).cpu().numpy(), None
    b, v = aug.shape[:2]
    feats = encode_images(loaded, torch.cat([clean, aug.flatten(0, 1)]), precision).cpu().numpy()
    return feats[:b], feats[b:].reshape(b, v, -1)
