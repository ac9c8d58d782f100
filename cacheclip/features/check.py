"""`cacheclip check`: every problem of a store, each with the command that repairs it.

Reads every byte (checksums, NaN), compares the store with the dataset on disk (split
files, image sizes and mtimes) and looks for an unfinished extraction, set-aside parts
and temporaries a killed writer left behind. ``ls`` shows the cheap part (``health``).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import h5py

from cacheclip.common import stale_temporaries
from cacheclip.errors import StoreError
from cacheclip.features.freshness import check_freshness
from cacheclip.features.store import FeatureStore, _safe_name, parts_dir
from cacheclip.features.validate import DIGESTED_SCHEMA, checksum_problems


@dataclass
class StoreCheck:
    path: Path
    problems: list[str] = field(default_factory=list)  # one line each, with the repair
    notes: list[str] = field(default_factory=list)  # not a problem, worth knowing (e.g. not verified)

    @property
    def ok(self) -> bool:
        return not self.problems


def extract_command(path: Path, attrs: dict) -> str:
    """The `cacheclip extract` call that rebuilds this store (from what it recorded; a store
    too damaged to say is named by its folders: <cache>/<model>/<weights>/<dataset>.h5).
    Where neither says the model or weights (a config or checkpoint file), the command
    cannot be written out: the line says which extract to rerun instead."""
    dataset = attrs.get("dataset_source") or attrs.get("dataset") or path.stem
    model = attrs.get("model_config_path") or attrs.get("model") or _model_from_folder(path.parent.parent.name)
    pretrained = attrs.get("checkpoint_path") or attrs.get("pretrained") or _weights_from_folder(path.parent.name)
    cache_dir = path.parent.parent.parent
    if not model or not pretrained:
        return (
            f"rerun the `cacheclip extract --dataset {shlex.quote(str(dataset))} --cache-dir "
            f"{shlex.quote(str(cache_dir))}` that built it, with its --model and --pretrained files "
            f"(model folder {path.parent.parent.name}, weights folder {path.parent.name})"
        )
    parts = ["cacheclip extract", f"--dataset {shlex.quote(str(dataset))}"]
    parts += [f"--model {shlex.quote(str(model))}", f"--pretrained {shlex.quote(str(pretrained))}"]
    parts.append(f"--cache-dir {shlex.quote(str(cache_dir))}")
    if attrs.get("data_root"):
        parts.append(f"--root {shlex.quote(str(attrs['data_root']))}")
    return " ".join(parts)


def _model_from_folder(folder: str) -> str:
    """The --model a store's model folder names; "" for a config file's (``<name>-<sha8>``)."""
    return "" if re.fullmatch(r".+-[0-9a-f]{8}", folder) and not folder.endswith("-quickgelu") else folder


def _weights_from_folder(folder: str) -> str:
    """The --pretrained a store's weights folder names; "" for a checkpoint file's."""
    if folder == "random-init":
        return "none"
    return "" if folder.startswith("file-") else folder


def health(path: Path) -> str:
    """One word or line for `ls`: ok, or what is wrong (structure only: cheap)."""
    try:
        FeatureStore(path).close()
    except (StoreError, OSError) as e:
        return f"damaged: {getattr(e, 'message', e)}".replace(f"{path} is damaged: ", "")
    leftovers = _leftovers(path)
    return "ok" if not leftovers else "; ".join(leftovers)


def check_store(path: Path, *, in_cache: bool = False) -> StoreCheck:
    """Every problem of one store, each line ending with its repair. ``in_cache``: the store
    sits in a cache folder (``<cache>/<model>/<weights>/<dataset>.h5``), whose file name must
    be its dataset's (readers find a store by that name alone)."""
    result = StoreCheck(path)
    attrs: dict = {}
    try:
        store = FeatureStore(path)
    except (StoreError, OSError) as e:
        result.problems.append(f"{getattr(e, 'message', e)}; repair: rm {path} && {extract_command(path, attrs)}")
        return result
    with store:
        attrs = dict(store.attrs)
        rebuild = f"rm {shlex.quote(str(path))} && {extract_command(path, attrs)}"
        schema = int(attrs.get("schema_version", 1))
        if schema < 2:
            result.notes.append("written before per-chunk checksums (schema 1): bytes cannot be verified")
        if schema < DIGESTED_SCHEMA:
            result.notes.append(
                f"written before attribute digests (schema {schema}): its attributes (logit_scale...) cannot be "
                "verified; rerunning its extract rewrites it with one"
            )
        if in_cache and path.stem != _safe_name(str(attrs.get("dataset", ""))):
            result.problems.append(
                f"the file is named {path.name} but holds the features of dataset {attrs.get('dataset')!r} "
                f"(a store renamed or copied under another name); repair: {rebuild}"
            )
        try:
            fresh = check_freshness(store)
        except StoreError as e:
            result.problems.append(f"{e.message}; repair: {rebuild}")
        else:
            if fresh.stale:
                result.problems.append(f"{fresh.describe()}; repair: {extract_command(path, attrs)}")
            elif not fresh.verified:
                result.notes.append(f"inputs {fresh.describe()}")
    with h5py.File(path, "r") as f:
        damaged = checksum_problems(f)
    result.problems += [f"{p}; repair: {rebuild}" for p in damaged]
    result.problems += [f"{p}; repair: {extract_command(path, attrs)}" for p in _leftovers(path)]
    return result


def _leftovers(path: Path) -> list[str]:
    """An unfinished extraction, set-aside parts, and a killed writer's temporaries."""
    found = []
    parts = parts_dir(path)
    pending = list(parts.glob("*.h5")) if parts.is_dir() else []
    if pending:
        found.append(f"unfinished extraction ({len(pending)} chunks in {parts.name}/)")
    aside = list(parts.glob("*.damaged")) if parts.is_dir() else []
    if aside:
        found.append(f"{len(aside)} damaged chunks set aside (their items are encoded again)")
    temporaries = stale_temporaries(path.parent, path.name) + (stale_temporaries(parts) if parts.is_dir() else [])
    if temporaries:
        found.append(f"{len(temporaries)} temporaries left by a killed writer (e.g. {temporaries[0].name})")
    return found
