"""`data get`: fetch a dataset's sources, verify them, unpack into CoOp's layout, never overwrite.

Transport is the standard library (urllib): resumes with HTTP Range requests, honours the
server's Content-Range, restarts when a server ignores ranges. Downloads go to
``<root>/.cacheclip-downloads/<dataset>/`` as ``<file>.part`` and are renamed to ``<file>`` only
once complete and verified (a checksum mismatch deletes the part), so an interrupted run keeps
what it finished and resumes the rest.
Everything is unpacked into a staging folder beside them and moved into place at the end: the
whole dataset folder in one rename when it did not exist, else only the paths it lacks. Before
that the staged layout is validated as `extract` reads it (split files parse, every item is a
readable image); an archive that cannot be unpacked (truncated, a bad CRC, larger unpacked than
its source declares) or a layout that does not validate is never moved into place: the staging
folders and the bad download are deleted, so a rerun fetches it again.

Progress goes through ``progress(stage, done, total)`` in bytes; this module never prints.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import lzma
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cacheclip.datasets.catalog import DATA_ENV, get_dataset_spec, resolve_name
from cacheclip.datasets.sources import DatasetSource, SourceFile, resolve_source
from cacheclip.errors import CacheClipError, ConfigError, DatasetLayoutError

MIRROR_ENV = "CACHECLIP_MIRROR"  # replaces the base of every source: <mirror>/<dataset>/<filename>
DOWNLOADS = ".cacheclip-downloads"  # under the data root, so renames into place stay on one filesystem
STAGE = "stage"  # <downloads>/stage/<dataset folder>: the layout being built, moved into place at the end
CHUNK = 1 << 20
TIMEOUT_S = 60
Progress = Callable[[str, int, int], None]


class DownloadError(CacheClipError):
    """A source could not be fetched or did not match its checksum."""


class DamagedArchiveError(DownloadError):
    """An archive that cannot be unpacked as it should: truncated, a bad CRC, or larger unpacked
    than its source declares. ``get_dataset`` deletes it (and its staging) before re-raising."""

    def __init__(self, archive: Path, what: str) -> None:
        super().__init__(f"{archive.name} is damaged: {what}", f"delete {archive} and rerun to download it again")
        self.archive = archive


def _no_progress(stage: str, done: int, total: int) -> None:
    pass


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class FilePlan:
    source: SourceFile
    url: str  # the official URL, or the mirror's
    state: str  # "present" (all its targets exist), "fetch", or "partial" (some exist)
    have: int = 0  # bytes already downloaded (a finished or partial download)


@dataclass(frozen=True)
class DatasetPlan:
    name: str
    source: DatasetSource
    folder: Path  # <root>/<CoOp folder>
    downloads: Path  # <root>/.cacheclip-downloads/<name>
    files: tuple[FilePlan, ...]

    @property
    def to_fetch(self) -> tuple[FilePlan, ...]:
        return tuple(f for f in self.files if f.state == "fetch")

    @property
    def download_bytes(self) -> int:
        return sum(max(f.source.size - f.have, 0) for f in self.to_fetch)

    @property
    def disk_bytes(self) -> int:
        """Room needed: what is left to download plus the unpacked size."""
        return self.download_bytes + sum(f.source.unpacked for f in self.to_fetch)


def mirror_base(mirror: str | None) -> str:
    """--mirror, else $CACHECLIP_MIRROR, else '' (official sources)."""
    base = mirror if mirror is not None else os.environ.get(MIRROR_ENV, "")
    if base and "://" not in base:
        raise ConfigError(f"mirror '{base}' is not a URL", "pass --mirror http(s)://host/path or file:///path")
    return base.rstrip("/")


def source_url(name: str, source: SourceFile, mirror: str) -> str:
    return f"{mirror}/{name}/{source.filename}" if mirror else source.url


def plan_dataset(name: str, root: Path, *, mirror: str = "", overrides: dict | None = None) -> DatasetPlan:
    """What ``get_dataset`` would do for ``name`` under the data root ``root``; touches nothing."""
    name = resolve_name(name)
    source = resolve_source(name, overrides)
    folder = Path(root) / get_dataset_spec(name).folder
    downloads = Path(root) / DOWNLOADS / name
    files = []
    for sf in source.files:
        present = [t for t in sf.targets if (folder / t).exists()]
        state = "present" if len(present) == len(sf.targets) else "partial" if present else "fetch"
        files.append(FilePlan(sf, source_url(name, sf, mirror), state, _have(downloads, sf)))
    return DatasetPlan(name, source, folder, downloads, tuple(files))


def _have(downloads: Path, sf: SourceFile) -> int:
    for path in (downloads / sf.filename, downloads / f"{sf.filename}.part"):
        if path.is_file():
            return path.stat().st_size
    return 0


def refuse_partial(plan: DatasetPlan) -> None:
    """A layout that holds some of a source's paths but not all: name it, never touch it."""
    partial = [f for f in plan.files if f.state == "partial"]
    if not partial:
        return
    sf = partial[0].source
    there = [t for t in sf.targets if (plan.folder / t).exists()]
    missing = [t for t in sf.targets if t not in there]
    raise DatasetLayoutError(
        f"{plan.name}: partial layout in {plan.folder}: has {', '.join(there)} but not {', '.join(missing)} "
        f"(from {sf.filename}); not touching it",
        f"move it aside (mv {plan.folder} {plan.folder}.old) and rerun `cacheclip data get {plan.name}`, "
        f"or complete it by hand and run `cacheclip data check {plan.name}`",
    )


def check_free_space(plans: list[DatasetPlan], root: Path) -> None:
    need = sum(p.disk_bytes for p in plans)
    free = shutil.disk_usage(root).free
    if need > free:
        raise DownloadError(
            f"not enough disk space under {root}: need about {human_bytes(need)} "
            f"(downloads + unpacked), {human_bytes(free)} free",
            f"free some space, or pass --root (or ${DATA_ENV}) on a larger disk",
        )


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


# --------------------------------------------------------------------------- transport


def fetch(url: str, part: Path, *, size_hint: int = 0, progress: Progress = _no_progress, stage: str = "") -> None:
    """Download ``url`` into ``part``, resuming what ``part`` already holds with a Range request.
    Returns once the whole body is there; the caller verifies and renames it. Raises
    DownloadError (``part`` is kept, so rerunning resumes)."""
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "cacheclip"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing past what we have: it was complete (the checksum tells)
            return
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}", _retry_hint(url)) from None
    except (urllib.error.URLError, OSError) as err:
        raise DownloadError(f"{url}: {getattr(err, 'reason', err)}", _retry_hint(url)) from None
    with response:
        start = _resume_offset(response, have)
        length = int(response.headers.get("Content-Length") or 0)
        total = start + length if length else max(size_hint, start)
        done = start
        try:
            with open(part, "r+b" if start else "wb") as out:
                out.truncate(start)
                out.seek(start)
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    done += len(chunk)
                    progress(stage, done, max(total, done))
        except (OSError, http.client.HTTPException) as err:
            raise _stopped(url, done, total, err) from None
        if length and done < start + length:
            raise _stopped(url, done, total, "connection closed early")


def _resume_offset(response, have: int) -> int:
    """Where the body starts: ``have`` for a 206 from there, the server's own start for a 206 that
    starts earlier, 0 when the server ignored the range (200)."""
    if response.status != 206:
        return 0
    content_range = response.headers.get("Content-Range", "")  # "bytes START-END/TOTAL"
    try:
        start = int(content_range.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return 0
    return start if start <= have else 0


def _stopped(url: str, done: int, total: int, why: object) -> DownloadError:
    return DownloadError(
        f"download of {url} stopped at {human_bytes(done)} of {human_bytes(total)} ({why})",
        "rerun the same command: it resumes where it stopped",
    )


def _retry_hint(url: str) -> str:
    return f"check the network (or the mirror: --mirror / ${MIRROR_ENV}); the URL was {url}"


def file_digest(path: Path, algo: str, progress: Progress = _no_progress, stage: str = "") -> str:
    h = hashlib.new(algo)
    total, done = path.stat().st_size, 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            done += len(chunk)
            progress(stage, done, total)
    return h.hexdigest()


def verify(path: Path, sf: SourceFile, progress: Progress = _no_progress, stage: str = "") -> str:
    """The file's sha256 (or its md5 when that is the published checksum) if it matches
    ``sf.checksum``; on a mismatch the file is deleted and DownloadError raised."""
    algo, _, want = sf.checksum.partition(":") if sf.checksum else ("sha256", "", "")
    got = file_digest(path, algo, progress, stage)
    if want and got != want.lower():
        path.unlink()
        raise DownloadError(
            f"{sf.filename}: checksum mismatch (expected {algo}:{want}, got {algo}:{got}); the file was deleted",
            "rerun to download it again; if your mirror repacked it, give its checksum with --sources FILE",
        )
    return f"{algo}:{got}"


# --------------------------------------------------------------------------- unpacking


def _safe_member(name: str, archive: Path) -> None:
    parts = Path(name).parts
    if name.startswith("/") or ".." in parts:
        raise DownloadError(f"{archive.name}: unsafe member path '{name}'", "the archive is not the published one")


UNPACK_SLACK = 64 << 20  # bytes an archive may unpack to beyond 1.5x its declared size (sizes are approximate)
_ARCHIVE_READ_ERRORS = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError)


def unpack_limit(sf: SourceFile) -> int:
    """The most bytes ``sf`` may unpack to: its declared unpacked size (or download size) with slack.
    A small archive that expands far beyond it (a zip bomb, a wrong file) is refused before
    anything is written."""
    return int(max(sf.unpacked, sf.size) * 1.5) + UNPACK_SLACK


def _is_zip(archive: Path) -> bool:
    """By name, else by magic bytes: a truncated zip has no central directory for
    ``zipfile.is_zipfile`` to find, and must not be read as a tar."""
    if archive.name.lower().endswith(".zip"):
        return True
    with open(archive, "rb") as f:
        return f.read(4) in (b"PK\x03\x04", b"PK\x05\x06")


def extract_archive(
    archive: Path, into: Path, progress: Progress = _no_progress, stage: str = "", limit: int | None = None
) -> None:
    """Unpack a .zip or .tar(.gz) into ``into``, refusing members that would land outside it and,
    with ``limit``, an archive whose members add up to more bytes (checked before writing any).
    An archive that cannot be read whole (truncated, bad CRC, not the format its name says) is a
    DamagedArchiveError; only a real Ctrl-C reads as an interruption."""
    into.mkdir(parents=True, exist_ok=True)
    try:
        if _is_zip(archive):
            _extract_zip(archive, into, progress, stage, limit)
        else:
            _extract_tar(archive, into, progress, stage, limit)
    except _ARCHIVE_READ_ERRORS as err:
        kind = "zip" if _is_zip(archive) else "tar"
        raise DamagedArchiveError(archive, f"not a readable {kind} archive ({type(err).__name__}: {err})") from None
    except OSError as err:
        if err.errno is not None:  # the disk (full, read-only): not the archive's fault
            raise
        raise DamagedArchiveError(archive, f"not a readable archive ({err})") from None


def _check_size(archive: Path, total: int, limit: int | None) -> None:
    if limit is not None and total > limit:
        raise DamagedArchiveError(
            archive,
            f"it unpacks to {human_bytes(total)}, more than its source declares (at most {human_bytes(limit)}); "
            "refused before unpacking",
        )


def _extract_zip(archive: Path, into: Path, progress: Progress, stage: str, limit: int | None) -> None:
    with zipfile.ZipFile(archive) as z:
        members = z.infolist()
        total, done = sum(m.file_size for m in members), 0
        _check_size(archive, total, limit)  # zipfile never reads a member past its declared size
        for m in members:
            _safe_member(m.filename, archive)
            z.extract(m, into)  # a bad CRC raises BadZipFile
            done += m.file_size
            progress(stage, done, total)


def _extract_tar(archive: Path, into: Path, progress: Progress, stage: str, limit: int | None) -> None:
    with tarfile.open(archive) as t:
        members = t.getmembers()  # reads the whole stream: a truncated one fails here
        total, done = sum(m.size for m in members if m.isfile()), 0
        _check_size(archive, total, limit)
        for m in members:
            _safe_member(m.name, archive)
            if not (m.isfile() or m.isdir()):
                continue  # no links or devices from a download
            t.extract(m, into, **_tar_filter())
            done += m.size
            progress(stage, done, total)


def _tar_filter() -> dict:
    return {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def unpack(archive: Path, sf: SourceFile, stage_dir: Path, progress: Progress = _no_progress) -> None:
    """Unpack ``archive`` and move each ``sf.moves`` entry into ``stage_dir`` (a dataset-folder tree)."""
    work = _work_dir(stage_dir, sf)
    shutil.rmtree(work, ignore_errors=True)
    extract_archive(archive, work, progress, f"unpack {sf.filename}", unpack_limit(sf))
    if sf.inner:
        inner = work / sf.inner
        if not inner.is_file():
            raise DamagedArchiveError(archive, f"{sf.inner} not found inside")
        inner_work = work.with_name(work.name + "-inner")
        shutil.rmtree(inner_work, ignore_errors=True)
        try:
            extract_archive(inner, inner_work, progress, f"unpack {Path(sf.inner).name}", unpack_limit(sf))
        except DamagedArchiveError as err:  # the download holds it: that is the file to fetch again
            raise DamagedArchiveError(archive, err.message) from None
        shutil.rmtree(work)
        work = inner_work
    for src, dst in sf.moves:
        origin = work / src
        if not origin.exists():
            raise DamagedArchiveError(archive, f"'{src}' not found inside (not the published archive)")
        children = sorted(origin.iterdir()) if not dst else [origin]
        for child in children:
            target = stage_dir / (dst or child.name)
            target.parent.mkdir(parents=True, exist_ok=True)
            child.replace(target)
    shutil.rmtree(work)


def _work_dir(stage_dir: Path, sf: SourceFile) -> Path:
    """Where ``sf`` is unpacked before its entries move into the staged dataset folder."""
    stage_root = next((p for p in stage_dir.parents if p.name == STAGE), stage_dir.parent)
    return stage_root.parent / f"unpack-{sf.filename}"


def move_into_place(stage_dir: Path, folder: Path) -> list[str]:
    """Move the staged tree into ``folder``: one rename if it does not exist, else each
    top-level entry it lacks. Never replaces an existing path. Returns the entries moved."""
    entries = sorted(p.name for p in stage_dir.iterdir())
    if not folder.exists():
        stage_dir.replace(folder)
        return entries
    moved = []
    for entry in entries:
        if not (folder / entry).exists():
            (stage_dir / entry).replace(folder / entry)
            moved.append(entry)
    return moved


# --------------------------------------------------------------------------- one dataset


@dataclass
class GetResult:
    name: str
    folder: Path
    fetched: list[str] = field(default_factory=list)  # file names downloaded (or resumed) now
    skipped: list[str] = field(default_factory=list)  # file names whose paths were already there
    digests: dict[str, str] = field(default_factory=dict)  # file name -> checksum seen ("algo:hex")
    unverified: list[str] = field(default_factory=list)  # fetched files with no published checksum


def get_dataset(plan: DatasetPlan, *, progress: Progress = _no_progress, keep_archives: bool = False) -> GetResult:
    """Fetch, verify, unpack and move into place what ``plan`` marks "fetch"."""
    refuse_partial(plan)
    result = GetResult(plan.name, plan.folder)
    result.skipped = [f.source.filename for f in plan.files if f.state == "present"]
    todo = plan.to_fetch
    if not todo:
        return result
    stage_root = plan.downloads / STAGE
    stage_dir = _staged_folder(plan, stage_root)
    _clean_staging(plan, stage_root)  # ours: leftovers of an interrupted or failed unpack
    stage_dir.mkdir(parents=True)
    fetched: list[Path] = []
    try:
        for fp in todo:
            sf = fp.source
            path = plan.downloads / sf.filename
            if not path.is_file():  # <file> appears only once complete and verified; until then <file>.part
                part = path.with_name(f"{sf.filename}.part")
                fetch(fp.url, part, size_hint=sf.size, progress=progress, stage=f"{plan.name}: {sf.filename}")
                result.digests[sf.filename] = verify(part, sf, progress, f"verify {sf.filename}")
                part.replace(path)
            else:
                result.digests[sf.filename] = sf.checksum or "sha256:(kept from an earlier run)"
            fetched.append(path)
            result.fetched.append(sf.filename)
            if not sf.checksum:
                result.unverified.append(sf.filename)
            _refuse_html(path, sf)
            if sf.is_archive:
                unpack(path, sf, stage_dir, progress)
            else:
                target = stage_dir / sf.dest
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
        validate_staged(plan, stage_dir, progress)
    except DamagedArchiveError as err:
        _clean_staging(plan, stage_root)
        err.archive.unlink(missing_ok=True)
        raise DownloadError(
            f"{plan.name}: {err.message}; it was deleted, nothing was moved into {plan.folder}",
            f"rerun `cacheclip data get {plan.name}` to download it again (if it fails the same way, "
            "the server or --mirror sends a damaged file)",
        ) from None
    except DownloadError as err:
        if not isinstance(err, LayoutInvalidError):
            _clean_staging(plan, stage_root)  # a failed or cut download: its .part is kept to resume
            raise
        _clean_staging(plan, stage_root)
        for path in fetched:
            path.unlink(missing_ok=True)
        raise DownloadError(
            f"{err.message}; the downloads ({', '.join(p.name for p in fetched)}) were deleted, "
            f"nothing was moved into {plan.folder}",
            f"rerun `cacheclip data get {plan.name}` to download them again (if it fails the same way, "
            "the server or --mirror sends other files than the published ones)",
        ) from None
    except BaseException:  # the disk, Ctrl-C...: the downloads are kept (they resume), the staging is not
        _clean_staging(plan, stage_root)
        raise
    move_into_place(stage_dir, plan.folder)
    _clean_staging(plan, stage_root)  # what was already there stays in place; the rest is ours
    if not keep_archives:
        shutil.rmtree(plan.downloads, ignore_errors=True)
        _remove_if_empty(plan.downloads.parent)
    return result


def _staged_folder(plan: DatasetPlan, stage_root: Path) -> Path:
    """The dataset folder being staged: where load_dataset finds it with ``stage_root`` as the root."""
    return stage_root / plan.folder.relative_to(plan.downloads.parent.parent)


def _clean_staging(plan: DatasetPlan, stage_root: Path) -> None:
    """Remove the staging folder and every unpack folder of ``plan`` (never the downloads)."""
    shutil.rmtree(stage_root, ignore_errors=True)
    for fp in plan.files:
        work = _work_dir(_staged_folder(plan, stage_root), fp.source)
        for folder in (work, work.with_name(work.name + "-inner")):
            shutil.rmtree(folder, ignore_errors=True)


class LayoutInvalidError(DownloadError):
    """The unpacked downloads do not make the layout `extract` reads."""


def validate_staged(plan: DatasetPlan, stage_dir: Path, progress: Progress = _no_progress) -> None:
    """The staged dataset folder is a layout `extract` can read: each JSON file parses and, where
    the whole folder comes by download, the dataset loads and every item is a regular, readable
    image. LayoutInvalidError otherwise."""
    from cacheclip.datasets.check import scan_items  # check imports the layouts, not us
    from cacheclip.datasets.layouts import load_dataset

    for path in sorted(stage_dir.rglob("*.json")):
        try:
            json.loads(path.read_bytes())
        except (ValueError, RecursionError) as err:
            raise LayoutInvalidError(
                f"{plan.name}: {path.relative_to(stage_dir)} is not valid JSON ({err})", ""
            ) from None
    if plan.source.manual or plan.folder.exists():
        # the rest comes by hand, or the folder holds the user's files (never judged here: only
        # the paths it lacks are added, and `data check` runs next): nothing more to validate
        return
    try:
        ds = load_dataset(plan.name, stage_dir.parent)
        items = list({it.path: it for it in ds.train + ds.val + ds.test}.values())
        bad = scan_items(ds.image_root, items, progress=progress, stage=f"validate {plan.name}")
    except CacheClipError as err:
        raise LayoutInvalidError(f"{plan.name}: the downloads do not make a valid layout: {err.message}", "") from None
    for paths, what in (
        (bad.missing, "missing"),
        (bad.not_regular, "not regular files"),
        (bad.unreadable, "unreadable"),
    ):
        if paths:
            raise LayoutInvalidError(
                f"{plan.name}: the downloads do not make a valid layout: {len(paths)} of {len(items)} images are "
                f"{what} (e.g. {', '.join(paths[:3])})",
                "",
            )


def _refuse_html(path: Path, sf: SourceFile) -> None:
    """A sign-in, quota or error page served with status 200 instead of the file (Google Drive does
    this); only files with no published checksum can get this far."""
    with open(path, "rb") as f:
        head = f.read(512).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        path.unlink()
        raise DownloadError(
            f"{sf.filename}: the server sent an HTML page instead of the file (a quota, sign-in or error page)",
            f"try again later, or fetch {sf.url} in a browser into the dataset folder, then `cacheclip data check`",
        )


def _remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass
