"""`cacheclip fit`, `predict` and `methods`: few-shot runs on the stores."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cacheclip.cli import common as c
from cacheclip.cli.app import app


@app.command()
def fit(
    dataset: c.DatasetOpt = None,
    method: Annotated[
        str, typer.Option(help="clip-adapter (default), zero-shot, or a baseline (see `cacheclip methods`).")
    ] = "clip-adapter",
    shots: c.ShotsOpt = "1,2,4,8,16",
    seeds: c.SeedsOpt = "1,2,3",
    views: Annotated[
        str, typer.Option(help="aug: a cached augmented view per image per epoch; clean: no augmentation.")
    ] = "aug",
    no_val: Annotated[
        str, typer.Option(help="Datasets without val (ImageNet): none (no selection) or holdout.")
    ] = "none",
    model: c.ModelOpt = "RN50",
    pretrained: c.PretrainedOpt = "openai",
    cache_dir: c.CacheDirOpt = Path("cache"),
    results_dir: Annotated[Path, typer.Option(help="Where result JSONs and adapter weights go.")] = Path("results"),
    device: c.DeviceOpt = None,
    force: Annotated[bool, typer.Option(help="Redo runs whose results already exist.")] = False,
    **method_options: str | None,  # one option per method setting (cli.common.attach_method_options)
) -> None:
    """Fit a few-shot method (CLIP-Adapter by default) on cached features: shots x seeds, chosen on val, test once."""
    from cacheclip.datasets.catalog import expand_names, store_name
    from cacheclip.features.models import resolve_model
    from cacheclip.fit.stage import FitConfig, fit_dataset, stores_for

    cfg = FitConfig(
        method=method,
        method_config=c.method_config(method, method_options),
        shots=c.parse_ints(shots, "--shots"),
        seeds=c.parse_ints(seeds, "--seeds"),
        views=views,
        no_val=no_val,
        cache_dir=str(cache_dir),
        results_dir=str(results_dir),
        device=c.default_device(device),
        force=force,
    )
    cfg.validate()
    ref = resolve_model(model, pretrained)
    names = [store_name(n) for n in expand_names(c.split_names(dataset))] if dataset else stores_for(ref, cache_dir)

    def one(name: str) -> list[dict]:
        with c.progress_bar(unit="ep") as bar:
            return fit_dataset(name, ref, cfg, model_arg=model, pretrained_arg=pretrained, progress=bar)

    done, failures = c.per_dataset(names, one)
    results = [r for per_dataset in done for r in per_dataset]
    c.out.print(c.results_table(results, cfg.seeds))
    c.out.print(f"results in {results_dir}/", highlight=False)
    c.exit_on_failures(failures, len(names))


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
    from cacheclip.features.models import settle_process
    from cacheclip.fit.predict import classify, list_images, load_model_for, load_run, result_json

    device = c.default_device(device)
    fitted = load_run(run, device)
    loaded = load_model_for(fitted, model, pretrained, device)
    settle_process(loaded.device)
    files = list_images(images)
    with c.progress_bar() as bar:
        predictions = classify(fitted, loaded, files, top_k, progress=bar if len(files) > 1 else None)
    if as_json:
        print(result_json(predictions))
        return
    table = Table("image", *[f"top {i + 1}" for i in range(min(top_k, len(fitted.classnames)))])
    for p in predictions:
        table.add_row(p["image"], *[f"{t['class']} ({100 * t['prob']:.1f}%)" for t in p["top"]])
    c.out.print(table)


@app.command()
def methods() -> None:
    """List the few-shot methods `fit --method` accepts."""
    from cacheclip.fit.methods import get_method, list_methods

    for name in list_methods():
        c.out.print(f"[bold]{name}[/]: {get_method(name).summary}", highlight=False)
