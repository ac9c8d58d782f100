"""The extract stage: dataset images and prompted class names -> a feature store.

``extract_dataset`` encodes only what the store lacks, in chunks that are each
committed on their own (see ``store``), so it is incremental and resumable.
"""

from __future__ import annotations

import itertools
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from . import store as st
from .augment import AugmentConfig, AugmentedViews
from .cpu_plan import CpuPlan
from .datasets import SPLITS, DatasetSplits, Item, check_images, load_dataset
from .distributed import SINGLE, Dist, all_succeeded, on_main, shard, sum_over_ranks
from .errors import ConfigError, CorruptImageError, StoreMismatchError
from .fewshot import needed_train_indices
from .models import LoadedModel, ModelRef, cpu_has_bf16, encode_images, encode_text, versions
from .templates import format_prompts, get_templates

DEFAULT_SHOTS = (1, 2, 4, 8, 16)
DEFAULT_SEEDS = (1, 2, 3)
CHUNK_FORWARDS = 2048   # image forwards per committed chunk: bounds the work a kill can lose

Progress = Callable[[str, int, int], None]   # (stage, done, total)


@dataclass(frozen=True)
class ExtractConfig:
    """What to encode and how; every field that changes the bytes is recorded in the store."""

    cache_dir: str = "cache"
    templates: str = "default"                  # template set name or file
    dtype: str = "float16"                      # stored feature dtype: float16 | float32
    augment: AugmentConfig = AugmentConfig()
    train: str = "fewshot"                      # fewshot (what the planned runs need) | all
    shots: tuple[int, ...] = DEFAULT_SHOTS
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    holdout_val: bool = False                   # also encode the hold-out val of datasets without val
    batch_size: int = 64
    workers: int = min(4, os.cpu_count() or 1)
    precision: str = "auto"                     # auto (amp on cuda, fp32 on cpu) | fp32 | amp (bf16 on cpu)

    def validate(self) -> None:
        if self.dtype not in ("float16", "float32"):
            raise ConfigError(f"--dtype {self.dtype} is not supported", "use float16 or float32")
        if self.train not in ("fewshot", "all"):
            raise ConfigError(f"--train {self.train} is not supported", "use fewshot or all")
        if self.precision not in ("auto", "fp32", "amp"):
            raise ConfigError(f"--precision {self.precision} is not supported", "use auto, fp32 or amp")
        if self.augment.views < 0 or self.batch_size < 1 or self.workers < 0:
            raise ConfigError("--aug-views, --batch-size and --workers must not be negative",
                              "e.g. --aug-views 10 --batch-size 64 --workers 4")


@dataclass
class ExtractSummary:
    dataset: str
    store: Path
    encoded: dict[str, int] = field(default_factory=dict)    # newly encoded images per split
    total: dict[str, int] = field(default_factory=dict)      # images with features per split
    text_updated: bool = False
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return sum(self.encoded.values()) / self.seconds if self.seconds else 0.0


def resolve_precision(precision: str, device: str) -> str:
    """What the forward runs in, as recorded in the store: fp32, amp-fp16 (CUDA autocast)
    or amp-bf16 (CPU autocast: only asked for, and only where the CPU has bf16 units)."""
    cuda = device.startswith("cuda")
    if precision == "fp32" or (precision == "auto" and not cuda):
        return "fp32"
    if cuda:
        return "amp-fp16"
    if not cpu_has_bf16():
        raise ConfigError("--precision amp on CPU needs bf16 hardware (AVX512-BF16 or AMX); this CPU has neither",
                          "use --precision fp32, the default on CPU")
    return "amp-bf16"


def store_identity(ds: DatasetSplits, model: LoadedModel | ModelRef, cfg: ExtractConfig,
                   precision: str) -> dict:
    """The identity attributes of the store. From a ModelRef (no model built) it lacks only
    ``preprocess``, which the built model reports."""
    identity = {
        "schema_version": st.SCHEMA_VERSION, "dataset": ds.name, **model.identity(),
        "split_sha256": ds.split_sha256, "dtype": cfg.dtype, "precision": precision,
        **cfg.augment.attrs(),
    }
    # lists are stored as JSON text in HDF5 attributes; compare them in that form
    return {k: st.json_attr(v) if isinstance(v, (list, dict)) else v for k, v in identity.items()}


def planned_items(ds: DatasetSplits, cfg: ExtractConfig) -> dict[str, list[int]]:
    """Item indices each split needs: val and test fully; train all, or the few-shot union."""
    plan = {"val": list(range(len(ds.val))), "test": list(range(len(ds.test)))}
    if cfg.train == "all":
        plan["train"] = list(range(len(ds.train)))
    else:
        labels = [it.label for it in ds.train]
        plan["train"] = needed_train_indices(labels, [it.label for it in ds.val], cfg.shots, cfg.seeds,
                                             holdout=cfg.holdout_val)
    return {s: plan[s] for s in SPLITS}


Work = list[tuple[str, int, Item]]   # (split, index in the split, item), in SPLITS order


class _ImageReader(torch.utils.data.Dataset):
    """Decodes work items in DataLoader workers (train items also get their augmented views);
    a bad file is reported, not raised, so the main process can name it cleanly (worker
    exceptions arrive as mangled tracebacks)."""

    def __init__(self, ds: DatasetSplits, work: Work, transform, views: AugmentedViews | None):
        self.root, self.work, self.transform, self.views = str(ds.image_root), work, transform, views

    def __len__(self) -> int:
        return len(self.work)

    def __getitem__(self, i: int):
        split, index, item = self.work[i]
        try:
            with Image.open(os.path.join(self.root, item.path)) as im:
                image = im.convert("RGB")
            clean = self.transform(image)
            aug = self.views(image, item.path) if self.views and split == "train" else torch.zeros(0)
            return split, index, clean, aug, ""
        except Exception as e:  # PIL raises many types for broken files
            return split, index, torch.zeros(0), torch.zeros(0), f"{type(e).__name__}: {e}"


def _collate(batch):
    """(split, indices, clean, aug or None, error or None) of a batch from one split. Indices
    travel as a numpy array (pickled): a tensor would cost a shared-memory file and a socket
    round trip to the worker per batch."""
    splits, indices, clean, aug, errors = zip(*batch)
    indices = np.asarray(indices, dtype=np.int64)
    for (index, err) in zip(indices, errors):
        if err:
            return splits[0], indices, None, None, (int(index), err)
    aug_t = torch.stack(aug) if aug[0].numel() else None
    return splits[0], indices, torch.stack(clean), aug_t, None


def _split_batches(work: Work, batch_size: int) -> list[list[int]]:
    """Positions in ``work`` grouped into batches that never mix splits."""
    batches: list[list[int]] = []
    for _, group in itertools.groupby(range(len(work)), key=lambda i: work[i][0]):
        positions = list(group)
        batches += [positions[j:j + batch_size] for j in range(0, len(positions), batch_size)]
    return batches


def image_reader(ds: DatasetSplits, todo: dict[str, list[int]], loaded: LoadedModel,
                 cfg: ExtractConfig) -> _ImageReader:
    """The planned items of every split, in SPLITS order, decoded the model's way."""
    work = [(s, i, ds.split(s)[i]) for s in SPLITS for i in todo.get(s, [])]
    views = AugmentedViews(cfg.augment, loaded.preprocess) if cfg.augment.views and todo.get("train") else None
    return _ImageReader(ds, work, loaded.val_transform, views)


class _EncodingCollate:
    """Collates a batch and encodes it, in the DataLoader worker (``CpuPlan.in_workers``)."""

    def __init__(self, loaded: LoadedModel, precision: str):
        self.loaded, self.precision = loaded, precision

    def __call__(self, batch):
        split, indices, clean, aug, error = _collate(batch)
        if error is not None:
            return split, indices, None, None, error
        return (split, indices, *_encode_batch(self.loaded, clean, aug, self.precision), None)


def image_loader(reader: _ImageReader, loaded: LoadedModel, cfg: ExtractConfig,
                 encode: str | None = None) -> torch.utils.data.DataLoader:
    """One DataLoader over all of ``reader``'s items: its workers start once and stay busy
    across split boundaries; batches never mix splits. Batches are (split, indices, clean
    images, augmented views or None, error or None). With ``encode`` (a precision) the workers
    also run the forward and batches carry features instead of images: forked, so each worker
    shares this process's model instead of unpickling a copy."""
    collate = _collate if encode is None else _EncodingCollate(loaded, encode)
    return torch.utils.data.DataLoader(
        reader, batch_sampler=_split_batches(reader.work, cfg.batch_size), num_workers=cfg.workers,
        collate_fn=collate, pin_memory=loaded.device.startswith("cuda"), persistent_workers=False,
        multiprocessing_context="fork" if encode is not None and cfg.workers else None)


def _encode_batch(loaded: LoadedModel, clean: torch.Tensor, aug: torch.Tensor | None, precision: str):
    """One forward over clean + augmented views: (B, D) and (B, V, D) or None."""
    if aug is None:
        return encode_images(loaded, clean, precision).cpu().numpy(), None
    b, v = aug.shape[:2]
    feats = encode_images(loaded, torch.cat([clean, aug.flatten(0, 1)]), precision).cpu().numpy()
    return feats[:b], feats[b:].reshape(b, v, -1)


def _encode_todo(ds: DatasetSplits, todo: dict[str, list[int]], loaded: LoadedModel, cfg: ExtractConfig,
                 path: Path, precision: str, progress: Progress | None) -> dict[str, int]:
    """Encode the planned items of every split, committing a part file per chunk of one split;
    returns the number of items encoded per split."""
    done = {s: 0 for s in SPLITS if todo.get(s)}
    if not done:
        return done
    reader = image_reader(ds, todo, loaded, cfg)
    plan = CpuPlan(loaded.device, cfg.workers)
    buffer: list[tuple] = []
    pending: Future | None = None
    try:
        plan.choose(loaded, reader, cfg.batch_size, precision)
        loader = image_loader(reader, loaded, cfg, encode=precision if plan.in_workers else None)
        with ThreadPoolExecutor(max_workers=1) as writer:   # HDF5 writes overlap the next batches
            for split, idx, clean, aug, error in loader:
                if error is not None:
                    raise CorruptImageError(
                        f"cannot decode {ds.image_root / ds.split(split)[error[0]].path}: {error[1]}",
                        "replace or delete the file (and its line in the split file), then rerun")
                if plan.in_workers:   # the batch already holds features
                    feats, aug_feats = clean, aug
                else:
                    feats, aug_feats = _encode_batch(loaded, clean, aug, precision)
                buffer.append((idx, feats, aug_feats))
                done[split] += len(idx)
                forwards = sum(len(b[0]) for b in buffer) * (1 + (0 if aug_feats is None else aug_feats.shape[1]))
                if forwards >= CHUNK_FORWARDS or done[split] == len(todo[split]):
                    if pending is not None:   # batches never mix splits, and a split's end flushes
                        pending.result()
                    pending = writer.submit(st.write_part, path, _to_chunk(split, buffer, cfg.dtype))
                    buffer = []
                if progress:
                    progress(split, done[split], len(todo[split]))
            if pending is not None:
                pending.result()
    finally:
        plan.close()
    return done


def _to_chunk(split: str, buffer: list[tuple], dtype: str) -> st.Chunk:
    aug = None if buffer[0][2] is None else np.concatenate([b[2] for b in buffer]).astype(dtype)
    return st.Chunk(split, np.concatenate([b[0] for b in buffer]),
                    np.concatenate([b[1] for b in buffer]).astype(dtype), aug)


def _check_parts_identity(path: Path, identity: dict, will_write: bool) -> None:
    """Parts left by a killed run must come from the same inputs as this run. The marker
    is written only when this run will write parts (a no-op rerun must not touch the store)."""
    marker = st.parts_dir(path) / "identity.json"
    if marker.exists():
        import json
        recorded = json.loads(marker.read_text())
        try:
            st.check_identity(path, recorded, identity)
        except StoreMismatchError as e:
            raise StoreMismatchError(e.message.replace(str(path), f"unfinished extraction {st.parts_dir(path)}"),
                                     f"rerun with the same options, or delete {st.parts_dir(path)}") from None
    elif will_write:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(st.json_attr(identity))


def extract_dataset(dataset: str, data_root: Path | None, loaded: LoadedModel, cfg: ExtractConfig = ExtractConfig(),
                    progress: Progress | None = None, dist: Dist = SINGLE) -> ExtractSummary:
    """Bring the store of ``dataset`` for ``loaded`` up to date with ``cfg``; return what was done.

    Under torchrun (``dist``), every rank encodes its shard of the work into part files and
    rank 0, which alone holds the writer lock, encodes the text and commits.
    """
    cfg.validate()
    start = time.perf_counter()
    ds = load_dataset(dataset, data_root)
    precision = resolve_precision(cfg.precision, loaded.device)
    identity = store_identity(ds, loaded, cfg, precision)
    path = st.store_path(cfg.cache_dir, loaded.model_id, loaded.weights_id, ds.name)
    templates = list(get_templates(cfg.templates, ds.name))
    summary = ExtractSummary(dataset=ds.name, store=path)
    with ExitStack() as held:
        on_main(dist, lambda: held.enter_context(st.writer_lock(path)))
        have, old_text = _store_state(path, identity, templates)
        staged = st.staged_indices(path)
        for split, done in staged.items():
            have[split] |= done
        todo = {s: [i for i in want if i not in have[s]] for s, want in planned_items(ds, cfg).items()}
        on_main(dist, lambda: _check_parts_identity(path, identity, will_write=any(todo.values())))
        check_images(ds, [ds.split(s)[i] for s in SPLITS for i in todo[s]])
        error = None
        try:
            mine = {s: shard(todo[s], dist) for s in SPLITS}
            encoded = _encode_todo(ds, mine, loaded, cfg, path, precision, progress)
        except Exception as e:  # e.g. a corrupt image in this rank's shard
            error, encoded = e, {}
        all_succeeded(error, dist)
        summary.encoded = {s: n for s in SPLITS if (n := sum_over_ranks(encoded.get(s, 0), dist))}
        summary.text_updated = old_text is None

        def finish() -> None:
            text = old_text if old_text is not None else _encode_text(loaded, templates, ds, progress)
            if summary.encoded or summary.text_updated or staged:
                st.commit(path, _contents(ds, loaded, cfg, identity, templates, text), cfg.dtype)

        on_main(dist, finish)
    with st.open_store(path) as s:
        summary.total = {split: int(len(s.encoded(split))) for split in s.splits}
    summary.seconds = time.perf_counter() - start
    return summary


def _store_state(path: Path, identity: dict, templates: list[str]):
    """(item indices with features per split, text features if the templates match) of the
    committed store; checks the store was built from the same inputs."""
    if not path.is_file():
        return {s: set() for s in SPLITS}, None
    with st.open_store(path) as old:
        st.check_identity(path, old.attrs, identity)
        have = {s: set(old.encoded(s).tolist()) for s in SPLITS}
        return have, (old.text_features() if old.templates == templates else None)


def _encode_text(loaded: LoadedModel, templates: list[str], ds: DatasetSplits,
                 progress: Progress | None) -> tuple[np.ndarray, np.ndarray]:
    if progress:
        progress("text", 0, len(templates))
    per_template, ensemble = encode_text(loaded, format_prompts(templates, ds.classnames))
    if progress:
        progress("text", len(templates), len(templates))
    return per_template.numpy(), ensemble.numpy()


def _contents(ds: DatasetSplits, loaded: LoadedModel, cfg: ExtractConfig, identity: dict,
              templates: list[str], text: tuple[np.ndarray, np.ndarray]) -> st.StoreContents:
    attrs = dict(identity)
    attrs.update({
        "split_source": ds.split_source, "image_root": str(ds.image_root), "templates_spec": cfg.templates,
        "logit_scale": loaded.logit_scale, "embed_dim": loaded.embed_dim,
        "checkpoint_path": loaded.checkpoint_path or "", "model_config_path": loaded.ref.config_path or "",
        **{f"{k}_version": v for k, v in versions().items()},
    })
    listings = {s: st.SplitListing([it.path for it in ds.split(s)], [it.label for it in ds.split(s)])
                for s in SPLITS}
    return st.StoreContents(attrs, ds.classnames, listings, templates, text[0], text[1])
