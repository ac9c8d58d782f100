"""The typer app every command module registers on (no commands here)."""

import typer

app = typer.Typer(
    name="cacheclip",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Few-shot CLIP adaptation on cached open_clip features: extract once, fit in seconds.",
)
