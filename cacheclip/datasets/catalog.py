"""Dataset names, on-disk layouts and split files (no torch, no open_clip).

The 11 CoOp few-shot datasets live under one data root in the folder layout of
CoOp's DATASETS.md (https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md).
A dataset is described by a ``DatasetSpec`` in one registry dict; loading it
gives a ``DatasetSplits``: class names and train/val/test item lists with paths
relative to the image root, plus a hash of the files that define the split.

Readers for the split formats, and ``load_dataset``, live in ``cacheclip.datasets.layouts``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cacheclip.errors import ConfigError, DatasetLayoutError, MissingImagesError, UnknownNameError

SPLITS = ("train", "val", "test")
DATA_ENV = "CACHECLIP_DATA"  # environment variable read when no --root is given
COOP_DATASETS_MD = "https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md"
IMAGEFOLDER_PREFIX = "imagefolder:"


@dataclass(frozen=True, slots=True)
class Item:
    path: str  # posix path relative to DatasetSplits.image_root, exactly as in the split file
    label: int  # 0-based
    classname: str  # readable name, as in the split file


@dataclass(frozen=True)
class DatasetSplits:
    name: str  # canonical name, e.g. "eurosat"; imagefolder: "imagefolder-<folder name>"
    root: Path  # the dataset folder, e.g. <data root>/eurosat
    image_root: Path  # what Item.path is relative to, e.g. <data root>/eurosat/2750
    classnames: tuple[str, ...]  # index = label
    train: tuple[Item, ...]
    val: tuple[Item, ...]  # empty for imagenet (no few-shot val in CoOp)
    test: tuple[Item, ...]
    split_sha256: str  # sha256 over the bytes of every file that defines the split
    split_source: str  # human description, e.g. "split_zhou_EuroSAT.json"
    class_ids: tuple[str, ...] = ()  # ImageNet family: each label's wnid (matches a shift set's classes to ImageNet's)

    def split(self, name: str) -> tuple[Item, ...]:
        """The items of split ``name`` ("train", "val" or "test")."""
        if name not in SPLITS:
            raise UnknownNameError(
                f"unknown split '{name}'. Available: {', '.join(SPLITS)}",
                f"use one of {', '.join(SPLITS)}",
            )
        return getattr(self, name)

    @property
    def has_val(self) -> bool:
        return len(self.val) > 0


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class DatasetSpec:
    name: str  # canonical name, e.g. "eurosat"
    folder: str  # folder under the data root (CoOp's folder name), e.g. "eurosat"
    image_root: str  # image folder relative to `folder`; "" means `folder` itself
    loader: str = "json"  # split format: "json", "imagenet" or "fgvc" (keys of dataset_loaders.LOADERS)
    split_file: str = ""  # for loader "json": the split file inside `folder`
    layout: tuple[str, ...] = ()  # expected paths relative to `folder`, shown in errors
    template_key: str = ""  # key of templates.DATASET_TEMPLATES; "" means `name`
    aliases: tuple[str, ...] = ()  # other accepted spellings (matched case/punctuation-insensitively)
    shift_of: str = ""  # test-only distribution-shift sets: the dataset whose classifier they test, e.g. "imagenet"


_REGISTRY: dict[str, DatasetSpec] = {}  # canonical name -> spec, in registration order
_ALIASES: dict[str, str] = {}  # normalised spelling -> canonical name


def _norm(name: str) -> str:
    """Lower-case and drop everything but letters and digits: 'Euro_SAT' -> 'eurosat'."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def register_dataset(spec: DatasetSpec, *, overwrite: bool = False) -> DatasetSpec:
    """Add ``spec`` to the registry; its name, folder and aliases become accepted names."""
    keys = {_norm(spec.name), _norm(spec.folder), *(_norm(a) for a in spec.aliases)}
    if not overwrite:
        for key in keys:
            owner = _ALIASES.get(key)
            if owner is not None and owner != spec.name:
                raise ConfigError(
                    f"dataset name '{key}' is already used by '{owner}'",
                    "choose another name or alias, or pass overwrite=True",
                )
        if spec.name in _REGISTRY:
            raise ConfigError(
                f"dataset '{spec.name}' is already registered",
                "choose another name, or pass overwrite=True to replace it",
            )
    _REGISTRY[spec.name] = spec
    for key in keys:
        _ALIASES[key] = spec.name
    return spec


def unregister_dataset(name: str) -> None:
    """Remove a registered dataset and the names that point at it (e.g. to undo a plugin's entry)."""
    canonical = resolve_name(name)
    _REGISTRY.pop(canonical)
    for key in [k for k, owner in _ALIASES.items() if owner == canonical]:
        del _ALIASES[key]


def _json_spec(name, folder, image_root, split_file, pattern, aliases) -> DatasetSpec:
    image_dir = f"{image_root}/" if image_root else ""
    return DatasetSpec(
        name=name,
        folder=folder,
        image_root=image_root,
        split_file=split_file,
        layout=(f"{image_dir}{pattern}", split_file),
        aliases=aliases,
    )


for _spec in (
    DatasetSpec(
        name="imagenet",
        folder="imagenet",
        image_root="images",
        loader="imagenet",
        layout=("images/{train,val}/<wnid>/<image>.JPEG", "classnames.txt"),
        aliases=("ImageNet", "ImageNet-1k", "ILSVRC2012"),
    ),
    _json_spec(
        "caltech101",
        "caltech-101",
        "101_ObjectCategories",
        "split_zhou_Caltech101.json",
        "<class>/<image>.jpg",
        ("Caltech101", "Caltech-101", "caltech"),
    ),
    _json_spec(
        "oxford_pets",
        "oxford_pets",
        "images",
        "split_zhou_OxfordPets.json",
        "<image>.jpg",
        ("OxfordPets", "pets", "OxfordIIITPet"),
    ),
    _json_spec(
        "stanford_cars",
        "stanford_cars",
        "",
        "split_zhou_StanfordCars.json",
        "cars_{train,test}/<image>.jpg",
        ("StanfordCars", "cars"),
    ),
    _json_spec(
        "oxford_flowers",
        "oxford_flowers",
        "jpg",
        "split_zhou_OxfordFlowers.json",
        "<image>.jpg",
        ("OxfordFlowers", "Flowers102", "flowers"),
    ),
    _json_spec(
        "food101",
        "food-101",
        "images",
        "split_zhou_Food101.json",
        "<class>/<image>.jpg",
        ("Food101", "Food-101", "food"),
    ),
    DatasetSpec(
        name="fgvc_aircraft",
        folder="fgvc_aircraft",
        image_root="images",
        loader="fgvc",
        layout=("images/<id>.jpg", "variants.txt", "images_variant_{train,val,test}.txt"),
        aliases=("FGVCAircraft", "FGVC-Aircraft", "aircraft", "fgvc"),
    ),
    _json_spec(
        "sun397", "sun397", "SUN397", "split_zhou_SUN397.json", "<letter>/<class>/<image>.jpg", ("SUN397", "sun")
    ),
    _json_spec(
        "dtd",
        "dtd",
        "images",
        "split_zhou_DescribableTextures.json",
        "<class>/<image>.jpg",
        ("DTD", "DescribableTextures", "textures"),
    ),
    _json_spec("eurosat", "eurosat", "2750", "split_zhou_EuroSAT.json", "<class>/<image>.jpg", ("EuroSAT", "euro_sat")),
    _json_spec(
        "ucf101",
        "ucf101",
        "UCF-101-midframes",
        "split_zhou_UCF101.json",
        "<class>/<image>.jpg",
        ("UCF101", "UCF-101", "ucf"),
    ),
):
    register_dataset(_spec)

COOP11 = tuple(_REGISTRY)  # the 11 CoOp datasets in the CoOp order

# ImageNet's distribution-shift test sets in CoOp's layouts (DATASETS.md). Each folder holds a copy
# of ImageNet's classnames.txt; labels are ImageNet's class order restricted to the set's classes
# (V2: label = the integer folder name, all 1000 classes; Sketch: all 1000 by wnid; A and R: the
# 200 wnid folders present, in ImageNet order), so a classifier fitted on ImageNet is matched by wnid.
for _spec in (
    DatasetSpec(
        name="imagenet-v2",
        folder="imagenetv2",
        image_root="imagenetv2-matched-frequency-format-val",
        loader="imagenet-v2",
        layout=("imagenetv2-matched-frequency-format-val/<class index 0..999>/<image>.jpeg", "classnames.txt"),
        template_key="imagenet",
        aliases=("ImageNet-V2", "ImageNetV2-matched-frequency"),
        shift_of="imagenet",
    ),
    DatasetSpec(
        name="imagenet-sketch",
        folder="imagenet-sketch",
        image_root="images",
        loader="imagenet-wnids",
        layout=("images/<wnid>/<image>.JPEG", "classnames.txt"),
        template_key="imagenet",
        aliases=("ImageNet-Sketch", "imagenet_sketch", "sketch"),
        shift_of="imagenet",
    ),
    DatasetSpec(
        name="imagenet-a",
        folder="imagenet-adversarial",
        image_root="imagenet-a",
        loader="imagenet-wnid-subset",
        layout=("imagenet-a/<wnid>/<image>.jpg", "classnames.txt"),
        template_key="imagenet",
        aliases=("ImageNet-A", "imagenet_a", "imagenet-adversarial"),
        shift_of="imagenet",
    ),
    DatasetSpec(
        name="imagenet-r",
        folder="imagenet-rendition",
        image_root="imagenet-r",
        loader="imagenet-wnid-subset",
        layout=("imagenet-r/<wnid>/<image>.jpg", "classnames.txt"),
        template_key="imagenet",
        aliases=("ImageNet-R", "imagenet_r", "imagenet-renditions"),
        shift_of="imagenet",
    ),
):
    register_dataset(_spec)

IMAGENET_SHIFT = ("imagenet-v2", "imagenet-sketch", "imagenet-a", "imagenet-r")  # in the order of CoOp's table

# Group names accepted wherever a list of datasets is ('all' is computed: see expand_group).
DATASET_GROUPS: dict[str, tuple[str, ...]] = {"coop11": COOP11, "imagenet-shift": IMAGENET_SHIFT}


def list_datasets() -> list[str]:
    """Canonical names of all registered datasets: the 11 CoOp ones first, in CoOp order."""
    return list(_REGISTRY)


def is_shift_set(name: str) -> bool:
    """True for a test-only distribution-shift set (no train, no val), e.g. 'imagenet-sketch'."""
    canonical = resolve_name(name)
    return not canonical.startswith(IMAGEFOLDER_PREFIX) and bool(_REGISTRY[canonical].shift_of)


def expand_group(name: str) -> list[str] | None:
    """The datasets of a group name, or None when ``name`` is not a group.

    'all': every registered dataset one can fit on (the shift sets are test-only, so left out);
    'coop11': the 11 CoOp datasets; 'imagenet-shift': ImageNet-V2, -Sketch, -A and -R.
    Matched case/punctuation-insensitively ('ImageNet_Shift').
    """
    key = _norm(name)
    if key == "all":
        return [n for n, spec in _REGISTRY.items() if not spec.shift_of]
    for group, members in DATASET_GROUPS.items():
        if key == _norm(group):
            return list(members)
    return None


def resolve_name(name: str) -> str:
    """Canonical name for ``name`` (any case or punctuation); 'imagefolder:<path>' passes through."""
    if name.startswith(IMAGEFOLDER_PREFIX):
        if not name[len(IMAGEFOLDER_PREFIX) :].strip():
            raise UnknownNameError(
                "'imagefolder:' needs a folder path",
                "write imagefolder:<path to a folder with one sub-folder per class>",
            )
        return name
    canonical = _ALIASES.get(_norm(name))
    if canonical is None:
        raise UnknownNameError(
            f"unknown dataset '{name}'. Available: {', '.join(_REGISTRY)}",
            "use one of those names, a group where a list is accepted ("
            f"all, {', '.join(DATASET_GROUPS)}), or imagefolder:<path> for your own class folders",
        )
    return canonical


def get_dataset_spec(name: str) -> DatasetSpec:
    """The registered spec of a dataset name or alias."""
    canonical = resolve_name(name)
    if canonical.startswith(IMAGEFOLDER_PREFIX):
        raise UnknownNameError(
            f"'{name}' is an image folder, not a registered dataset",
            "load it with load_dataset(); it has no registry entry",
        )
    return _REGISTRY[canonical]


def expand_names(names: Sequence[str] | str) -> list[str]:
    """Canonical names from a list of names, comma-separated strings and group names
    ('all', 'coop11', 'imagenet-shift': see ``expand_group``).

    Order is kept and duplicates dropped: ``["EuroSAT,dtd", "eurosat"] -> ["eurosat", "dtd"]``.
    """
    if isinstance(names, str):
        names = [names]
    out: list[str] = []
    for chunk in names:
        for raw in chunk.split(","):
            raw = raw.strip()
            if not raw:
                continue
            expanded = expand_group(raw) or [resolve_name(raw)]
            out.extend(n for n in expanded if n not in out)
    return out


# --------------------------------------------------------------------------- locations


def resolve_data_root(root: str | Path | None) -> Path:
    """The data root, made absolute and normalised (no ``..``; symlinks kept): ``root`` if
    given, else $CACHECLIP_DATA; must be a folder."""
    if root is None or str(root) == "":
        env = os.environ.get(DATA_ENV, "")
        if not env:
            raise DatasetLayoutError(
                f"no data root: neither --root nor ${DATA_ENV} is set",
                f"pass --root <folder holding the datasets> or export {DATA_ENV}=<that folder>",
            )
        root = env
    path = Path(os.path.abspath(Path(root).expanduser()))
    if not path.is_dir():
        raise DatasetLayoutError(
            f"data root {path} is not a folder",
            f"point --root or ${DATA_ENV} at the folder that holds eurosat/, dtd/, imagenet/, ...",
        )
    return path


def imagefolder_path(name: str) -> Path:
    return Path(os.path.abspath(Path(name[len(IMAGEFOLDER_PREFIX) :]).expanduser()))


def store_name(name: str) -> str:
    """The name a dataset's feature store and results go by: the canonical name, or
    ``imagefolder_store_name`` for ``imagefolder:<path>`` (as ``load_dataset`` names it)."""
    canonical = resolve_name(name)
    if canonical.startswith(IMAGEFOLDER_PREFIX):
        return imagefolder_store_name(imagefolder_path(canonical))
    return canonical


def imagefolder_store_name(path: Path) -> str:
    """``imagefolder-<folder name>-<hash of the resolved path>``: two folders of the same
    name (``/a/images``, ``/b/images``) never share a store."""
    resolved = Path(path).resolve()
    digest = hashlib.sha256(os.fsencode(resolved)).hexdigest()[:8]
    return f"imagefolder-{resolved.name}-{digest}"


def dataset_folder(name: str, data_root: Path) -> Path:
    """Where dataset ``name`` is expected: ``<data root>/<CoOp folder name>``.

    For 'imagefolder:<path>' it is <path> itself (made absolute from the working directory).
    """
    canonical = resolve_name(name)
    if canonical.startswith(IMAGEFOLDER_PREFIX):
        return imagefolder_path(canonical)
    return Path(data_root) / _REGISTRY[canonical].folder


def expected_layout(spec: DatasetSpec, folder: Path) -> str:
    """One line naming the files a dataset needs, e.g. for error messages."""
    return "expected " + " and ".join(f"{folder.as_posix()}/{p}" for p in spec.layout)


def check_images(ds: DatasetSplits, items: Sequence[Item]) -> None:
    """Raise MissingImagesError unless every item's image is a regular file (one stat each,
    following links): a FIFO listed in a split would block the reader forever."""
    from cacheclip.datasets.listing import regular_file_problem, shown

    base = str(ds.image_root)
    problems = [(it.path, p) for it in items if (p := regular_file_problem(os.path.join(base, it.path)))]
    missing = [path for path, p in problems if p == "missing"]
    if missing:
        where = f"{ds.image_root}" + ("" if ds.image_root.is_dir() else " (which does not exist)")
        raise MissingImagesError(
            f"{len(missing)} of {len(items)} images listed in {ds.split_source} are missing under {where}, "
            f"e.g. {', '.join(missing[:3])}",
            f"put the images of {ds.name} under {ds.image_root} in the layout of the split file "
            f"(see CoOp's DATASETS.md), or point --root at the right data root",
        )
    if problems:
        named = ", ".join(f"{shown(os.path.join(base, path))} ({p})" for path, p in problems[:3])
        raise MissingImagesError(
            f"{len(problems)} of {len(items)} images listed in {ds.split_source} are not regular files: {named}",
            "replace each with its image file, or remove its line from the split file",
        )
