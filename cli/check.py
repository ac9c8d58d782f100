"""`cacheclip check`: verify every feature store, one line per problem with its repair."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from cacheclip.cli import common as c
from cacheclip.cli.app import app


@app.command()
def check(
    dataset: c.DatasetOpt = None,
    cache_dir: c.CacheDirOpt = Path("cache"),
    quick: Annotated[bool, typer.Option("--quick", help="Structure only: skip reading every byte.")] = False,
) -> None:
    """Verify stores: structure, checksums, inputs unchanged, leftovers. Exit 1 on any problem."""
    from cacheclip.datasets.catalog import expand_names, store_name
    from cacheclip.features.check import check_store, health
    from cacheclip.features.store import find_stores

    stores = find_stores(cache_dir)
    if dataset:
        wanted = {store_name(n) for n in expand_names(c.split_names(dataset))}
        stores = [p for p in stores if p.stem in wanted]
    if not stores:
        c.console.print(f"no stores to check under {escape(str(cache_dir))}", highlight=False)
        raise typer.Exit(1)
    bad = 0
    for path in stores:
        if quick:
            state = health(path)
            problems, notes = ([] if state == "ok" else [state]), []
        else:
            with c.console.status(f"checking {path}"):
                result = check_store(path, in_cache=True)
            problems, notes = result.problems, result.notes
        bad += bool(problems)
        mark = "[green]ok[/]" if not problems else f"[bold red]{len(problems)} problem(s)[/]"
        c.out.print(f"{mark}  {escape(str(path))}", highlight=False)
        for line in problems:
            c.out.print(f"  [red]-[/] {escape(line)}", highlight=False, soft_wrap=True)
        for line in notes:
            c.out.print(f"  [dim]note: {escape(line)}[/]", highlight=False, soft_wrap=True)
    if bad:
        c.console.print(f"[bold red]{bad} of {len(stores)} stores have problems[/]", highlight=False)
        raise typer.Exit(1)
