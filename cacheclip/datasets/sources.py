"""Where each dataset comes from: official archives, CoOp's split files, checksums, sizes, and how
each archive maps into CoOp's folder layout (data, no network; ``download`` does the fetching).

URLs are those torchvision's dataset classes (0.29) or the datasets' official pages use; split
files are where CoOp's DATASETS.md publishes them (Google Drive). Checksums carry where they were
published. ``SourceFile.checksum`` is "md5:<hex>" or "sha256:<hex>"; "" means none is published,
and the sha256 seen is reported instead. Sizes are approximate (bytes), used for the disk check
and the plan. ``load_overrides`` replaces checksums, sizes or counts from a JSON file (a mirror
that repacked an archive, or test archives).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from cacheclip.errors import ConfigError, UnknownNameError

SOURCES_ENV = "CACHECLIP_SOURCES"  # a JSON file of overrides, read when no --sources is given
MB, GB = 10**6, 10**9
TORCHVISION = "torchvision 0.29 datasets"
COOP_MD = "CoOp DATASETS.md"


@dataclass(frozen=True)
class SourceFile:
    filename: str  # file name in the downloads folder and on a mirror (<mirror>/<dataset>/<filename>)
    url: str  # the official location
    checksum: str = ""  # "md5:<hex>" / "sha256:<hex>"; "" = none published (the sha256 seen is reported)
    checksum_from: str = ""  # where the checksum was published, or "pinned here" for CoOp split files
    size: int = 0  # approximate download size, bytes
    unpacked: int = 0  # approximate size once unpacked, bytes (plain files: 0)
    # Archives: (path inside the archive, path in the dataset folder); dest "" = the source's
    # children go into the dataset folder itself. Empty tuple = a plain file saved as `dest`.
    moves: tuple[tuple[str, str], ...] = ()
    dest: str = ""  # plain file: its path in the dataset folder
    inner: str = ""  # archive: unpack this archive found inside it instead (Caltech101's zip)
    provides: tuple[str, ...] = ()  # paths in the dataset folder that show it is there (default: dests)

    @property
    def is_archive(self) -> bool:
        return bool(self.moves)

    @property
    def targets(self) -> tuple[str, ...]:
        """Paths in the dataset folder this file creates; all present = done, none = to fetch."""
        if self.provides:
            return self.provides
        return tuple(d for _, d in self.moves if d) if self.moves else (self.dest,)


@dataclass(frozen=True)
class DatasetSource:
    name: str  # catalog name
    page: str  # official page
    files: tuple[SourceFile, ...] = ()
    counts: tuple[int, int, int] | None = None  # train / val / test items of the published split
    split_file: str = ""  # the file whose sha256 is pinned (its SourceFile.checksum), if any
    manual: str = ""  # instructions where no automatic source exists ('' = automatic)


def _drive(file_id: str) -> str:
    """Direct download of a public Google Drive file (confirm=t skips the large-file page)."""
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


def _split(name: str, drive_id: str, sha256: str = "") -> SourceFile:
    return SourceFile(
        filename=name,
        url=_drive(drive_id),
        checksum=f"sha256:{sha256}" if sha256 else "",
        checksum_from="pinned from CoOp's published file" if sha256 else "",
        size=4 * MB,
        dest=name,
    )


VGG = "https://www.robots.ox.ac.uk/~vgg/data"
HENDRYCKS = "https://people.eecs.berkeley.edu/~hendrycks"
# CoOp's ImageNet classnames.txt; the distribution-shift sets use the same file.
_CLASSNAMES = SourceFile("classnames.txt", _drive("1-61f_ol79pViBFDG_IDlUQSwoLcn2XXF"), size=MB, dest="classnames.txt")

_SOURCES: dict[str, DatasetSource] = {
    s.name: s
    for s in (
        DatasetSource(
            name="caltech101",
            page="https://data.caltech.edu/records/mzrjq-6wc02",
            counts=(4128, 1649, 2465),
            split_file="split_zhou_Caltech101.json",
            files=(
                SourceFile(
                    "caltech-101.zip",
                    "https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip",
                    checksum="md5:3138e1922a9193bfa496528edbbc45d0",
                    checksum_from=TORCHVISION + "/caltech.py",
                    size=137 * MB,
                    unpacked=160 * MB,
                    inner="caltech-101/101_ObjectCategories.tar.gz",
                    moves=(("101_ObjectCategories", "101_ObjectCategories"),),
                ),
                _split(
                    "split_zhou_Caltech101.json",
                    "1hyarUivQE36mY6jSomru6Fjd-JzwcCzN",
                    "52ce83205ff8ff8a1a18119aad6376120ae35c36e783a984bc560cbf10e73fa5",
                ),
            ),
        ),
        DatasetSource(
            name="oxford_pets",
            page=f"{VGG}/pets/",
            counts=(2944, 736, 3669),
            split_file="split_zhou_OxfordPets.json",
            files=(
                SourceFile(
                    "images.tar.gz",
                    f"{VGG}/pets/data/images.tar.gz",
                    checksum="md5:5c4f3ee8e5d25df40f4fd59a7f44e54c",
                    checksum_from=TORCHVISION + "/oxford_iiit_pet.py",
                    size=792 * MB,
                    unpacked=800 * MB,
                    moves=(("images", "images"),),
                ),
                SourceFile(
                    "annotations.tar.gz",
                    f"{VGG}/pets/data/annotations.tar.gz",
                    checksum="md5:95a8c909bbe2e81eed6a22bccdf3f68f",
                    checksum_from=TORCHVISION + "/oxford_iiit_pet.py",
                    size=19 * MB,
                    unpacked=40 * MB,
                    moves=(("annotations", "annotations"),),
                ),
                _split(
                    "split_zhou_OxfordPets.json",
                    "1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs",
                    "d7f3ffe65b3919f95132e51422894ae18686b83c331fd8c0adcdc3dc2de6301e",
                ),
            ),
        ),
        DatasetSource(
            name="stanford_cars",
            page="https://ai.stanford.edu/~jkrause/cars/car_dataset.html",
            counts=(6509, 1635, 8041),
            split_file="split_zhou_StanfordCars.json",
            files=(
                _split(
                    "split_zhou_StanfordCars.json",
                    "1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT",
                    "40acee7aa65c8e4727a32d90e884b7c3f8960b523422317e163f7af65432959d",
                ),
            ),
            manual=(
                "the original site (ai.stanford.edu/~jkrause/cars) is gone and torchvision no longer downloads it. "
                "From a copy you trust, put cars_train/ and cars_test/ (the image folders of cars_train.tgz and "
                "cars_test.tgz) into {folder}; `cacheclip data get stanford_cars` then fetches only the split file"
            ),
        ),
        DatasetSource(
            name="oxford_flowers",
            page=f"{VGG}/flowers/102/",
            counts=(4093, 1633, 2463),
            split_file="split_zhou_OxfordFlowers.json",
            files=(
                SourceFile(
                    "102flowers.tgz",
                    f"{VGG}/flowers/102/102flowers.tgz",
                    checksum="md5:52808999861908f626f3c1f4e79d11fa",
                    checksum_from=TORCHVISION + "/flowers102.py",
                    size=345 * MB,
                    unpacked=350 * MB,
                    moves=(("jpg", "jpg"),),
                ),
                SourceFile(
                    "imagelabels.mat",
                    f"{VGG}/flowers/102/imagelabels.mat",
                    checksum="md5:e0620be6f572b9609742df49c70aed4d",
                    checksum_from=TORCHVISION + "/flowers102.py",
                    size=1 * MB,
                    dest="imagelabels.mat",
                ),
                SourceFile(
                    "cat_to_name.json", _drive("1AkcxCXeK_RCGCEC_GvmWxjcjaNhu-at0"), size=MB, dest="cat_to_name.json"
                ),
                _split(
                    "split_zhou_OxfordFlowers.json",
                    "1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT",
                    "2f50c42fc1a17ca13c271cb4269b1347bdb43d2be672e34f74a4e4cbfbcca794",
                ),
            ),
        ),
        DatasetSource(
            name="food101",
            page="https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/",
            counts=(50500, 20200, 30300),
            files=(
                SourceFile(
                    "food-101.tar.gz",
                    "http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz",
                    checksum="md5:85eeb15f3717b99a5da872d97d918f87",
                    checksum_from=TORCHVISION + "/food101.py",
                    size=5 * GB,
                    unpacked=5 * GB,
                    moves=(("food-101", ""),),
                    provides=("images", "meta"),
                ),
                _split("split_zhou_Food101.json", "1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl"),
            ),
        ),
        DatasetSource(
            name="fgvc_aircraft",
            page=f"{VGG}/fgvc-aircraft/",
            counts=(3334, 3333, 3333),
            files=(
                SourceFile(
                    "fgvc-aircraft-2013b.tar.gz",
                    f"{VGG}/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",
                    size=2750 * MB,
                    unpacked=2800 * MB,
                    moves=(("fgvc-aircraft-2013b/data", ""),),
                    provides=("images", "variants.txt"),
                ),
            ),
        ),
        DatasetSource(
            name="sun397",
            page="https://vision.princeton.edu/projects/2010/SUN/",
            counts=(15880, 3970, 19850),
            files=(
                SourceFile(
                    "SUN397.tar.gz",
                    "http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz",
                    checksum="md5:8ca2778205c41d23104230ba66911c7a",
                    checksum_from=TORCHVISION + "/sun397.py",
                    size=37 * GB,
                    unpacked=39 * GB,
                    moves=(("SUN397", "SUN397"),),
                ),
                _split("split_zhou_SUN397.json", "1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq"),
            ),
        ),
        DatasetSource(
            name="dtd",
            page=f"{VGG}/dtd/",
            counts=(2820, 1128, 1692),
            split_file="split_zhou_DescribableTextures.json",
            files=(
                SourceFile(
                    "dtd-r1.0.1.tar.gz",
                    f"{VGG}/dtd/download/dtd-r1.0.1.tar.gz",
                    checksum="md5:fff73e5086ae6bdbea199a49dfb8a4c1",
                    checksum_from=TORCHVISION + "/dtd.py",
                    size=625 * MB,
                    unpacked=630 * MB,
                    moves=(("dtd/images", "images"), ("dtd/imdb", "imdb"), ("dtd/labels", "labels")),
                    provides=("images",),
                ),
                _split(
                    "split_zhou_DescribableTextures.json",
                    "1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x",
                    "f26ebeccd2b58e68d70f07a0dc39fe49bf7b69024bac34396b954dfd87969c38",
                ),
            ),
        ),
        DatasetSource(
            name="eurosat",
            page="https://github.com/phelber/eurosat",
            counts=(13500, 5400, 8100),
            split_file="split_zhou_EuroSAT.json",
            files=(
                SourceFile(
                    "EuroSAT.zip",
                    "https://huggingface.co/datasets/torchgeo/eurosat/resolve/"
                    "c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip",
                    checksum="md5:c8fa014336c82ac7804f0398fcb19387",
                    checksum_from=TORCHVISION + "/eurosat.py",
                    size=94 * MB,
                    unpacked=100 * MB,
                    moves=(("2750", "2750"),),
                ),
                _split(
                    "split_zhou_EuroSAT.json",
                    "1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o",
                    "541503a77d0b26b735d85ec7a3e672804fe0aa466c2e5f07da772cc6c0af8ad2",
                ),
            ),
        ),
        DatasetSource(
            name="ucf101",
            page="https://www.crcv.ucf.edu/data/UCF101.php",
            counts=(7639, 1898, 3783),
            split_file="split_zhou_UCF101.json",
            files=(
                SourceFile(
                    "UCF-101-midframes.zip",
                    _drive("10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O"),
                    size=2 * GB,
                    unpacked=2 * GB,
                    moves=(("UCF-101-midframes", "UCF-101-midframes"),),
                ),
                _split(
                    "split_zhou_UCF101.json",
                    "1I0S0q91hJfsV9Gf4xDIjgDq4AqBNJb1y",
                    "d78cb834f7c5792ceaff2c5ee2d7c76a9e4086e48a3a6b01232989d29cbefdd8",
                ),
            ),
        ),
        DatasetSource(
            name="imagenet",
            page="https://image-net.org/download-images.php",
            counts=(1281167, 0, 50000),
            files=(
                SourceFile(
                    "classnames.txt", _drive("1-61f_ol79pViBFDG_IDlUQSwoLcn2XXF"), size=MB, dest="classnames.txt"
                ),
            ),
            manual=(
                "ImageNet needs a registered account at image-net.org. Download ILSVRC2012_img_train.tar and "
                "ILSVRC2012_img_val.tar, extract them into {folder}/images/train/<wnid>/ and "
                "{folder}/images/val/<wnid>/ (val sorted into wnid folders like train); "
                "`cacheclip data get imagenet` then fetches only classnames.txt"
            ),
        ),
    )
}


# The ImageNet distribution-shift sets (CoOp DATASETS.md), test only; added only for the names
# the catalog registers, so sources never name a dataset the catalog does not know.
_SHIFT = (
    DatasetSource(
        name="imagenet-v2",
        page="https://github.com/modestyachts/ImageNetV2",
        counts=(0, 0, 10000),
        files=(
            SourceFile(
                "imagenetv2-matched-frequency.tar.gz",
                "https://s3-us-west-2.amazonaws.com/imagenetv2public/imagenetv2-matched-frequency.tar.gz",
                size=1260 * MB,
                unpacked=1300 * MB,
                moves=(("imagenetv2-matched-frequency-format-val", "imagenetv2-matched-frequency-format-val"),),
            ),
            _CLASSNAMES,
        ),
    ),
    DatasetSource(
        name="imagenet-sketch",
        page="https://github.com/HaohanWang/ImageNet-Sketch",
        counts=(0, 0, 50889),
        files=(
            SourceFile(
                "ImageNet-Sketch.zip",
                _drive("1Mj0i5HBthqH1p_yeXzsg22gZduvgoNeA"),
                size=8400 * MB,
                unpacked=8800 * MB,
                moves=(("sketch", "images"),),
            ),
            _CLASSNAMES,
        ),
    ),
    DatasetSource(
        name="imagenet-a",
        page="https://github.com/hendrycks/natural-adv-examples",
        counts=(0, 0, 7500),
        files=(
            SourceFile(
                "imagenet-a.tar", f"{HENDRYCKS}/imagenet-a.tar", size=690 * MB, moves=(("imagenet-a", "imagenet-a"),)
            ),
            _CLASSNAMES,
        ),
    ),
    DatasetSource(
        name="imagenet-r",
        page="https://github.com/hendrycks/imagenet-r",
        counts=(0, 0, 30000),
        files=(
            SourceFile(
                "imagenet-r.tar", f"{HENDRYCKS}/imagenet-r.tar", size=2170 * MB, moves=(("imagenet-r", "imagenet-r"),)
            ),
            _CLASSNAMES,
        ),
    ),
)


def _add_shift_sources() -> None:
    from cacheclip.datasets.catalog import list_datasets

    known = set(list_datasets())
    for source in _SHIFT:
        if source.name in known:
            _SOURCES.setdefault(source.name, source)


def get_source(name: str) -> DatasetSource:
    """The sources of catalog dataset ``name`` (canonical name)."""
    try:
        return _SOURCES[name]
    except KeyError:
        raise UnknownNameError(
            f"no download source for dataset '{name}'. Available: {', '.join(_SOURCES)}",
            "put the dataset under --root by hand in CoOp's layout, then run `cacheclip data check`",
        ) from None


def list_sources() -> list[str]:
    return list(_SOURCES)


def register_source(source: DatasetSource, *, overwrite: bool = False) -> DatasetSource:
    """Add ``source`` (e.g. for a dataset a plugin registers in the catalog)."""
    if source.name in _SOURCES and not overwrite:
        raise ConfigError(f"dataset '{source.name}' already has sources", "pass overwrite=True to replace them")
    _SOURCES[source.name] = source
    return source


_add_shift_sources()

# --------------------------------------------------------------------------- overrides

_FILE_KEYS = {"checksum": str, "size": int, "unpacked": int, "url": str}


def apply_overrides(source: DatasetSource, overrides: dict) -> DatasetSource:
    """``source`` with the values of ``overrides[name]``:
    ``{"counts": [tr, va, te] | null, "files": {"<filename>": {"checksum": ..., "size": ...}}}``."""
    entry = overrides.get(source.name)
    if entry is None:
        return source
    where = f"sources override for {source.name}"
    unknown = set(entry) - {"counts", "files"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}", "use 'counts' and 'files'")
    files = list(source.files)
    by_name = {f.filename: i for i, f in enumerate(files)}
    for filename, values in entry.get("files", {}).items():
        if filename not in by_name:
            raise ConfigError(
                f"{where}: no file '{filename}'. Available: {', '.join(by_name)}", "name one of its files"
            )
        bad = [k for k, v in values.items() if k not in _FILE_KEYS or not isinstance(v, _FILE_KEYS[k])]
        if bad:
            raise ConfigError(f"{where}: bad key(s) for {filename}: {', '.join(bad)}", f"keys: {', '.join(_FILE_KEYS)}")
        if "checksum" in values:
            check_checksum_text(values["checksum"], where)
        files[by_name[filename]] = replace(files[by_name[filename]], checksum_from="override", **values)
    counts = source.counts
    if "counts" in entry:
        counts = None if entry["counts"] is None else tuple(int(n) for n in entry["counts"])
    return replace(source, files=tuple(files), counts=counts)


def check_checksum_text(text: str, where: str) -> None:
    algo, _, digest = text.partition(":")
    length = {"md5": 32, "sha256": 64}.get(algo)
    if text and (length is None or len(digest) != length):
        raise ConfigError(f"{where}: checksum '{text}' is not md5:<32 hex> or sha256:<64 hex>", "fix the checksum")


def load_overrides(path: str | Path | None) -> dict:
    """The overrides JSON at ``path`` (None: $CACHECLIP_SOURCES, or none)."""
    path = path or os.environ.get(SOURCES_ENV, "")
    if not path:
        return {}
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError) as err:  # RecursionError: nested too deeply
        raise ConfigError(f"cannot read sources overrides {path}: {err}", "pass a JSON file to --sources") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"sources overrides {path} must be a JSON object", '{"eurosat": {"files": {...}}}')
    return obj


def resolve_source(name: str, overrides: dict | None = None) -> DatasetSource:
    """``get_source(name)`` with ``overrides`` applied."""
    return apply_overrides(get_source(name), overrides or {})
