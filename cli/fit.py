"""`cacheclip fit`, `predict` and `methods`: few-shot runs on the stores."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cacheclip.cli import common as c
from cacheclip.cli.app import app


@app.command()
def fit(
    dataset: c.DatasetOpt = None,
    method: Annotated[
        str,
        typer.Option(
            help="The method: clip-adapter (default) or another of `cacheclip methods`; with --help, its settings."
        ),
    ] = "clip-adapter",
    shots: c.ShotsOpt = "1,2,4,8,16",
    seeds: c.SeedsOpt = "1,2,3",
    views: Annotated[
        str, typer.Option(help="aug: a cached augmented view per image per epoch; clean: no augmentation.")
    ] = "aug",
    no_val: Annotated[
        str, typer.Option(help="Datasets without val (ImageNet): none (no selection) or holdout.")
    ] = "none",
    protocol: Annotated[
        str,
        typer.Option(
            help="fewshot: choose on the few-shot val only; official: each method's published protocol "
            "(its val set, grids and per-dataset settings), never choosing on test."
        ),
    ] = "fewshot",
    epoch: Annotated[
        str,
        typer.Option(
            help="Trained methods: last (the last epoch) or best-val (the first epoch with the best val top-1)."
        ),
    ] = "last",
    classes: Annotated[
        str,
        typer.Option(
            help="all: train and test on every class; base-to-new: train on the first half of the classes (sorted "
            "labels), test on them and on the other half (CoCoOp's protocol)."
        ),
    ] = "all",
    classifier: Annotated[
        str,
        typer.Option(
            help="Text classifier: paper (each method's paper's; ImageNet stores hold both), single, ensemble, "
            "single+ensemble, or the store's --templates set."
        ),
    ] = "paper",
    targets: Annotated[
        str | None,
        typer.Option(
            help="ImageNet only: also test every run's final classifier on these (imagenet-v2, imagenet-sketch, "
            "imagenet-a, imagenet-r, or imagenet-shift for all four), after selection."
        ),
    ] = None,
    model: c.ModelOpt = "RN50",
    pretrained: c.PretrainedOpt = "openai",
    cache_dir: c.CacheDirOpt = Path("cache"),
    results_dir: Annotated[Path, typer.Option(help="Where result JSONs and adapter weights go.")] = Path("results"),
    device: c.DeviceOpt = None,
    force: Annotated[bool, typer.Option(help="Redo runs whose results already exist.")] = False,
    **method_options: str | None,  # one option per method setting (cli.common.attach_method_options)
) -> None:
    """Fit a few-shot method (CLIP-Adapter by default) on cached features: shots x seeds, chosen on val, test once.

    The Options panel holds what every method shares. A method's own settings: `cacheclip fit --method NAME --help`
    (`cacheclip methods NAME` describes it, `cacheclip methods` lists them).
    """
    from cacheclip.api import fit_store
    from cacheclip.datasets.catalog import expand_names, store_name
    from cacheclip.features.locate import resolve_remembered
    from cacheclip.fit.stage import FitConfig, stores_for

    cfg = FitConfig(
        method=method,
        method_config=c.method_config(method, method_options),
        shots=c.parse_ints(shots, "--shots"),
        seeds=c.parse_ints(seeds, "--seeds"),
        views=views,
        no_val=no_val,
        protocol=protocol,
        epoch=epoch,
        classes=classes,
        classifier=classifier,
        targets=tuple(expand_names(c.split_names([targets], "--targets"))) if targets is not None else (),
        cache_dir=str(cache_dir),
        results_dir=str(results_dir),
        device=c.default_device(device),
        force=force,
    )
    cfg.validate()
    ref = resolve_remembered(model, pretrained, cache_dir)
    names = [store_name(n) for n in expand_names(c.split_names(dataset))] if dataset else stores_for(ref, cache_dir)

    def one(name: str) -> list[dict]:
        with c.progress_bar(unit="ep") as bar:
            return fit_store(name, cfg, model=model, pretrained=pretrained, progress=bar)

    done, failures = c.per_dataset(names, one)
    results = [r for per_dataset in done for r in per_dataset]
    table = base_to_new_table if cfg.classes == "base-to-new" else c.results_table
    c.out.print(table(results, cfg.seeds))
    _say_short_classes(results)
    _say_diverged(results)
    c.out.print(f"results in {results_dir}/", highlight=False)
    c.exit_on_failures(failures, len(names))


def base_to_new_table(results: list[dict], seeds: tuple[int, ...]) -> Table:
    """dataset, method, shots, zero-shot and the run's base / new / H top-1, means over seeds."""
    import statistics

    table = Table("dataset", "method", "shots", "seeds", "zero-shot base / new / H", "base / new / H")
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["dataset"], r["method"], r["shots"]), []).append(r)

    def triple(block: str, runs: list[dict]) -> str:
        means = [statistics.mean(r[block][k]["top1"] for r in runs) for k in ("base", "new", "harmonic_mean")]
        return " / ".join(f"{v:.2f}" for v in means)

    for (name, method, shots), runs in sorted(groups.items()):
        table.add_row(name, method, str(shots), str(len(runs)), triple("zero_shot", runs), triple("metrics", runs))
    return table


def _say_diverged(results: list[dict]) -> None:
    """A run whose training diverged (``result["diverged"]``, e.g. --lr 1e30) is said, not shown as normal."""
    for r in results:
        if r.get("diverged"):
            c.console.print(
                f"[bold yellow]warning:[/] {escape(r['dataset'])} {escape(r['method'])} {r['shots']}-shot seed "
                f"{r['seed']}: {escape(r['diverged'])}",
                highlight=False,
                soft_wrap=True,
            )


def _say_short_classes(results: list[dict]) -> None:
    """CoOp takes every image of a class with fewer than --shots: say where that happened."""
    short = {
        (r["dataset"], r["shots"], r["fewshot"]["shots_per_class"]["min"])
        for r in results
        if r.get("fewshot", {}).get("shots_per_class", {}).get("min", r["shots"]) < r["shots"]
    }
    for dataset, shots, least in sorted(short):
        c.console.print(
            f"[yellow]note:[/] {dataset}: some classes have fewer than {shots} train images; "
            f"they use all they have (as few as {least}), recorded as fewshot.shots_per_class",
            highlight=False,
        )


@app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files or folders (searched recursively).")],
    run: Annotated[Path, typer.Option("--run", help="A run folder (or its result.json / adapter.safetensors).")],
    top_k: Annotated[int, typer.Option(min=1, help="Classes to show per image.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    model: Annotated[str | None, typer.Option(help="Override the run's model (if its config file moved).")] = None,
    pretrained: Annotated[
        str | None, typer.Option(help="Override the run's weights (if its checkpoint moved).")
    ] = None,
    device: c.DeviceOpt = None,
) -> None:
    """Classify images with a fitted run: top-k classes and probabilities per image."""
    from cacheclip.cli.features import show_file_warnings
    from cacheclip.errors import CorruptImageError
    from cacheclip.features.models import settle_process
    from cacheclip.fit.predict import classify, list_images, load_model_for, load_run, result_json

    show_file_warnings()
    device = c.default_device(device)
    fitted = load_run(run, device)
    loaded = load_model_for(fitted, model, pretrained, device)
    settle_process(loaded.device)
    files = list_images(images)
    with c.progress_bar() as bar:
        predictions = classify(fitted, loaded, files, top_k, progress=bar if len(files) > 1 else None)
    if as_json:
        print(result_json(predictions))
    else:
        table = Table("image", *[f"top {i + 1}" for i in range(min(top_k, len(fitted.classnames)))])
        for p in predictions:
            cells = [f"{t['class']} ({100 * t['prob']:.1f}%)" for t in p["top"]] if "top" in p else ["unreadable"]
            table.add_row(escape(p["image"]), *cells)
        c.out.print(table)
    failed = [p for p in predictions if "error" in p]
    if failed:  # the others were classified and shown; still not a clean run
        raise CorruptImageError(
            f"{len(failed)} of {len(predictions)} images could not be read: "
            + "; ".join(f"{p['image']}: {p['error']}" for p in failed[:3])
            + (" ..." if len(failed) > 3 else ""),
            "replace or remove these files; the other images were classified above",
        )


@app.command()
def methods(
    name: Annotated[
        str | None,
        typer.Argument(help="A method: print its settings, paper, paper's protocol and what cacheclip changes."),
    ] = None,
) -> None:
    """List the few-shot methods `fit --method` accepts; with a NAME, describe that method."""
    from cacheclip.fit.methods import broken_plugins, get_method, list_methods, plugin_of

    if name is None:
        for each in list_methods():
            plugin = plugin_of(each)
            origin = f" [dim](plugin: {escape(plugin.package)})[/]" if plugin else ""
            c.out.print(f"[bold]{each}[/]: {escape(get_method(each).summary)}{origin}", highlight=False)
        c.out.print(
            "\n`cacheclip methods NAME`: a method's settings, paper and protocol.", highlight=False, markup=False
        )
        for broken in broken_plugins():  # one line each; the other methods work
            c.console.print(
                f"[bold yellow]warning:[/] plugin method '{escape(broken.plugin.name)}' "
                f"({escape(broken.plugin.package)}) is not usable: {escape(broken.problem)}",
                highlight=False,
                soft_wrap=True,
            )
        return
    _describe_method(get_method(name))


def _describe_method(method) -> None:
    """A method's paper, protocol, our changes, published numbers and settings (`cacheclip methods NAME`)."""
    from cacheclip.cli.method_notes import NOTES
    from cacheclip.fit.methods import plugin_of
    from cacheclip.results.published import published_provenance
    from cacheclip.settings import settings_of, to_text

    def say(text: str = "") -> None:
        c.out.print(text, highlight=False, markup=False, soft_wrap=True)

    c.out.print(f"[bold]{method.name}[/]: {escape(method.summary)}", highlight=False, soft_wrap=True)
    plugin = plugin_of(method.name)
    if plugin is not None:
        say(f"plugin: {plugin.package} ({plugin.value}), written for method contract {method.contract}")
    note = NOTES.get(method.name)
    if note is not None:
        say(f"paper: {note.paper}" + (f"; official code {note.code}" if note.code else ""))
        say(f"kind: {note.kind}; cost per 16-shot run at 10 / 397 classes (2-core CPU): {note.cost}")
        say(f"paper's protocol: {note.protocol}")
        say(f"--protocol official: {note.official}")
        say("what cacheclip changes (each result lists its own, in protocol.differences):")
        for change in note.changes:
            say(f"  - {change}")
    say(f"published numbers: {published_provenance(method.name) or 'none stored'}")
    rule = method.new_classes.rule if method.new_classes else "refused: no rule for classes it never trained on"
    say(f"new classes (--classes base-to-new): {rule}")
    settings = settings_of(method.config)
    if settings:
        table = Table(
            "option", "TOML key", "default", "meaning", title=f"settings of {method.name}", title_justify="left"
        )
        for key, (field, spec, _) in settings.items():
            table.add_row(spec.flag or "", f"[{method.name}] {key}", to_text(field.default, spec.none_word), spec.help)
        c.out.print(table, markup=False)  # no markup: "[gda] alphas" is a TOML table name, not a rich tag
    else:
        say("settings: none")
    if note is not None:
        say(f"manual: docs/{note.page}")
