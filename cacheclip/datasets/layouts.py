"""Readers for the split formats: CoOp JSON, ImageNet folders, ImageNet's shift sets (V2,
Sketch, A, R: test only), FGVC-Aircraft txt (image folders: ``imagefolder``), and
``load_dataset``, which picks the reader by name.

Each registered loader takes ``(spec, dataset folder)`` and returns a ``DatasetSplits``
whose ``split_sha256`` covers every file that defines the split, so a feature store
can tell when a split changed. No image is opened here.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Callable
from pathlib import Path

from cacheclip.common import IMAGE_SUFFIXES
from cacheclip.datasets.catalog import (
    COOP_DATASETS_MD,
    DATA_ENV,
    IMAGEFOLDER_PREFIX,
    SPLITS,
    DatasetSpec,
    DatasetSplits,
    Item,
    expected_layout,
    get_dataset_spec,
    imagefolder_path,
    resolve_data_root,
    resolve_name,
)
from cacheclip.datasets.imagefolder import load_imagefolder
from cacheclip.datasets.listing import files_in, sha256_files, subdirs
from cacheclip.errors import DatasetLayoutError, UnknownNameError


def _classnames(splits: dict[str, list[Item]], source: str) -> tuple[str, ...]:
    """label -> classname from the items of all splits; must agree and cover 0..K-1."""
    names: dict[int, str] = {}
    for split, items in splits.items():
        for it in items:
            known = names.setdefault(it.label, it.classname)
            if known != it.classname:
                raise DatasetLayoutError(
                    f"{source}: label {it.label} is called both '{known}' and '{it.classname}' "
                    f"({split} item {it.path})",
                    f"every item with one label must carry the same class name; re-download {source}",
                )
    if not names:
        raise DatasetLayoutError(f"{source} lists no items", f"re-download {source}")
    gaps = sorted(set(range(max(names) + 1)) - set(names))
    if gaps:
        top = max(names)
        holder = next((split, it.path) for split, items in splits.items() for it in items if it.label == top)
        raise DatasetLayoutError(
            f"{source}: labels must be 0..K-1 but {', '.join(map(str, gaps[:5]))} never appear "
            f"(the largest label, {top}, is held by {holder[0]} item {holder[1]})",
            f"labels must be contiguous from 0; re-download {source}",
        )
    return tuple(names[i] for i in range(len(names)))


def _read_text(path: Path, spec: DatasetSpec, folder: Path, hint: str) -> bytes:
    if not path.is_file():
        raise DatasetLayoutError(f"{spec.name}: {path} not found; {expected_layout(spec, folder)}", hint)
    return path.read_bytes()


def _image_root(spec: DatasetSpec, folder: Path) -> Path:
    return folder / spec.image_root if spec.image_root else folder


def _check_inside_root(path: str, source: str, where: str) -> None:
    """Refuse a split-file path that leaves the image root: absolute, or with more ``..``
    than folders above it (checked on the text: a link inside the root may point anywhere)."""
    normal = posixpath.normpath(path.replace("\\", "/"))
    if "\0" in path or posixpath.isabs(normal) or normal == ".." or normal.startswith("../") or not path.strip():
        raise DatasetLayoutError(
            f"{source}: {where} has the path {path!r}, which is not inside the image root",
            f"paths in {source} must be relative to the image root and stay inside it; fix or re-download {source}",
        )


# --------------------------------------------------------------------------- CoOp JSON


def _parse_split_json(obj: object, source: str) -> dict[str, list[Item]]:
    """Validate ``{"train": [[path, label, classname], ...], "val": ..., "test": ...}``."""
    hint = f"re-download {source} (links in CoOp's DATASETS.md: {COOP_DATASETS_MD})"
    if not isinstance(obj, dict):
        raise DatasetLayoutError(f"{source}: expected a JSON object with keys {', '.join(SPLITS)}", hint)
    out: dict[str, list[Item]] = {}
    for split in SPLITS:
        rows = obj.get(split)
        if not isinstance(rows, list):
            raise DatasetLayoutError(f"{source}: missing list '{split}'", hint)
        items = []
        for i, row in enumerate(rows):
            ok = (
                isinstance(row, list)
                and len(row) == 3
                and isinstance(row[0], str)
                and type(row[1]) is int
                and row[1] >= 0
                and isinstance(row[2], str)
            )
            if not ok:
                raise DatasetLayoutError(
                    f"{source}: {split} item {i} is not [path, label >= 0, classname]: {row!r:.80}", hint
                )
            _check_inside_root(row[0], source, f"{split} item {i}")
            items.append(Item(row[0], row[1], row[2]))
        out[split] = items
    return out


def load_json_split(spec: DatasetSpec, folder: Path) -> DatasetSplits:
    """A CoOp ``split_zhou_*.json``; split_sha256 is the plain sha256 of the file."""
    path = folder / spec.split_file
    if not path.is_file():
        raise DatasetLayoutError(
            f"{spec.name}: split file {path} not found",
            f"download {spec.split_file} into {folder} (links in CoOp's DATASETS.md: {COOP_DATASETS_MD})",
        )
    data = path.read_bytes()
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        detail = (
            f"{err.msg} at line {err.lineno}, column {err.colno}"
            if isinstance(err, json.JSONDecodeError)
            else "nested too deeply"
            if isinstance(err, RecursionError)
            else str(err)
        )
        raise DatasetLayoutError(
            f"{spec.name}: split file {path} is not valid JSON ({detail})",
            f"re-download {spec.split_file}; the file may be truncated (CoOp's DATASETS.md)",
        ) from None
    splits = _parse_split_json(obj, spec.split_file)
    return DatasetSplits(
        name=spec.name,
        root=folder,
        image_root=_image_root(spec, folder),
        classnames=_classnames(splits, spec.split_file),
        train=tuple(splits["train"]),
        val=tuple(splits["val"]),
        test=tuple(splits["test"]),
        split_sha256=hashlib.sha256(data).hexdigest(),
        split_source=spec.split_file,
    )


# --------------------------------------------------------------------------- ImageNet


def _read_wnid_names(data: bytes, source: str) -> dict[str, str]:
    """Lines ``<wnid> <name words>`` -> {wnid: name}."""
    names: dict[str, str] = {}
    for n, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        wnid, _, name = line.strip().partition(" ")
        if not wnid:
            continue
        if not name.strip():
            raise DatasetLayoutError(
                f"{source} line {n}: expected '<wnid> <class name>', got {line!r:.60}",
                "re-download classnames.txt (linked in CoOp's DATASETS.md, ImageNet section)",
            )
        names[wnid] = name.strip()
    return names


def load_imagenet(spec: DatasetSpec, folder: Path) -> DatasetSplits:
    """ImageNet from ``images/{train,val}/<wnid>/`` plus ``classnames.txt``.

    Labels follow the sorted wnid folder names; test is the official val set and
    there is no few-shot val. CoOp lists each class folder with an unsorted
    ``os.listdir`` (so its item order depends on the filesystem); we sort the file
    names so the order, and hence few-shot sampling, is reproducible everywhere.
    split_sha256 covers classnames.txt and the sorted listing of both folders.
    """
    cls_path = folder / "classnames.txt"
    cls_bytes = _read_text(
        cls_path,
        spec,
        folder,
        f"put classnames.txt (linked in CoOp's DATASETS.md, ImageNet section) into {folder}",
    )
    wnid_names = _read_wnid_names(cls_bytes, "classnames.txt")
    image_root = _image_root(spec, folder)
    wnids: dict[str, list[str]] = {}
    for split in ("train", "val"):
        split_dir = image_root / split
        if not split_dir.is_dir():
            raise DatasetLayoutError(
                f"imagenet: {split_dir} not found; {expected_layout(spec, folder)}",
                "extract the ImageNet train and val images into class folders named by wnid (CoOp's DATASETS.md)",
            )
        wnids[split] = subdirs(split_dir)
    if not wnids["train"] or wnids["train"] != wnids["val"]:
        only = sorted(set(wnids["train"]) ^ set(wnids["val"]))[:3]
        raise DatasetLayoutError(
            f"imagenet: train/ and val/ must hold the same non-empty set of wnid folders "
            f"({len(wnids['train'])} vs {len(wnids['val'])}; e.g. {', '.join(only) or 'none'})",
            "val images must be sorted into wnid folders like train (CoOp's DATASETS.md)",
        )
    unnamed = [w for w in wnids["train"] if w not in wnid_names]
    if unnamed:
        raise DatasetLayoutError(
            f"imagenet: {len(unnamed)} wnid folders have no line in classnames.txt, e.g. {', '.join(unnamed[:3])}",
            "use the classnames.txt linked in CoOp's DATASETS.md",
        )
    splits: dict[str, list[Item]] = {}
    for split in ("train", "val"):
        items = []
        for label, wnid in enumerate(wnids["train"]):
            name = wnid_names[wnid]
            for fname in files_in(image_root / split / wnid):
                items.append(Item(f"{split}/{wnid}/{fname}", label, name))
        splits[split] = items
    listing = "\n".join(it.path for split in ("train", "val") for it in splits[split]).encode()
    return DatasetSplits(
        name=spec.name,
        root=folder,
        image_root=image_root,
        classnames=tuple(wnid_names[w] for w in wnids["train"]),
        train=tuple(splits["train"]),
        val=(),
        test=tuple(splits["val"]),
        split_sha256=sha256_files([("classnames.txt", cls_bytes), ("listing", listing)]),
        split_source="classnames.txt + images/{train,val}/<wnid>/ listing",
        class_ids=tuple(wnids["train"]),
    )


# --------------------------------------------------------------------------- ImageNet shift sets


def _imagenet_classes(spec: DatasetSpec, folder: Path) -> tuple[bytes, dict[str, str]]:
    """(bytes, {wnid: name} in ImageNet's class order) of the set's copy of classnames.txt."""
    data = _read_text(
        folder / "classnames.txt",
        spec,
        folder,
        f"copy ImageNet's classnames.txt (linked in CoOp's DATASETS.md) into {folder}",
    )
    return data, _read_wnid_names(data, f"{spec.folder}/classnames.txt")


def _class_folders(spec: DatasetSpec, folder: Path) -> tuple[Path, list[str]]:
    image_root = _image_root(spec, folder)
    if not image_root.is_dir():
        raise DatasetLayoutError(
            f"{spec.name}: {image_root} not found; {expected_layout(spec, folder)}",
            f"extract {spec.name} into {folder} as in CoOp's DATASETS.md ({COOP_DATASETS_MD})",
        )
    return image_root, subdirs(image_root)  # folders only: A's and R's README.txt is skipped


def _test_only(
    spec: DatasetSpec, folder: Path, wnid_names: dict[str, str], labels: list[str], items: list[Item], raw: bytes
) -> DatasetSplits:
    """A test-only split: class ``i`` is wnid ``labels[i]``; the hash covers classnames.txt and
    every (path, label) pair, so a moved image or another class order changes it."""
    if not items:
        raise DatasetLayoutError(
            f"{spec.name}: no images under {_image_root(spec, folder)}; {expected_layout(spec, folder)}",
            f"extract {spec.name} into {folder} as in CoOp's DATASETS.md ({COOP_DATASETS_MD})",
        )
    listing = "\n".join(f"{it.path}\t{it.label}" for it in items).encode()
    return DatasetSplits(
        name=spec.name,
        root=folder,
        image_root=_image_root(spec, folder),
        classnames=tuple(wnid_names[w] for w in labels),
        train=(),
        val=(),
        test=tuple(items),
        split_sha256=sha256_files([("classnames.txt", raw), ("listing", listing)]),
        split_source=f"classnames.txt + {spec.layout[0].split('/')[0]}/ listing",
        class_ids=tuple(labels),
    )


def load_imagenet_v2(spec: DatasetSpec, folder: Path) -> DatasetSplits:
    """ImageNet-V2 (matched frequency): folder ``<i>`` holds class ``i`` of ImageNet's order.

    The label is the integer, never the position in a sorted listing (which puts '10' before
    '2'); all classes of classnames.txt are kept, so the labels are ImageNet's.
    """
    raw, wnid_names = _imagenet_classes(spec, folder)
    wnids = list(wnid_names)
    image_root, names = _class_folders(spec, folder)
    bad = [n for n in names if not (n.isdecimal() and str(int(n)) == n and int(n) < len(wnids))]
    if bad:
        raise DatasetLayoutError(
            f"{spec.name}: class folders must be ImageNet class indices 0..{len(wnids) - 1}, got {', '.join(bad[:3])}",
            f"use the matched-frequency release unchanged ({expected_layout(spec, folder)})",
        )
    have = set(names)
    _require_every_class(spec, [str(i) for i in range(len(wnids)) if str(i) not in have], len(wnids))
    items = [
        Item(f"{n}/{f}", int(n), wnid_names[wnids[int(n)]])
        for n in sorted(names, key=int)
        for f in files_in(image_root / n, IMAGE_SUFFIXES)
    ]
    return _test_only(spec, folder, wnid_names, wnids, items, raw)


def load_imagenet_wnids(spec: DatasetSpec, folder: Path) -> DatasetSplits:
    """A shift set in ``<wnid>/`` folders. Labels follow ImageNet's class order (classnames.txt)
    restricted to the wnids present; loader "imagenet-wnids" (Sketch) requires every class,
    "imagenet-wnid-subset" (A, R: 200 classes) takes those present."""
    raw, wnid_names = _imagenet_classes(spec, folder)
    image_root, found = _class_folders(spec, folder)
    unknown = [w for w in found if w not in wnid_names]
    if unknown:
        raise DatasetLayoutError(
            f"{spec.name}: {len(unknown)} class folders have no line in classnames.txt, e.g. {', '.join(unknown[:3])}",
            "copy ImageNet's classnames.txt (CoOp's DATASETS.md) into the dataset folder",
        )
    present = set(found)
    if spec.loader == "imagenet-wnids":
        _require_every_class(spec, [w for w in wnid_names if w not in present], len(wnid_names))
    labels = [w for w in wnid_names if w in present]  # ImageNet order, not folder order
    items = [
        Item(f"{w}/{f}", label, wnid_names[w])
        for label, w in enumerate(labels)
        for f in files_in(image_root / w, IMAGE_SUFFIXES)
    ]
    return _test_only(spec, folder, wnid_names, labels, items, raw)


def _require_every_class(spec: DatasetSpec, missing: list[str], total: int) -> None:
    """A partial download would silently shrink the label space: refuse it."""
    if missing:
        raise DatasetLayoutError(
            f"{spec.name}: {len(missing)} of the {total} classes of classnames.txt have no class folder, "
            f"e.g. {', '.join(missing[:3])}",
            f"re-extract {spec.name} completely (CoOp's DATASETS.md: {COOP_DATASETS_MD})",
        )


# --------------------------------------------------------------------------- FGVC-Aircraft


def load_fgvc(spec: DatasetSpec, folder: Path) -> DatasetSplits:
    """FGVC-Aircraft: ``variants.txt`` gives the class order, ``images_variant_<split>.txt``
    lines ``<image id> <variant name>`` (names may hold spaces and slashes: "F-16A/B"),
    images at ``images/<id>.jpg``; all these files sit in the dataset folder.
    """
    hint = f"extract fgvc-aircraft-2013b.tar.gz and move its data/ folder to {folder} (CoOp's DATASETS.md)"
    names = ["variants.txt"] + [f"images_variant_{s}.txt" for s in SPLITS]
    raw = {n: _read_text(folder / n, spec, folder, hint) for n in names}
    variants = [v.strip() for v in raw["variants.txt"].decode("utf-8").splitlines() if v.strip()]
    label_of = {v: i for i, v in enumerate(variants)}
    if len(label_of) != len(variants):
        raise DatasetLayoutError("fgvc_aircraft: variants.txt lists a variant twice", hint)
    splits: dict[str, list[Item]] = {}
    for split in SPLITS:
        source = f"images_variant_{split}.txt"
        items = []
        for n, line in enumerate(raw[source].decode("utf-8").splitlines(), start=1):
            image_id, _, variant = line.strip().partition(" ")
            if not image_id:
                continue
            if variant not in label_of:
                raise DatasetLayoutError(
                    f"fgvc_aircraft: {source} line {n}: variant '{variant}' is not in variants.txt",
                    hint,
                )
            _check_inside_root(f"{image_id}.jpg", source, f"line {n}")
            items.append(Item(f"{image_id}.jpg", label_of[variant], variant))
        splits[split] = items
    return DatasetSplits(
        name=spec.name,
        root=folder,
        image_root=_image_root(spec, folder),
        classnames=tuple(variants),
        train=tuple(splits["train"]),
        val=tuple(splits["val"]),
        test=tuple(splits["test"]),
        split_sha256=sha256_files((n, raw[n]) for n in names),
        split_source="variants.txt + images_variant_{train,val,test}.txt",
    )


LOADERS: dict[str, Callable[[DatasetSpec, Path], DatasetSplits]] = {
    "json": load_json_split,
    "imagenet": load_imagenet,
    "fgvc": load_fgvc,
    "imagenet-v2": load_imagenet_v2,
    "imagenet-wnids": load_imagenet_wnids,
    "imagenet-wnid-subset": load_imagenet_wnids,
}


# --------------------------------------------------------------------------- by name


def load_dataset(name: str, data_root: Path | None) -> DatasetSplits:
    """Read the splits of dataset ``name`` under ``data_root`` (None: $CACHECLIP_DATA).

    Images are not opened; call ``check_images`` to verify they exist.
    'imagefolder:<path>' ignores ``data_root``.
    """
    canonical = resolve_name(name)
    if canonical.startswith(IMAGEFOLDER_PREFIX):
        return _refuse_empty_splits(load_imagefolder(imagefolder_path(canonical)), ("train", "test"))
    spec = get_dataset_spec(canonical)
    root = resolve_data_root(data_root)
    folder = root / spec.folder
    if not folder.is_dir():
        raise DatasetLayoutError(
            f"{spec.name}: dataset folder {folder} not found; {expected_layout(spec, folder)}",
            f"put {spec.folder}/ under {root} as in CoOp's DATASETS.md ({COOP_DATASETS_MD}), "
            f"or point --root / ${DATA_ENV} at the folder that holds it",
        )
    try:
        loader = LOADERS[spec.loader]
    except KeyError:
        raise UnknownNameError(
            f"{spec.name}: unknown loader '{spec.loader}'. Available: {', '.join(LOADERS)}",
            "fix the loader field of the registered DatasetSpec",
        ) from None
    return _refuse_empty_splits(loader(spec, folder), ("test",) if spec.shift_of else ("train", "test"))


def _refuse_empty_splits(ds: DatasetSplits, needed: tuple[str, ...]) -> DatasetSplits:
    """Every split a command reads (train to fit, test to score; a shift set: test) must list
    items: an empty one is refused when the dataset is read, by `extract` and `data check`, not
    met later as an error inside a fit. Val may be empty (ImageNet has none)."""
    for split in needed:
        if not ds.split(split):
            use = "fit trains on" if split == "train" else "every score is computed on"
            raise DatasetLayoutError(
                f"{ds.name}: the {split} split ({ds.split_source}) lists no items; {split} images are what {use}",
                f"fix or re-download {ds.split_source}; `cacheclip data check {ds.name}` checks the layout",
            )
    return ds
