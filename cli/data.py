"""`cacheclip datasets`: the dataset names and their folders."""

from __future__ import annotations

from rich.table import Table

from cacheclip.cli import common as c
from cacheclip.cli.app import app


@app.command()
def datasets() -> None:
    """List the dataset names and the folder each is expected in."""
    from cacheclip.datasets.catalog import get_dataset_spec, list_datasets

    table = Table("name", "folder under --root")
    for name in list_datasets():
        table.add_row(name, get_dataset_spec(name).folder + "/")
    table.add_row("imagefolder:PATH", "any folder with one sub-folder per class")
    c.out.print(table)
