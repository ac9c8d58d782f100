"""The extract stage: dataset images and prompted class names -> a feature store.

``extract_dataset`` encodes only what the store lacks, in chunks that are each
committed on their own (see ``store``), so it is incremental and resumable.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cacheclip.common import file_stats, package_versions, write_atomic
from cacheclip.datasets.catalog import IMAGEFOLDER_PREFIX, SPLITS, DatasetSplits, check_images
from cacheclip.datasets.check import check_items
from cacheclip.datasets.fewshot import needed_train_indices
from cacheclip.datasets.layouts import load_dataset
from cacheclip.datasets.templates import ENSEMBLE, format_prompts, named_classifiers, store_templates
from cacheclip.errors import ConfigError, CorruptImageError, StoreMismatchError, require_writable_dir
from cacheclip.features import pipeline
from cacheclip.features import store as st
from cacheclip.features.augment import COOP_SCALE, AugmentConfig
from cacheclip.features.cpu_plan import CpuPlan
from cacheclip.features.distributed import SINGLE, Dist, all_succeeded, on_main, shard, sum_over_ranks
from cacheclip.features.freshness import changed_items
from cacheclip.features.models import LoadedModel, ModelRef, cpu_has_bf16, encode_text, prompt_ensemble
from cacheclip.features.preprocess import PROTOCOLS, with_protocol
from cacheclip.settings import check_bounds, setting

DEFAULT_SHOTS = (1, 2, 4, 8, 16)
MAX_AUG_VIEWS = 1000  # papers cache 10 (CoOp, Tip-Adapter) to 100; beyond this no store fits a disk
DEFAULT_SEEDS = (1, 2, 3)
CHUNK_FORWARDS = 2048  # image forwards per committed chunk: bounds the work a kill can lose

Progress = Callable[[str, int, int], None]  # (stage, done, total)


def default_workers() -> int:
    """Decoding processes by default: the cores this process may use, at most 4 (more workers
    than cores only contend; torch warns about it)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return min(4, cores)


@dataclass(frozen=True)
class ExtractConfig:
    """What to encode and how; every field that changes the bytes is recorded in the store."""

    cache_dir: str = setting("cache", "root of the feature stores", flag="--cache-dir")
    templates: str = setting(
        "default", "prompt template set (default, photo, imagenet7, imagenet80) or file", flag="--templates"
    )
    dtype: str = setting("float16", "stored feature dtype: float16 or float32", flag="--dtype")
    aug_views: int = setting(
        10, "augmented views cached per train image (0: none)", flag="--aug-views", most=MAX_AUG_VIEWS
    )
    aug_scale: tuple[float, float] = setting(
        COOP_SCALE, "RandomResizedCrop scale range (CoOp: 0.08,1)", flag="--aug-scale"
    )
    aug_seed: int = setting(0, "seed of the augmented views", flag="--aug-seed")
    train: str = setting("fewshot", "fewshot: the train images the planned runs need; all: every one", flag="--train")
    shots: tuple[int, ...] = setting(DEFAULT_SHOTS, "shots per class the planned runs use", flag="--shots")
    seeds: tuple[int, ...] = setting(DEFAULT_SEEDS, "few-shot sampling seeds the planned runs use", flag="--seeds")
    holdout_val: bool = False  # also encode the hold-out val of datasets without val
    batch_size: int = setting(64, "images per forward pass", flag="--batch-size")
    workers: int = setting(default_workers(), "image-decoding processes", flag="--workers")
    precision: str = setting("auto", "auto (amp on CUDA, fp32 on CPU), fp32 or amp", flag="--precision")
    preprocess: str = setting(
        "default", "default (shorter side + centre crop) or coop-2021 (CoOp before 9 Oct 2021)", flag="--preprocess"
    )

    @property
    def augment(self) -> AugmentConfig:
        return AugmentConfig(views=self.aug_views, scale=self.aug_scale, seed=self.aug_seed)

    def validate(self) -> None:
        check_bounds(self)  # every count within what can run (e.g. --aug-views 99999999999999999999)
        if self.dtype not in ("float16", "float32"):
            raise ConfigError(f"--dtype {self.dtype} is not supported", "use float16 or float32")
        if self.train not in ("fewshot", "all"):
            raise ConfigError(f"--train {self.train} is not supported", "use fewshot or all")
        if self.precision not in ("auto", "fp32", "amp"):
            raise ConfigError(f"--precision {self.precision} is not supported", "use auto, fp32 or amp")
        if any(not 0 <= seed < 2**31 for seed in (*self.seeds, self.aug_seed)):
            raise ConfigError("--seeds and --aug-seed must be in 0..2147483647", "e.g. --seeds 1,2,3 --aug-seed 0")
        if self.aug_views < 0 or self.batch_size < 1 or self.workers < 0:
            raise ConfigError(
                "--aug-views, --batch-size and --workers must not be negative",
                "e.g. --aug-views 10 --batch-size 64 --workers 4",
            )
        if not 0 < self.aug_scale[0] <= self.aug_scale[1] <= 1:
            raise ConfigError(
                f"--aug-scale {self.aug_scale} is not a crop scale range",
                "two numbers 0 < lo <= hi <= 1, e.g. --aug-scale 0.08,1",
            )
        if self.preprocess not in PROTOCOLS:
            raise ConfigError(f"--preprocess {self.preprocess} is not supported", f"use {' or '.join(PROTOCOLS)}")
        if self.preprocess == "coop-2021" and tuple(self.aug_scale) != tuple(COOP_SCALE):
            raise ConfigError(
                "--aug-scale does not apply to --preprocess coop-2021 (its views translate, they do not crop)",
                "leave --aug-scale out",
            )


@dataclass
class ExtractSummary:
    dataset: str
    store: Path
    encoded: dict[str, int] = field(default_factory=dict)  # newly encoded images per split
    total: dict[str, int] = field(default_factory=dict)  # images with features per split
    text_updated: bool = False
    seconds: float = 0.0
    changed: dict[str, int] = field(default_factory=dict)  # items re-encoded because their file changed
    notes: list[str] = field(default_factory=list)  # what was repaired on the way, for the user

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
        raise ConfigError(
            "--precision amp on CPU needs bf16 hardware (AVX512-BF16 or AMX); this CPU has neither",
            "use --precision fp32, the default on CPU",
        )
    return "amp-bf16"


def store_identity(ds: DatasetSplits, model: LoadedModel | ModelRef, cfg: ExtractConfig, precision: str) -> dict:
    """The identity attributes of the store. From a ModelRef (no model built) it lacks only
    ``preprocess``, which the built model reports."""
    identity = {
        "schema_version": st.SCHEMA_VERSION,
        "dataset": ds.name,
        **model.identity(),
        "split_sha256": ds.split_sha256,
        "dtype": cfg.dtype,
        "precision": precision,
        **cfg.augment.attrs(),
    }
    if "preprocess" in identity:  # the protocol is part of it, so the two never mix in one store
        identity["preprocess"] = with_protocol(identity["preprocess"], cfg.preprocess)
    # lists are stored as JSON text in HDF5 attributes; compare them in that form
    return {k: st.json_attr(v) if isinstance(v, (list, dict)) else v for k, v in identity.items()}


def planned_items(ds: DatasetSplits, cfg: ExtractConfig) -> dict[str, list[int]]:
    """Item indices each split needs: val and test fully; train all, or the few-shot union."""
    plan = {"val": list(range(len(ds.val))), "test": list(range(len(ds.test)))}
    if cfg.train == "all":
        plan["train"] = list(range(len(ds.train)))
    else:
        labels = [it.label for it in ds.train]
        plan["train"] = needed_train_indices(
            labels, [it.label for it in ds.val], cfg.shots, cfg.seeds, holdout=cfg.holdout_val
        )
    return {s: plan[s] for s in SPLITS}


def _encode_todo(
    ds: DatasetSplits,
    todo: dict[str, list[int]],
    loaded: LoadedModel,
    cfg: ExtractConfig,
    path: Path,
    precision: str,
    progress: Progress | None,
) -> dict[str, int]:
    """Encode the planned items of every split, committing a part file per chunk of one split;
    returns the number of items encoded per split."""
    done = {s: 0 for s in SPLITS if todo.get(s)}
    if not done:
        return done
    reader = pipeline.image_reader(ds, todo, loaded, cfg.augment, cfg.preprocess)
    plan = CpuPlan(loaded.device, cfg.workers)
    buffer: list[tuple] = []
    pending: Future | None = None
    try:
        plan.choose(loaded, reader, cfg.batch_size, precision)
        loader = pipeline.image_loader(
            reader, loaded, cfg.batch_size, cfg.workers, encode=precision if plan.in_workers else None
        )
        with ThreadPoolExecutor(max_workers=1) as writer:  # HDF5 writes overlap the next batches
            for split, idx, clean, aug, error in loader:
                if error is not None:
                    raise CorruptImageError(
                        f"cannot decode {ds.image_root / ds.split(split)[error[0]].path}: {error[1]}",
                        "replace or delete the file (and its line in the split file), then rerun",
                    )
                if plan.in_workers:  # the batch already holds features
                    feats, aug_feats = clean, aug
                else:
                    feats, aug_feats = pipeline.encode_batch(loaded, clean, aug, precision)
                buffer.append((idx, feats, aug_feats))
                done[split] += len(idx)
                forwards = sum(len(b[0]) for b in buffer) * (1 + (0 if aug_feats is None else aug_feats.shape[1]))
                if forwards >= CHUNK_FORWARDS or done[split] == len(todo[split]):
                    if pending is not None:  # batches never mix splits, and a split's end flushes
                        pending.result()
                    chunk = _to_chunk(ds, split, buffer, cfg.dtype)
                    pending = writer.submit(st.write_part, path, chunk)
                    buffer = []
                if progress:
                    progress(split, done[split], len(todo[split]))
            if pending is not None:
                pending.result()
    finally:
        plan.close()
    return done


def _to_chunk(ds: DatasetSplits, split: str, buffer: list[tuple], dtype: str) -> st.Chunk:
    """The buffered batches as one chunk, with the size and mtime of each file just read."""
    aug = None if buffer[0][2] is None else np.concatenate([b[2] for b in buffer]).astype(dtype)
    indices = np.concatenate([b[0] for b in buffer])
    items = ds.split(split)
    stats = np.frombuffer(file_stats(ds.image_root, [items[i].path for i in indices]), np.int64).reshape(-1, 2)
    return st.Chunk(split, indices, np.concatenate([b[1] for b in buffer]).astype(dtype), aug, stats)


def _check_parts_identity(path: Path, identity: dict, notes: list[str]) -> None:
    """Parts left by a killed run must come from the same inputs as this run.
    An unreadable marker (a full disk while an older version wrote it) leaves the parts'
    inputs unknown: they are removed (only a cache) and their items encoded again."""
    marker = st.parts_dir(path) / "identity.json"
    recorded = _read_marker(marker)
    if recorded is None and marker.exists():
        count = len(list(st.parts_dir(path).glob("*.h5")))
        shutil.rmtree(st.parts_dir(path))
        notes.append(
            f"{marker} was unreadable: its {count} chunks of unknown inputs were removed and are encoded again"
        )
    if recorded is not None:
        try:
            st.check_identity(path, recorded, identity)
        except StoreMismatchError as e:
            raise StoreMismatchError(
                e.message.replace(str(path), f"unfinished extraction {st.parts_dir(path)}"),
                f"rerun with the same options, or delete {st.parts_dir(path)}",
            ) from None


def _mark_parts_identity(path: Path, identity: dict) -> None:
    """Record the inputs of the parts this run is about to write (checked by the next run
    if this one is killed); only then: a no-op rerun must not touch the store."""
    marker = st.parts_dir(path) / "identity.json"
    if not marker.exists():
        write_atomic(marker, st.json_attr(identity))


def _read_marker(marker: Path) -> dict | None:
    try:
        recorded = json.loads(marker.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) else None


def extract_dataset(
    dataset: str,
    data_root: Path | None,
    loaded: LoadedModel,
    cfg: ExtractConfig = ExtractConfig(),
    progress: Progress | None = None,
    dist: Dist = SINGLE,
) -> ExtractSummary:
    """Bring the store of ``dataset`` for ``loaded`` up to date with ``cfg``; return what was done.

    Under torchrun (``dist``), every rank encodes its shard of the work into part files and
    rank 0, which alone holds the writer lock, encodes the text and commits.
    """
    cfg.validate()
    require_writable_dir(cfg.cache_dir, "--cache-dir")
    start = time.perf_counter()
    ds = load_dataset(dataset, data_root)
    precision = resolve_precision(cfg.precision, loaded.device)
    identity = store_identity(ds, loaded, cfg, precision)
    path = st.store_path(cfg.cache_dir, loaded.model_id, loaded.weights_id, ds.name)
    templates = list(store_templates(cfg.templates, ds.name))
    summary = ExtractSummary(dataset=ds.name, store=path)
    with ExitStack() as held:
        on_main(dist, lambda: held.enter_context(st.writer_lock(path)))
        have, old_text, changed = _store_state(path, identity, templates, ds)
        summary.changed = {s: len(v) for s, v in changed.items() if v}
        on_main(dist, lambda: _check_parts_identity(path, identity, summary.notes))
        on_main(dist, lambda: summary.notes.extend(st.set_aside_damaged_parts(path)))
        staged = st.staged_indices(path)
        for split, done in staged.items():
            have[split] |= done
        todo = items_to_encode(ds, cfg, have)
        if any(todo.values()):
            on_main(dist, lambda: _mark_parts_identity(path, identity))
        planned = [ds.split(s)[i] for s in SPLITS for i in todo[s]]
        check_images(ds, planned)  # missing files, FIFOs and other non-files, named
        check_items(ds, planned)  # and every header decodes: fail before any encoding
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
            upgrade = st.older_schema(path)  # rewritten at the current schema (its attribute digest)
            if summary.encoded or summary.text_updated or staged or st.parts_dir(path).exists() or upgrade:
                st.commit(path, _contents(ds, loaded, cfg, identity, templates, text), cfg.dtype)

        on_main(dist, finish)
    with st.open_store(path) as s:
        summary.total = {split: int(len(s.encoded(split))) for split in s.splits}
    summary.seconds = time.perf_counter() - start
    return summary


def items_to_encode(ds: DatasetSplits, cfg: ExtractConfig, have: dict[str, set[int]]) -> dict[str, list[int]]:
    """Per split, the planned items (``planned_items``) that have no features in ``have`` yet:
    what extraction still has to encode (the batch's dry run asks the same)."""
    return {s: [i for i in want if i not in have.get(s, ())] for s, want in planned_items(ds, cfg).items()}


def _store_state(path: Path, identity: dict, templates: list[str], ds: DatasetSplits):
    """(item indices with current features per split, text features if the templates match,
    items whose file changed since encoding) of the committed store; checks the store was
    built from the same inputs."""
    if not path.is_file():
        return {s: set() for s in SPLITS}, None, {}
    with st.open_store(path) as old:
        st.check_identity(path, old.attrs, identity)
        changed = changed_items(old, ds)
        have = {s: set(old.encoded(s).tolist()) - set(changed.get(s, ())) for s in SPLITS}
        return have, (old.text_features() if old.templates == templates else None), changed


def _encode_text(
    loaded: LoadedModel, templates: list[str], ds: DatasetSplits, progress: Progress | None
) -> tuple[np.ndarray, np.ndarray]:
    if progress:
        progress("text", 0, len(templates))
    per_template, ensemble = encode_text(loaded, format_prompts(templates, ds.classnames))
    if progress:
        progress("text", len(templates), len(templates))
    return per_template.numpy(), ensemble.numpy()


def source_attrs(ds: DatasetSplits) -> dict[str, str]:
    """Where to read the dataset again (fit compares the split and the files with the store)."""
    if ds.name.startswith("imagefolder-"):
        return {"dataset_source": f"{IMAGEFOLDER_PREFIX}{ds.image_root.resolve()}", "data_root": ""}
    return {"dataset_source": ds.name, "data_root": str(ds.root.parent)}


def _contents(
    ds: DatasetSplits,
    loaded: LoadedModel,
    cfg: ExtractConfig,
    identity: dict,
    templates: list[str],
    text: tuple[np.ndarray, np.ndarray],
) -> st.StoreContents:
    attrs = dict(identity)
    attrs.update(
        {
            "split_source": ds.split_source,
            "image_root": str(ds.image_root),
            **source_attrs(ds),
            "templates_spec": cfg.templates,
            "preprocess_protocol": cfg.preprocess,
            "logit_scale": loaded.logit_scale,
            "embed_dim": loaded.embed_dim,
            "checkpoint_path": loaded.checkpoint_path or "",
            "state_sha256": loaded.state_sha256,
            "model_config_path": loaded.ref.config_path or "",
            **{f"{k}_version": v for k, v in package_versions().items() if k in ("open_clip", "torch")},
        }
    )
    listings = {s: st.SplitListing([it.path for it in ds.split(s)], [it.label for it in ds.split(s)]) for s in SPLITS}
    classifiers = named_classifiers(templates, ds.name, cfg.templates)
    per_template, ensemble = text
    if cfg.templates == "default" and ENSEMBLE in classifiers:  # ImageNet: the 7, not all 8 templates
        ensemble = prompt_ensemble(torch.from_numpy(per_template[classifiers[ENSEMBLE]])).numpy()
    return st.StoreContents(
        attrs, ds.classnames, listings, templates, per_template, ensemble, ds.class_ids, classifiers
    )
