"""`cacheclip batch`, `cacheclip report` and `cacheclip demo`: parse -> one library call -> render."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column, Table
from rich.text import Text

from cacheclip.cli import common as c
from cacheclip.cli.app import app

Names = list[str] | None


class BatchDisplay:
    """One rich display for a batch: units done, runs trained (with ETA), and the current stage."""

    def __init__(self, progress: Progress):
        from cacheclip.batch.runner import DATASETS, RUNS

        self.progress, self.names = progress, (DATASETS, RUNS)
        self.units = progress.add_task("datasets x models", total=None)
        self.runs = progress.add_task("runs to train", total=None)
        self.stage, self.current = progress.add_task("starting", total=None), "starting"

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage in self.names:
            self.progress.update(self.units if stage == self.names[0] else self.runs, completed=done, total=total)
            return
        if stage != self.current:  # a new stage: restart its clock and ETA
            self.current = stage
            self.progress.reset(self.stage, total=total, description=stage)
        self.progress.update(self.stage, completed=done, total=total)


def _exit(code: int) -> None:
    """Exit with ``code``. Not typer.Exit: under ``app(standalone_mode=False)`` (cacheclip.cli.main.main) typer
    returns that code instead of exiting, and main() drops it."""
    raise SystemExit(code)


def _run_batch(config):
    """run_batch under the display, with its log file beside the results."""
    from cacheclip.batch.runner import open_log, run_batch

    description = Column(width=44, no_wrap=True, overflow="ellipsis")
    columns = [
        TextColumn("{task.description}", markup=False, table_column=description),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    ]
    with open_log(config.results_dir) as log:
        _say(c.console, f"log: {log.path}")
        with Progress(*columns, console=c.console) as progress:
            summary = run_batch(config, progress=BatchDisplay(progress), log=log)
    return summary, log.path


def _say(console, text: str) -> None:
    """Print plain text: paths and messages may hold brackets that rich would read as markup."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def table_of_runs(config):
    """The runs' table: test top-1 per seed, or base / new / H for a base-to-new batch."""
    from cacheclip.cli.fit import base_to_new_table

    return base_to_new_table if config.fit.classes == "base-to-new" else c.results_table


def _print_summary(summary, log_path: Path, runs_table: bool = True) -> None:
    for w in summary.warnings:
        c.console.print("[bold yellow]warning:[/]", escape(w), highlight=False, soft_wrap=True)
    for spec in summary.config.models if runs_table else ():
        results = [r for o in summary.outcomes if o.model == spec for r in o.results]
        if results:
            c.out.print(Text(spec.label, style="bold"))
            c.out.print(table_of_runs(summary.config)(results, summary.config.seeds))
    ok = [o for o in summary.outcomes if o.status == "ok"]
    _say(
        c.out,
        f"{len(ok)} of {len(summary.outcomes)} datasets done ({sum(o.runs_new for o in ok)} runs "
        f"trained now, {sum(o.runs_skipped for o in ok)} were done) in {summary.seconds:.1f}s; "
        f"results in {summary.config.results_dir}/",
    )
    not_run = [f"{o.model.label} {o.dataset}" for o in summary.outcomes if o.status == "not run"]
    if not_run:
        _say(c.console, "not run (--fail-fast): " + ", ".join(not_run))
    for o in summary.failed:
        c.console.print(
            "[bold red]failed:[/]", escape(f"{o.model.label} {o.dataset}: {o.error}"), highlight=False, soft_wrap=True
        )
        if o.hint:
            c.console.print("  [yellow]hint:[/]", escape(o.hint), highlight=False, soft_wrap=True)
        _say(c.console, f"  retry: {o.retry}")
    _say(c.console, f"log: {log_path}")


def _print_plan(plan) -> int:
    from cacheclip.batch.runner import error_message

    table = Table("model", "dataset", "extract", "runs done", "to run", "status")
    errors = 0
    for item in plan:
        if item.error is not None:
            errors += 1
            table.add_row(
                item.model.label, item.dataset, "", "", "", Text(f"error: {error_message(item.error)}", style="red")
            )
            continue
        status = "done" if not item.runs_left and not item.extract else "would run"
        table.add_row(
            item.model.label,
            item.dataset,
            item.extract or "up to date",
            f"{item.runs_done}/{item.runs_total}",
            str(item.runs_left),
            status,
        )
    c.out.print(table)
    left = sum(i.runs_left for i in plan if i.error is None)
    done = sum(i.runs_done for i in plan if i.error is None)
    _say(
        c.out,
        f"dry run: {done} runs done, {left} to run, {errors} datasets with errors (nothing was extracted or trained)",
    )
    return errors


def _model_specs(model: Names, pretrained: Names, config_file: Path | None):
    from cacheclip.batch.runner import ModelSpec
    from cacheclip.common import DEFAULT_MODEL, DEFAULT_PRETRAINED

    if not model and not pretrained:
        return None
    if not model:
        if config_file is not None:
            raise typer.BadParameter(
                "with --config, give --model too (the pair replaces the file's models)", param_hint="--pretrained"
            )
        model = [DEFAULT_MODEL]
    pretrained = pretrained or [DEFAULT_PRETRAINED]
    if len(pretrained) == 1:
        pretrained = pretrained * len(model)
    if len(pretrained) != len(model):
        raise typer.BadParameter(
            f"{len(model)} --model but {len(pretrained)} --pretrained: give one per model, "
            "in the same order (or a single one for all)",
            param_hint="--pretrained",
        )
    return [ModelSpec(m, p) for m, p in zip(model, pretrained, strict=False)]


@app.command()
def batch(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML file of batch settings (options override it).")
    ] = None,
    datasets: Annotated[
        Names,
        typer.Option(
            "--datasets", "--dataset", "-d", help="Dataset names, 'coop11' or 'all'. Repeat or comma-separate."
        ),
    ] = None,
    root: c.RootOpt = None,
    model: Annotated[
        Names,
        typer.Option(
            "--model", "-m", help="open_clip model or config JSON; repeat for several (pairs with --pretrained)."
        ),
    ] = None,
    pretrained: Annotated[
        Names, typer.Option("--pretrained", "-p", help="Weights tag, checkpoint file or 'none'; one per --model.")
    ] = None,
    methods: Annotated[
        str | None, typer.Option(help="Few-shot methods, a comma list (see `cacheclip methods`).")
    ] = None,
    shots: Annotated[str | None, typer.Option(help="Shots per class, a comma list [1,2,4,8,16].")] = None,
    seeds: Annotated[str | None, typer.Option(help="Few-shot seeds, a comma list [1,2,3].")] = None,
    views: Annotated[
        str | None, typer.Option(help="aug (cached augmented views) or clean (no augmentation) [aug].")
    ] = None,
    no_val: Annotated[str | None, typer.Option(help="Datasets without val (ImageNet): none or holdout [none].")] = None,
    protocol: Annotated[
        str | None, typer.Option(help="fewshot (few-shot val only) or official (each paper's protocol) [fewshot].")
    ] = None,
    epoch: Annotated[
        str | None, typer.Option(help="Trained methods keep the last or the best-val epoch [last].")
    ] = None,
    classes: Annotated[
        str | None,
        typer.Option(help="all, or base-to-new: train on half the classes, test on both halves (CoCoOp) [all]."),
    ] = None,
    classifier: Annotated[
        str | None, typer.Option(help="Text classifier: paper, single, ensemble or single+ensemble [paper].")
    ] = None,
    targets: Annotated[
        str | None, typer.Option(help="ImageNet fits also tested on these, e.g. imagenet-shift [none].")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N [auto].")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Root of the feature stores [cache].")] = None,
    results_dir: Annotated[
        Path | None, typer.Option("--results-dir", "--results", help="Results and batch logs [results].")
    ] = None,
    aug_views: Annotated[int | None, typer.Option(min=0, help="Augmented views cached per train image [10].")] = None,
    templates: Annotated[str | None, typer.Option(help="Prompt template set or file [default].")] = None,
    workers: Annotated[int | None, typer.Option(min=0, help="Image-decoding processes during extract.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per forward pass during extract [64].")] = None,
    precision: Annotated[str | None, typer.Option(help="Extract precision: auto, fp32 or amp [auto].")] = None,
    fail_fast: Annotated[
        bool | None, typer.Option("--fail-fast/--no-fail-fast", help="Stop at the first failing dataset.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what is done and what would run; build no model.")
    ] = False,
    **method_options: str | None,  # one option per method setting (cli.common.attach_method_options)
) -> None:
    """Extract what is missing, then fit every run: datasets x models x shots x seeds. Resumable.

    The methods' own settings: `cacheclip batch --methods NAME[,NAME] --help` (or `cacheclip methods NAME`).
    """
    from cacheclip.batch.runner import load_config, plan_batch

    raw = {
        "datasets": c.split_names(datasets) or None,
        "root": root and str(root),
        "models": _model_specs(model, pretrained, config),
        "methods": methods and c.split_names([methods]),
        "shots": shots and c.parse_ints(shots, "--shots"),
        "seeds": seeds and c.parse_ints(seeds, "--seeds"),
        "views": views,
        "no_val": no_val,
        "protocol": protocol,
        "epoch": epoch,
        "classes": classes,
        "classifier": classifier,
        "targets": targets and c.split_names([targets], "--targets"),
        "device": device,
        "cache_dir": cache_dir and str(cache_dir),
        "results_dir": results_dir and str(results_dir),
        "aug_views": aug_views,
        "templates": templates,
        "workers": workers,
        "batch_size": batch_size,
        "precision": precision,
        "fail_fast": fail_fast,
    }
    cfg = load_config(config, {k: v for k, v in raw.items() if v is not None}, c.given_method_options(method_options))
    if dry_run:
        if _print_plan(plan_batch(cfg)):
            _exit(1)
        return
    summary, log_path = _run_batch(cfg)
    _print_summary(summary, log_path)
    if not summary.ok:
        _exit(1)


@app.command()
def report(
    results: Annotated[Path, typer.Option("--results", "--results-dir", "-r", help="Folder of result JSONs.")] = Path(
        "results"
    ),
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Where report.md/.csv/.png go [RESULTS/report].")
    ] = None,
    datasets: Annotated[
        Names, typer.Option("--datasets", "--dataset", "-d", help="Only these datasets (missing ones are marked).")
    ] = None,
    shots: Annotated[str | None, typer.Option(help="Only these shots, a comma list (missing ones are marked).")] = None,
    seeds: Annotated[str | None, typer.Option(help="Expected seeds, a comma list (missing ones are marked).")] = None,
) -> None:
    """Tables (Markdown, CSV) and the few-shot figure from result JSONs; partial results welcome."""
    from cacheclip.datasets.catalog import expand_names
    from cacheclip.results.write import write_report

    names = expand_names(c.split_names(datasets)) if datasets else None
    shot_list = c.parse_ints(shots, "--shots") if shots else None
    seed_list = c.parse_ints(seeds, "--seeds") if seeds else None
    paths = write_report(
        [results],
        out or results / "report",
        names,
        shot_list,
        seed_list,
        keep=lambda r: (
            (names is None or r.get("dataset") in names)
            and (shot_list is None or r.get("shots") in shot_list)
            and (seed_list is None or r.get("seed") in seed_list)
        ),
    )
    _say(c.out, paths["md"].read_text("utf-8"))
    _say(c.console, "wrote " + ", ".join(str(p) for p in paths.values()))


@app.command()
def demo(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the demo's data, model, stores and results.")
    ] = Path("cacheclip-demo"),
) -> None:
    """Try cacheclip in a minute, offline: synthetic data, a tiny random-weight model, the fast methods side by side."""
    import torch

    from cacheclip.batch.demo import REAL_COMMAND, headline, prepare_demo, side_by_side
    from cacheclip.results.write import write_report

    torch.set_num_threads(1)  # tiny tensors: threads only add overhead (and stall on a busy machine)
    start = time.perf_counter()
    c.console.print(
        "[bold]cacheclip demo[/]: two small SYNTHETIC datasets and a tiny model with RANDOM weights,"
        " so the numbers only show the pipeline working, not CLIP's accuracy.",
        highlight=False,
    )
    toml, cfg = prepare_demo(out)
    _say(c.console, f"data, model and batch config in {out}/ (config: {toml})")
    summary, log_path = _run_batch(cfg)
    _print_summary(summary, log_path, runs_table=False)  # the report's side-by-side table says it shorter
    if not summary.ok:
        _exit(1)
    paths = write_report([Path(cfg.results_dir)], out / "report")
    _say(c.out, "\n" + side_by_side(paths["md"].read_text("utf-8")) + "\n")
    for shots, (zs, ours) in headline(summary.results).items():
        _say(c.out, f"{shots}-shot: CLIP-Adapter {ours:.1f}% vs zero-shot {zs:.1f}% (mean over datasets and seeds)")
    _say(c.out, f"report: {paths['md']}  table: {paths['csv']}  figure: {paths['png']}")
    _say(
        c.out,
        f"demo done in {time.perf_counter() - start:.1f}s. Rerun it with `cacheclip batch --config {toml}`, "
        f"report with `cacheclip report --results {cfg.results_dir}`.",
    )
    _say(c.out, "These numbers are synthetic (random model). On your own data (CoOp layout, see `cacheclip datasets`):")
    _say(c.out, f"  {REAL_COMMAND}\n  cacheclip report --results results")
