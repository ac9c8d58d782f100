"""The typer app every command module registers on (no commands here), and the order
`cacheclip --help` lists them in: the work in its order, then the tools."""

import typer
from typer.core import TyperGroup

WORK = ("data", "extract", "fit", "batch", "report", "predict")  # the order of the work
TOOLS = ("demo", "methods", "datasets", "models", "ls", "check", "export")
TOOLS_PANEL = "Tools"


class WorkOrder(TyperGroup):
    """Lists the commands in the order of the work (``WORK``), then the tools (``TOOLS``, in a panel
    of their own), then any other command in the order it was registered."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name, command in self.commands.items():
            if name not in WORK and not getattr(command, "rich_help_panel", None):  # unset: a falsy placeholder
                command.rich_help_panel = TOOLS_PANEL

    def list_commands(self, ctx) -> list[str]:
        ordered = [n for n in (*WORK, *TOOLS) if n in self.commands]
        return ordered + [n for n in self.commands if n not in ordered]


app = typer.Typer(
    name="cacheclip",
    cls=WorkOrder,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Few-shot CLIP adaptation on cached open_clip features: extract once, fit in seconds. "
    "The work, in order: data, extract, fit (or batch for both), report, predict. "
    "Start with `cacheclip demo`; `cacheclip COMMAND --help` for each command.",
)
