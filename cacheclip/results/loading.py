"""Reading the result JSONs that ``cacheclip fit`` writes (no torch: cheap to import)."""

from __future__ import annotations

import json
import math
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
            files, explicit = sorted(f for f in path.rglob("*.json") if f.is_file()), False
        elif path.is_file():
            files, explicit = [path], True
        else:
            raise ConfigError(
                f"results path not found: {path}", hint="pass result JSON files, or folders that hold them"
            )
        for file in files:
            if file.resolve() in seen:
                continue
            seen.add(file.resolve())
            result, problem = _read_result(file, explicit)
            if problem:
                found.warnings.append(problem)
            if result is not None:
                found.append(result)
    return found


def _read_result(path: Path, explicit: bool) -> tuple[dict | None, str | None]:
    try:
        data = json.loads(path.read_text("utf-8"))
        mtime = path.stat().st_mtime
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, f"skipped {path}: not readable as JSON ({type(exc).__name__}: {exc})"
    schema = data.get("schema") if isinstance(data, dict) else None
    if schema == RESULT_SCHEMA:
        data["_source"] = {"path": str(path), "mtime": mtime}
        return data, None
    if isinstance(schema, str) and schema.startswith("cacheclip.result/"):
        return None, f"skipped {path}: unsupported result schema {schema!r} (expected {RESULT_SCHEMA!r})"
    return None, (f"skipped {path}: not a cacheclip result" if explicit else None)


def test_top1(block: object) -> float | None:
    try:
        value = block["test"]["top1"]  # type: ignore[index]
    except (KeyError, TypeError):
        return None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def result_problem(result: dict) -> str | None:
    for key in ("method", "dataset", "model", "pretrained"):
        if not isinstance(result.get(key), str):
            return f"missing or invalid {key!r}"
    for key in ("shots", "seed"):
        if not isinstance(result.get(key), int) or isinstance(result.get(key), bool):
            return f"missing or invalid {key!r}"
    if test_top1(result.get("metrics")) is None:
        return "missing metrics.test.top1"
    return None


def result_source(result: dict) -> str:
    source = result.get("_source") or {}
    if "path" in source:
        return str(source["path"])
    return f"{result.get('dataset')} {result.get('shots')}-shot seed {result.get('seed')}"
