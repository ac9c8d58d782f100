"""Shared CLI pieces: option aliases, list parsing, the error boundary, progress display.

Heavy imports (torch, open_clip, h5py) happen inside commands so `--help` is instant.
"""

from __future__ import annotations

import logging
import os
import shlex
import warnings
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)
out = Console(width=max(120, Console().width))

DEBUG_ENV = "CACHECLIP_DEBUG"

# ---------------------------------------------------------------- option aliases (declared once)
DatasetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--dataset",
        "-d",
        help="Dataset name(s): a CoOp name (eurosat, imagenet, ...), 'all', imagenet-shift, or imagefolder:PATH. "
        "Repeat or comma-separate.",
    ),
]
RootOpt = Annotated[
    Path | None, typer.Option("--root", help="Data root holding the dataset folders (default: $CACHECLIP_DATA).")
]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="open_clip model name, or path to a model-config JSON.")]
PretrainedOpt = Annotated[
    str,
    typer.Option(
        "--pretrained", "-p", help="open_clip weights tag, a local checkpoint file, or 'none' (random weights)."
    ),
]
CacheDirOpt = Annotated[Path, typer.Option("--cache-dir", help="Root of the feature stores.", envvar="CACHECLIP_CACHE")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:N (default: cuda when available).")]
ShotsOpt = Annotated[str, typer.Option("--shots", help="Shots per class, a comma list.")]
SeedsOpt = Annotated[str, typer.Option("--seeds", help="Few-shot sampling seeds, a comma list.")]


def default_device(device: str | None = None) -> str:
    from cacheclip.features.models import resolve_device

    return resolve_device(device)


def _parse_list(text: str, option: str, kind: type, what: str) -> tuple:
    try:
        values = tuple(kind(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated {what}, got '{text}'", param_hint=option) from None
    if not values:
        raise typer.BadParameter("needs at least one value", param_hint=option)
    return values


def parse_ints(text: str, option: str) -> tuple[int, ...]:
    return _parse_list(text, option, int, "integers")


def parse_floats(text: str, option: str) -> tuple[float, ...]:
    return _parse_list(text, option, float, "numbers")


def split_names(values: list[str] | None, option: str = "--dataset") -> list[str]:
    """Comma-separated or repeated names; a given but empty value is an error (never "all")."""
    from cacheclip.errors import ConfigError

    names = [v.strip() for value in values or [] for v in value.split(",") if v.strip()]
    if values is not None and not names:
        raise ConfigError(f"{option} is empty", f"name at least one, e.g. {option} eurosat")
    return names


# ---------------------------------------------------------------- error boundary


def quiet_libraries() -> None:
    """open_clip and huggingface_hub log download retries and init notes at WARNING; we say
    what matters ourselves."""
    logging.basicConfig(level=logging.ERROR)
    for name in ("", "huggingface_hub", "open_clip", "timm"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", category=UserWarning, module="open_clip")
    warnings.filterwarnings("ignore", category=FutureWarning)


def report_error(exc: BaseException) -> int:
    """One line (and a hint) for a user error; exit code 1 (click usage errors: their own, 2).
    Traceback only with CACHECLIP_DEBUG=1."""
    from cacheclip.errors import CacheClipError, environment_fault

    if any(t.__name__ == "ClickException" for t in type(exc).__mro__):  # typer may vendor its own click
        exc.show()  # type: ignore[attr-defined]
        return exc.exit_code  # type: ignore[attr-defined]  # 2 for bad option values
    if os.environ.get(DEBUG_ENV):
        console.print_exception()
    exc = environment_fault(exc) or exc  # a full disk or a read-only folder is the setup, not a bug
    if isinstance(exc, CacheClipError):
        console.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True)
        if exc.hint:
            console.print(f"[yellow]hint:[/] {escape(exc.hint)}", highlight=False, soft_wrap=True)
        return 1
    console.print(
        f"[bold red]error:[/] unexpected {type(exc).__name__}: {escape(str(exc))}", highlight=False, soft_wrap=True
    )
    console.print(f"[yellow]hint:[/] rerun with {DEBUG_ENV}=1 for the traceback, and report it", highlight=False)
    return 1


# ---------------------------------------------------------------- method settings as options

METHOD_PANEL = "Method settings"


def _method_flags() -> dict[str, tuple[str, str, list[str]]]:
    """flag -> (parameter name, help, methods that have it), over every registered method."""
    from cacheclip.fit.methods import get_method, list_methods
    from cacheclip.settings import settings_of, to_text

    flags: dict[str, tuple[str, str, list[str]]] = {}
    for name in list_methods():
        for _, (f, spec, _) in settings_of(get_method(name).config).items():
            if spec.flag:
                default = to_text(f.default, spec.none_word)
                entry = flags.setdefault(
                    spec.flag, ("m_" + spec.flag.lstrip("-").replace("-", "_"), f"{spec.help} [default: {default}]", [])
                )
                entry[2].append(name)
    return flags


def attach_method_options(command, shown: Collection[str] | None = None) -> None:
    """Give ``command`` (which takes ``**method_options``) one text option per method setting,
    so a new method's settings appear on the command line with no change here. Done only for
    the command being run: it imports the methods (and torch).

    Every option is accepted; ``--help`` lists only those of the methods in ``shown`` (all when
    None), so ``fit --method gda --help`` shows GDA's settings and ``fit --help`` none."""
    import inspect

    flags = _method_flags()
    ours = {param for param, _, _ in flags.values()}
    signature = inspect.signature(command, eval_str=True)  # attached again on each call (tests run main often)
    params = [p for p in signature.parameters.values() if p.kind != p.VAR_KEYWORD and p.name not in ours]
    visible = None if shown is None else set(shown)
    own = _own_flags(params)
    for flag, (param, help_text, owners) in flags.items():
        if flag in own:  # the command's own option wins (batch --batch-size: extraction's); TOML sets the method's
            continue
        mine = owners if visible is None else [o for o in owners if o in visible]
        if visible is not None and len(visible) == 1:
            panel, text = f"{next(iter(visible))} settings", help_text
        else:
            panel, text = METHOD_PANEL, f"{', '.join(mine)}: {help_text}"
        # escaped: rich would read "[default: 10]" as a markup tag and drop it
        option = typer.Option(flag, help=escape(text), rich_help_panel=panel, show_default=False, hidden=not mine)
        params.append(
            inspect.Parameter(
                param, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[str | None, option]
            )
        )
    command.__signature__ = signature.replace(parameters=params)


def _own_flags(params) -> set[str]:
    """The option flags a command declares itself (from its ``typer.Option`` declarations, or its
    parameter names)."""
    import typing

    flags = set()
    for p in params:
        infos = [m for m in typing.get_args(p.annotation)[1:] if hasattr(m, "param_decls")]
        # in Annotated form typer keeps the first flag in ``default``
        names = [n for info in infos for n in (info.default, *(info.param_decls or ())) if isinstance(n, str)]
        declared = [d for n in names for d in n.split("/")]
        flags |= {d for d in declared if d.startswith("--")} or {"--" + p.name.replace("_", "-")}
    return flags


def named_methods(argv: list[str], option: str) -> list[str]:
    """The method names given to ``option`` (``--method gda``, ``--methods=a,b``) in ``argv``."""
    values = [b for a, b in zip(argv, argv[1:], strict=False) if a == option]
    values += [a.split("=", 1)[1] for a in argv if a.startswith(option + "=")]
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


def given_method_options(method_options: dict[str, str | None]) -> dict[str, str]:
    """flag -> text of the method options given on the command line."""
    by_param = {param: flag for flag, (param, _, _) in _method_flags().items()}
    return {by_param[k]: v for k, v in method_options.items() if v is not None and k in by_param}


def method_config(method: str, method_options: dict[str, str | None]):
    """``method``'s config from its defaults and the options given; an option of another
    method is a usage error (exit 2) naming the methods that have it."""
    from cacheclip.errors import ConfigError
    from cacheclip.fit.methods import get_method
    from cacheclip.settings import build, describe_setting, from_text, settings_of

    flags = _method_flags()
    specs = {
        spec.flag: (key, kind, spec.none_word, spec.most)
        for key, (_, spec, kind) in settings_of(get_method(method).config).items()
        if spec.flag
    }
    values = {}
    for flag, text in given_method_options(method_options).items():
        if flag not in specs:
            raise typer.BadParameter(f"is a setting of {', '.join(flags[flag][2])}, not of {method}", param_hint=flag)
        key, kind, none_word, most = specs[flag]
        try:
            values[key] = from_text(kind, text, flag, "options", none_word, most)
        except ConfigError:
            raise typer.BadParameter(
                f"must be {describe_setting(kind, none_word, most)}, got {text!r}", param_hint=flag
            ) from None
    return build(get_method(method).config, values, "options")


# ---------------------------------------------------------------- one dataset at a time

T = TypeVar("T")


def per_dataset(names: list[str], work: Callable[[str], T]) -> tuple[list[T], list[str]]:
    """``work(name)`` for each dataset: (results, names that failed). One dataset's failure is
    reported and does not stop the others; a lone dataset's error goes to the error boundary."""
    results, failures = [], []
    for name in names:
        try:
            results.append(work(name))
        except Exception as e:
            if len(names) == 1:
                raise
            report_error(e)
            failures.append(name)
    return results, failures


def exit_on_failures(failures: list[str], total: int) -> None:
    if failures:
        console.print(f"[bold red]{len(failures)} of {total} datasets failed:[/] {', '.join(failures)}")
        raise typer.Exit(1)


# What an interrupted command keeps: every writer is atomic or resumable by design.
_KEPT = {
    "extract": "every finished chunk of images is kept in the store's .parts folder",
    "fit": "every finished run is kept (its result.json)",
    "batch": "finished runs and extracted chunks are kept",
    "demo": "finished runs and extracted chunks are kept",
}


def interrupted_message(argv: list[str]) -> str:
    """One line for Ctrl-C: what was kept and the command that resumes."""
    command = next((a for a in argv[1:] if not a.startswith("-")), "")
    kept = _KEPT.get(command, "nothing is left half-written")
    return f"interrupted: {kept}; resume with: {shlex.join(['cacheclip', *argv[1:]])}"


# ---------------------------------------------------------------- progress


class StageProgress:
    """Adapts the library's (stage, done, total) callbacks to one rich progress bar per stage."""

    def __init__(self, progress: Progress, unit: str = "img"):
        self.progress, self.unit, self.tasks = progress, unit, {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total)
        self.progress.update(self.tasks[stage], completed=done, total=total)


@contextmanager
def progress_bar(unit: str = "img", disable: bool = False) -> Iterator[StageProgress]:
    columns = [
        TextColumn("[bold]{task.description:>12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        _SpeedColumn(unit),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    ]
    quiet = disable or (not console.is_terminal and bool(os.environ.get("CI")))
    with Progress(*columns, console=console, transient=False, disable=quiet) as progress:
        yield StageProgress(progress, unit)


class _SpeedColumn(TextColumn):
    def __init__(self, unit: str):
        super().__init__("")
        self.unit = unit

    def render(self, task):  # type: ignore[override]
        from rich.text import Text

        speed = task.finished_speed or task.speed
        return Text(f"{speed:7.1f} {self.unit}/s" if speed else f"{'':>7} {self.unit}/s")


def results_table(results: list[dict], seeds: tuple[int, ...]):
    """dataset, shots, zero-shot, test top-1 per seed, mean ± std over seeds."""
    import statistics

    from rich.table import Table

    table = Table(
        "dataset", "method", "shots", "zero-shot", *[f"seed {s}" for s in seeds], "mean ± std", "chosen on val"
    )
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["dataset"], r["method"], r["shots"]), []).append(r)
    for (name, method, shots), runs in sorted(groups.items()):
        by_seed = {r["seed"]: r for r in runs}
        accs = [r["metrics"]["test"]["top1"] for r in runs]
        spread = f"{statistics.mean(accs):.2f} ± {statistics.stdev(accs):.2f}" if len(accs) > 1 else f"{accs[0]:.2f}"
        chosen = sorted({", ".join(f"{k}={_short(v)}" for k, v in r["selection"]["chosen"].items()) for r in runs})
        table.add_row(
            name,
            method,
            str(shots),
            f"{runs[0]['zero_shot']['test']['top1']:.2f}",
            *[f"{by_seed[s]['metrics']['test']['top1']:.2f}" if s in by_seed else "—" for s in seeds],
            spread,
            "; ".join(chosen),
        )
    return table


def _short(value) -> str:
    """A chosen value for the results table: numbers compact (0.001 -> 0.001, 1e-05), the rest as is."""
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)
