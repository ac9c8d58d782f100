"""`cacheclip data list | get | check` (and `cacheclip datasets`, an alias of `data list`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cacheclip.cli import common as c
from cacheclip.cli.app import app

data_app = typer.Typer(
    no_args_is_help=True,
    help="Datasets: list them, download them into CoOp's layout (get), verify them (check).",
)
app.add_typer(data_app, name="data")

# What Ctrl-C keeps (shown by the CLI's interrupt line; see common.interrupted_message).
c._KEPT.setdefault("data", "finished downloads are kept in <root>/.cacheclip-downloads and the one in flight resumes")

NamesArg = Annotated[list[str], typer.Argument(help="Dataset names (comma lists and 'all'/'coop11' work).")]
MirrorOpt = Annotated[
    str | None,
    typer.Option(
        "--mirror",
        envvar="CACHECLIP_MIRROR",
        help="Base URL replacing every source: files are fetched from <mirror>/<dataset>/<file name>.",
    ),
]
SourcesOpt = Annotated[
    Path | None,
    typer.Option(
        "--sources",
        envvar="CACHECLIP_SOURCES",
        help="JSON overriding checksums, sizes or split counts per dataset (for a mirror with repacked files).",
    ),
]


@data_app.command("list")
def data_list() -> None:
    """List the dataset names, the folder each is expected in, and how it is obtained."""
    from cacheclip.datasets.catalog import get_dataset_spec, list_datasets
    from cacheclip.datasets.sources import list_sources

    with_sources = set(list_sources())
    table = Table("name", "folder under --root", "data get")
    for name in list_datasets():
        how = "download" if name in with_sources else "—"
        if name in with_sources and _manual(name):
            how = "split file only; images by hand"
        table.add_row(name, get_dataset_spec(name).folder + "/", how)
    table.add_row("imagefolder:PATH", "any folder with one sub-folder per class", "—")
    c.out.print(table)


@app.command("datasets")
def datasets() -> None:
    """Alias of `cacheclip data list`."""
    data_list()


def _manual(name: str) -> str:
    from cacheclip.datasets.sources import get_source

    return get_source(name).manual


ROOT_FLAG = "--root"


def _data_root(root: Path | None, create: bool) -> Path:
    import os

    from cacheclip.datasets.catalog import DATA_ENV, resolve_data_root
    from cacheclip.errors import require_writable_dir

    wanted = Path(root).expanduser() if root is not None else None
    if wanted is None and os.environ.get(DATA_ENV, ""):
        wanted = Path(os.environ[DATA_ENV]).expanduser()
    if create and wanted is not None and not wanted.is_dir():
        require_writable_dir(wanted, ROOT_FLAG)  # names --root, not only "permission denied"
        wanted.mkdir(parents=True, exist_ok=True)
    return resolve_data_root(root)


@contextmanager
def _bytes_bar() -> Iterator[c.StageProgress]:
    import os

    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    ]
    quiet = not c.console.is_terminal and bool(os.environ.get("CI"))
    with Progress(*columns, console=c.console, transient=False, disable=quiet) as progress:
        yield c.StageProgress(progress, "B")


@data_app.command("get")
def get(
    names: NamesArg,
    root: c.RootOpt = None,
    mirror: MirrorOpt = None,
    sources: SourcesOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would be fetched, from where, how much.")
    ] = False,
    keep_archives: Annotated[bool, typer.Option("--keep-archives", help="Keep the archives after unpacking.")] = False,
) -> None:
    """Download datasets into CoOp's layout under --root, verified, then run `data check` on them.

    Interrupted downloads resume; existing complete layouts are left alone; nothing of yours is
    overwritten."""
    from cacheclip.datasets import download as dl
    from cacheclip.datasets.catalog import expand_names
    from cacheclip.datasets.sources import load_overrides

    names = expand_names(names)
    if dry_run and root is not None and not root.expanduser().is_dir():  # a plan may name a root to come
        data_root = root.expanduser().absolute()
    else:
        data_root = _data_root(root, create=not dry_run)
    base = dl.mirror_base(mirror)
    overrides = load_overrides(sources)
    plans = [dl.plan_dataset(n, data_root, mirror=base, overrides=overrides) for n in names]
    if dry_run:
        _print_plan(plans, data_root)
        return
    for plan in plans:
        dl.refuse_partial(plan)
    if any(plan.to_fetch for plan in plans):  # a root holding everything already may be read-only
        from cacheclip.errors import require_writable_dir

        require_writable_dir(data_root, ROOT_FLAG)
    dl.check_free_space(plans, data_root)

    def work(plan):
        with _bytes_bar() as bar:
            got = dl.get_dataset(plan, progress=bar, keep_archives=keep_archives)
        if got.fetched:
            c.out.print(f"{plan.name}: fetched {', '.join(got.fetched)} into {plan.folder}", highlight=False)
        else:
            c.out.print(f"{plan.name}: already in place in {plan.folder}, left alone", highlight=False)
        for filename in got.unverified:
            c.out.print(
                f"{plan.name}: note: {filename} has no published checksum; seen {got.digests[filename]}",
                highlight=False,
            )
        return plan.name

    done, failed = c.per_dataset(plans, work)  # one dataset's failure does not stop the others
    problems = _check_and_print(done, data_root, overrides)
    c.exit_on_failures([p.name for p in failed], len(plans))
    if problems:
        raise typer.Exit(1)


def _print_plan(plans, data_root: Path) -> None:
    """One line per file: dataset, file, size, state, where it goes, from where."""
    import shutil

    from cacheclip.datasets.download import human_bytes

    for plan in plans:
        for fp in plan.files:
            state = fp.state + (f", {human_bytes(fp.have)} already here" if fp.have and fp.state == "fetch" else "")
            to = ", ".join(f"{plan.folder}/{t}" for t in fp.source.targets)
            c.out.print(
                f"{plan.name}  {fp.source.filename}  {human_bytes(fp.source.size)}  [{state}]  -> {to}  from {fp.url}",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
        if plan.source.manual:
            text = plan.source.manual.format(folder=plan.folder)
            c.out.print(f"{plan.name}  by hand: {text}", highlight=False, markup=False, soft_wrap=True)
    need = sum(p.disk_bytes for p in plans)
    down = sum(p.download_bytes for p in plans)
    free = shutil.disk_usage(data_root).free if data_root.exists() else 0
    c.out.print(
        f"would download about {human_bytes(down)}; needs about {human_bytes(need)} on disk "
        f"(downloads + unpacked); {human_bytes(free)} free under {data_root}",
        highlight=False,
    )


@data_app.command("check")
def check(
    names: Annotated[
        list[str] | None, typer.Argument(help="Dataset names (default: every dataset under --root).")
    ] = None,
    root: c.RootOpt = None,
    sources: SourcesOpt = None,
    deep: Annotated[
        bool, typer.Option("--deep", help="Decode every image fully (slow; finds truncated files).")
    ] = False,
) -> None:
    """Verify datasets: layout, split file (published hash where pinned), counts, every image readable.

    One line per dataset; exit 1 on any problem, each with the command that fixes it."""
    from cacheclip.datasets.catalog import dataset_folder, expand_names, list_datasets
    from cacheclip.datasets.sources import load_overrides

    data_root = _data_root(root, create=False)
    overrides = load_overrides(sources)
    if names:
        chosen = expand_names(names)
    else:
        chosen = [n for n in list_datasets() if dataset_folder(n, data_root).is_dir()]
        if not chosen:
            c.out.print(f"no dataset folders under {data_root}; see `cacheclip data list`", highlight=False)
            raise typer.Exit(1)
    if _check_and_print(chosen, data_root, overrides, deep=deep):
        raise typer.Exit(1)


def _check_and_print(names: list[str], data_root: Path, overrides: dict, deep: bool = False) -> int:
    """`data check` on ``names``: one line each; returns the number of problems."""
    from cacheclip.datasets.check import check_dataset

    problems = 0
    for name in names:
        with c.progress_bar("img") as bar:
            result = check_dataset(name, data_root, overrides=overrides, deep=deep, progress=bar)
        for line in result.warnings:
            c.console.print(f"[bold yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)
        if result.ok:
            counts = "/".join(map(str, result.counts or ()))
            c.out.print(
                f"{name}: ok ({counts} train/val/test, split sha256 {result.split_sha256[:12]})", highlight=False
            )
            continue
        for p in result.problems:
            problems += 1
            c.out.print(f"{escape(p.message)}  [yellow]fix:[/] {escape(p.fix)}", highlight=False, soft_wrap=True)
    return problems
