"""Reading the result JSONs that ``cacheclip fit`` writes (no torch: cheap to import)."""

from __future__ import annotations

import json
import math
import stat
from collections.abc import Sequence
from pathlib import Path

from cacheclip.errors import ConfigError
from cacheclip.results.runs import RESULT_SCHEMA


class ResultSet(list):
    """The results ``load_results`` found (a list of dicts) plus what it skipped."""

    def __init__(self, items: Sequence[dict] = (), warnings: Sequence[str] = ()) -> None:
        super().__init__(items)
        self.warnings: list[str] = list(warnings)


def load_results(paths: Sequence[Path]) -> ResultSet:
    """Read result JSONs from files and folders (searched recursively for ``*.json``).

    JSON files of another kind are ignored; unreadable or corrupt ones are
    skipped and named in ``.warnings``. Each result gets ``_source``
    (``{"path", "mtime"}``) so duplicates can keep the newest file.
    """
    found = ResultSet()
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files, explicit = sorted(path.rglob("*.json")), False
        elif path.exists() or path.is_symlink():
            files, explicit = [path], True
        else:
            raise ConfigError(
                f"results path not found: {path}", hint="pass result JSON files, or folders that hold them"
            )
        for file in files:
            odd = _not_a_file(file)
            if odd:  # a folder, FIFO, socket or broken link: never opened (a FIFO would block)
                if explicit or file.name == RESULT_FILE:
                    found.warnings.append(f"skipped {file}: {odd}")
                continue
            if file.resolve() in seen:
                continue
            seen.add(file.resolve())
            result, problem = _read_result(file, explicit or file.name == RESULT_FILE)
            if problem:
                found.warnings.append(problem)
            if result is not None:
                found.append(result)
    return found


RESULT_FILE = "result.json"  # the name fit writes each result under: such a file must be one
SHOWN_SKIPPED = 5  # skipped files named one per line; the rest are counted


MAX_RESULT_BYTES = 64 << 20  # a result (ImageNet 16 shots: ~1 MB of train paths) is far smaller


def _not_a_file(path: Path) -> str:
    """Why ``path`` is not a regular file to read ("" when it is one, of a result's size)."""
    try:
        info = path.stat()
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    mode = info.st_mode
    if stat.S_ISREG(mode):
        return f"{info.st_size:,} bytes, too large for a result" if info.st_size > MAX_RESULT_BYTES else ""
    return "a folder, not a file" if stat.S_ISDIR(mode) else "not a regular file (a FIFO, socket or device)"


def collapse_skipped(warnings: Sequence[str], shown: int = SHOWN_SKIPPED) -> list[str]:
    """The warnings with at most ``shown`` "skipped ..." lines: thousands of bad files give
    the first few and a count, not one line each."""
    skipped = [w for w in warnings if w.startswith("skipped ")]
    if len(skipped) <= shown:
        return list(warnings)
    kept = set(skipped[:shown])
    out = [w for w in warnings if not w.startswith("skipped ") or w in kept]
    return out + [f"skipped {len(skipped) - shown} more files (the first {shown} are named above)"]


def _read_result(path: Path, explicit: bool) -> tuple[dict | None, str | None]:
    try:
        data = json.loads(path.read_text("utf-8"))
        mtime = path.stat().st_mtime
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep
        return None, f"skipped {path}: not readable as JSON ({type(exc).__name__}: {exc})"
    schema = data.get("schema") if isinstance(data, dict) else None
    if schema == RESULT_SCHEMA:
        data["_source"] = {"path": str(path), "mtime": mtime}
        return data, None
    if isinstance(schema, str) and schema.startswith("cacheclip.result/"):
        return None, f"skipped {path}: unsupported result schema {schema!r} (expected {RESULT_SCHEMA!r})"
    if explicit and not isinstance(data, dict):
        return None, f"skipped {path}: a JSON {type(data).__name__}, not a cacheclip result (an object)"
    return None, (f"skipped {path}: not a cacheclip result" if explicit else None)


def _percent(value: object) -> bool:
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value <= 100
    )


def test_top1(block: object) -> float | None:
    return split_top1(block, "test")


def split_top1(block: object, split: str) -> float | None:
    """``block[split]["top1"]`` of ``metrics`` or ``zero_shot`` when an accuracy, else None."""
    try:
        value = block[split]["top1"]  # type: ignore[index]
    except (KeyError, TypeError):
        return None
    return float(value) if _percent(value) else None


BASE_TO_NEW = "base-to-new"
B2N_SPLITS = ("base", "new", "harmonic_mean")  # a base-to-new run's scores, in place of "test"


def is_base_to_new(result: dict) -> bool:
    """A run of ``fit --classes base-to-new`` (scored on base and new classes, no ``test``)."""
    config, classes = result.get("config"), result.get("classes")
    return (isinstance(config, dict) and config.get("classes") == BASE_TO_NEW) or (
        isinstance(classes, dict) and classes.get("mode") == BASE_TO_NEW
    )


PERCENT_KEYS = ("top1", "top5", "mean_per_class")  # accuracies: finite, 0..100


def _scores_problem(where: str, scores: object) -> str | None:
    """One split's scores ({"top1": %, "mean_per_class": %, "n": count}): every accuracy a
    finite number in 0..100, the count a non-negative integer."""
    if scores is None:
        return None
    if not isinstance(scores, dict):
        return f"{where} is {type(scores).__name__}, not an object"
    for key in PERCENT_KEYS:
        if key in scores and not _percent(scores[key]):
            return f"{where}.{key} is {scores[key]!r} (an accuracy: a number in 0..100)"
    n = scores.get("n", 0)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        return f"{where}.n is {n!r} (a count of images)"
    return None


def _block_problem(name: str, block: object) -> str | None:
    """``metrics`` or ``zero_shot``: val, test (base, new, harmonic_mean) and each target's scores."""
    if block is None and name == "zero_shot":
        return None
    if not isinstance(block, dict):
        return f"{name} is {type(block).__name__}, not an object"
    targets = block.get("targets") or {}
    if not isinstance(targets, dict):
        return f"{name}.targets is {type(targets).__name__}, not an object"
    splits = ["val", "test", *B2N_SPLITS]
    for where, scores in [(f"{name}.{s}", block.get(s)) for s in splits] + [
        (f"{name}.targets.{t}", v) for t, v in targets.items()
    ]:
        problem = _scores_problem(where, scores)
        if problem:
            return problem
    return None


def result_problem(result: dict) -> str | None:
    """Why a result cannot be reported (None: it can): every field and number the report reads
    is checked for type and range, so an impossible value is skipped, never averaged."""
    for key in ("method", "dataset", "model", "pretrained"):
        if not isinstance(result.get(key), str) or not result.get(key):
            return f"missing or invalid {key!r}"
    for key, low in (("shots", 0), ("seed", 0)):
        value = result.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value < 2**31:
            return f"missing or invalid {key!r}"
    for name in ("metrics", "zero_shot"):
        problem = _block_problem(name, result.get(name))
        if problem:
            return problem
    if is_base_to_new(result):
        missing = [s for s in ("base", "new") if split_top1(result.get("metrics"), s) is None]
        if missing:
            return f"missing metrics.{missing[0]}.top1 (a base-to-new run)"
    elif test_top1(result.get("metrics")) is None:
        return "missing metrics.test.top1"
    if result.get("diverged") is not None and not isinstance(result.get("diverged"), str):
        return f"diverged is {result.get('diverged')!r}, not text"
    for name in ("config", "protocol", "store", "classifier", "fewshot"):
        if result.get(name) is not None and not isinstance(result.get(name), dict):
            return f"{name} is {type(result.get(name)).__name__}, not an object"
    return None


def result_source(result: dict) -> str:
    source = result.get("_source") or {}
    if "path" in source:
        return str(source["path"])
    return f"{result.get('dataset')} {result.get('shots')}-shot seed {result.get('seed')}"
