"""The `cacheclip` command: parse options -> one library call -> render.

Every user error becomes one `error:` line, a `hint:` line and exit code 1
(bad option values exit 2, from typer). Set CACHECLIP_DEBUG=1 for tracebacks.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from . import common as c

app = typer.Typer(
    name="cacheclip", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="CLIP-Adapter few-shot adaptation on cached open_clip features: extract once, fit in seconds.",
)


def _load(model: str, pretrained: str, device: str | None):
    from cacheclip.models import load_model

    loaded = load_model(model, pretrained, device=c.default_device(device))
    for warning in loaded.warnings:
        c.console.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False)
    return loaded


@app.command()
def extract(
    dataset: c.DatasetOpt = None,
    root: c.RootOpt = None,
    model: c.ModelOpt = "RN50",
    pretrained: c.PretrainedOpt = "openai",
    cache_dir: c.CacheDirOpt = Path("cache"),
    device: c.DeviceOpt = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 64,
    workers: Annotated[int, typer.Option(min=0, help="DataLoader worker processes for decoding.")] = 4,
    templates: Annotated[str, typer.Option(help="Template set (default, photo, imagenet7, imagenet80) or a file.")] = "default",
    train: Annotated[str, typer.Option(help="fewshot: the train images the planned runs need; all: every one.")] = "fewshot",
    shots: c.ShotsOpt = "1,2,4,8,16",
    seeds: c.SeedsOpt = "1,2,3",
    holdout_val: Annotated[bool, typer.Option(help="Also encode a hold-out val for datasets without val (ImageNet).")] = False,
    aug_views: Annotated[int, typer.Option(min=0, help="Augmented views per train image (0: none).")] = 10,
    aug_scale: Annotated[str, typer.Option(help="RandomResizedCrop scale range (CoOp: 0.08,1; Tip-Adapter: 0.5,1).")] = "0.08,1",
    aug_seed: Annotated[int, typer.Option(help="Seed of the augmented views.")] = 0,
    dtype: Annotated[str, typer.Option(help="Stored feature dtype: float16 or float32.")] = "float16",
    precision: Annotated[str, typer.Option(
        help="auto (amp on CUDA, fp32 on CPU), fp32, or amp (fp16 autocast on CUDA; bf16 on CPUs with AMX "
             "or AVX512-BF16).")] = "auto",
) -> None:
    """Encode datasets' images and prompted class names into feature stores (resumable)."""
    from cacheclip.augment import AugmentConfig
    from cacheclip.datasets import expand_names
    from cacheclip.distributed import from_env, rank_device
    from cacheclip.extract import ExtractConfig, extract_dataset
    from cacheclip.models import cpu_has_bf16

    names = expand_names(c.split_names(dataset) or ["all"]) if dataset else _require_dataset()
    scale = c.parse_floats(aug_scale, "--aug-scale")
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise typer.BadParameter("expected two numbers 0 < lo <= hi <= 1", param_hint="--aug-scale")
    cfg = ExtractConfig(
        cache_dir=str(cache_dir), templates=templates, dtype=dtype, train=train,
        augment=AugmentConfig(views=aug_views, scale=(scale[0], scale[1]), seed=aug_seed),
        shots=c.parse_ints(shots, "--shots"), seeds=c.parse_ints(seeds, "--seeds"), holdout_val=holdout_val,
        batch_size=batch_size, workers=workers, precision=precision)
    cfg.validate()
    device = c.default_device(device)
    dist = from_env(device)   # under torchrun: this process's rank; else a single process
    loaded = _load(model, pretrained, rank_device(device, dist))
    if precision == "auto" and device == "cpu" and dist.is_main and cpu_has_bf16():
        c.console.print("note: this CPU computes bf16 natively; --precision amp encodes much faster (RN50: about 3x) "
                        "(features within a cosine of 0.9999 of fp32's, recorded in the store)", style="dim")
    failures = []
    for name in names:
        try:
            with c.progress_bar(disable=not dist.is_main) as bar:
                summary = extract_dataset(name, root, loaded, cfg, progress=bar, dist=dist)
        except Exception as e:  # one dataset's failure must not stop the others
            if len(names) == 1:
                raise
            c.report_error(e)
            failures.append(name)
            continue
        if not dist.is_main:
            continue
        new = ", ".join(f"{s} {n}" for s, n in summary.encoded.items()) or "nothing new"
        c.out.print(f"[green]{summary.dataset}[/]: encoded {new} in {summary.seconds:.1f}s "
                    f"({summary.images_per_second:.1f} img/s); store has "
                    + ", ".join(f"{s} {n}" for s, n in summary.total.items())
                    + (" (text re-encoded)" if summary.text_updated else ""), highlight=False)
        c.out.print(f"  store: {escape(str(summary.store))}", highlight=False)
    if failures:
        c.console.print(f"[bold red]{len(failures)} of {len(names)} datasets failed:[/] {', '.join(failures)}")
        raise typer.Exit(1)


def _require_dataset() -> list[str]:
    raise typer.BadParameter("give at least one dataset (or 'all')", param_hint="--dataset")


@app.command()
def fit(
    dataset: c.DatasetOpt = None,
    method: Annotated[str, typer.Option(help="clip-adapter (default), zero-shot, or a baseline (see `cacheclip methods`).")] = "clip-adapter",
    shots: c.ShotsOpt = "1,2,4,8,16",
    seeds: c.SeedsOpt = "1,2,3",
    alpha: Annotated[str, typer.Option(help="Visual residual ratio(s); several are chosen between on val.")] = "0.2",
    beta: Annotated[str, typer.Option(help="Text residual ratio(s); several are chosen between on val.")] = "0.2",
    adapter: Annotated[str, typer.Option(help="visual (the paper's default), text, or both.")] = "visual",
    reduction: Annotated[int, typer.Option(min=1, help="Bottleneck reduction D -> D/r.")] = 4,
    block: Annotated[str, typer.Option(help="official (ReLU after each layer, as the published code) or paper.")] = "official",
    epochs: Annotated[Optional[int], typer.Option(min=1, help="Epochs (default: CoOp's by shots; ImageNet 50).")] = None,
    lr: Annotated[float, typer.Option(help="SGD learning rate.")] = 0.002,
    batch_size: Annotated[int, typer.Option(min=1, help="Training batch size.")] = 32,
    weight_decay: Annotated[float, typer.Option(help="SGD weight decay.")] = 5e-4,
    momentum: Annotated[float, typer.Option(help="SGD momentum.")] = 0.9,
    warmup_epochs: Annotated[int, typer.Option(min=0, help="Constant-lr warm-up epochs.")] = 1,
    warmup_lr: Annotated[float, typer.Option(help="Warm-up learning rate.")] = 1e-5,
    views: Annotated[str, typer.Option(help="aug: a cached augmented view per image per epoch; clean: no augmentation.")] = "aug",
    lp_c: Annotated[Optional[str], typer.Option(help="linear-probe: C value(s) (sklearn's C), chosen on val (default: 1e-2..1e4, 13 values; 10 without val).")] = None,
    tip_alpha: Annotated[Optional[str], typer.Option(help="tip-adapter(-f): cache weight(s) alpha, chosen on val (default: 0.1..10 step 0.3; 1 without val).")] = None,
    tip_beta: Annotated[Optional[str], typer.Option(help="tip-adapter(-f): sharpness value(s) beta, chosen on val (default: as --tip-alpha).")] = None,
    tip_epochs: Annotated[int, typer.Option(min=1, help="tip-adapter-f: epochs training the cache keys.")] = 20,
    no_val: Annotated[str, typer.Option(help="Datasets without val (ImageNet): none (no selection) or holdout.")] = "none",
    model: c.ModelOpt = "RN50",
    pretrained: c.PretrainedOpt = "openai",
    cache_dir: c.CacheDirOpt = Path("cache"),
    results_dir: Annotated[Path, typer.Option(help="Where result JSONs and adapter weights go.")] = Path("results"),
    device: c.DeviceOpt = None,
    force: Annotated[bool, typer.Option(help="Redo runs whose results already exist.")] = False,
) -> None:
    """Fit a few-shot method (CLIP-Adapter by default) on cached features: shots x seeds, chosen on val, test once."""
    from cacheclip.adapters import AdapterConfig
    from cacheclip.datasets import expand_names, store_name
    from cacheclip.fit import FitConfig, fit_dataset, stores_for
    from cacheclip.models import resolve_model
    from cacheclip.train import TrainConfig

    grids = {field: c.parse_floats(text, option) for field, text, option in
             (("lp_cs", lp_c, "--lp-c"), ("tip_alphas", tip_alpha, "--tip-alpha"), ("tip_betas", tip_beta, "--tip-beta"))
             if text is not None}
    cfg = FitConfig(
        **grids, tipf_epochs=tip_epochs,
        method=method, shots=c.parse_ints(shots, "--shots"), seeds=c.parse_ints(seeds, "--seeds"),
        adapter=AdapterConfig(kind=adapter, reduction=reduction, block=block),
        alphas=c.parse_floats(alpha, "--alpha"), betas=c.parse_floats(beta, "--beta"),
        train=TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay,
                          momentum=momentum, warmup_epochs=warmup_epochs, warmup_lr=warmup_lr, views=views),
        no_val=no_val, cache_dir=str(cache_dir), results_dir=str(results_dir),
        device=c.default_device(device), force=force)
    cfg.validate()
    ref = resolve_model(model, pretrained)
    names = [store_name(n) for n in expand_names(c.split_names(dataset))] if dataset else stores_for(ref, cache_dir)
    results, failures = [], []
    for name in names:
        try:
            with c.progress_bar(unit="ep") as bar:
                results += fit_dataset(name, ref, cfg, model_arg=model, pretrained_arg=pretrained, progress=bar)
        except Exception as e:
            if len(names) == 1:
                raise
            c.report_error(e)
            failures.append(name)
    c.out.print(c.results_table(results, cfg.seeds))
    c.out.print(f"results in {results_dir}/", highlight=False)
    if failures:
        c.console.print(f"[bold red]{len(failures)} of {len(names)} datasets failed:[/] {', '.join(failures)}")
        raise typer.Exit(1)


@app.command("ls")
def list_stores(cache_dir: c.CacheDirOpt = Path("cache")) -> None:
    """List feature stores: model, weights, splits, counts, size."""
    from cacheclip.store import describe, find_stores

    stores = find_stores(cache_dir)
    if not stores:
        c.console.print(f"no stores under {cache_dir} (run `cacheclip extract`)")
        return
    table = Table("dataset", "model", "weights", "train", "val", "test", "aug views", "dtype", "size", "path")
    for path in stores:
        try:
            d = describe(path)
        except Exception as e:  # a damaged store is listed, not fatal
            table.add_row(path.stem, "?", "?", "", "", "", "", "", "", f"{path} (unreadable: {e})")
            continue
        counts = [f"{d['splits'].get(s, {}).get('encoded', 0)}/{d['splits'].get(s, {}).get('items', 0)}"
                  for s in ("train", "val", "test")]
        pending = f" (+{d['pending_parts']} unfinished chunks)" if d["pending_parts"] else ""
        table.add_row(d["dataset"], d["model"], path.parent.name, *counts, str(d["aug_views"]), d["dtype"],
                      f"{d['bytes'] / 2**20:.1f} MiB", str(path) + pending)
    c.out.print(table)


@app.command()
def export(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset name.")],
    split: Annotated[str, typer.Option(help="train, val or test.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .npz file.")],
    model: c.ModelOpt = "RN50",
    pretrained: c.PretrainedOpt = "openai",
    cache_dir: c.CacheDirOpt = Path("cache"),
) -> None:
    """Export one split of a store to .npz (features, labels, paths, classnames, text features)."""
    from cacheclip.export import export_split
    from cacheclip.locate import locate_store

    path = locate_store(cache_dir, model, pretrained, dataset)
    shapes = export_split(path, split, out)
    c.out.print(f"wrote {out}: " + ", ".join(f"{k} {v}" for k, v in shapes.items()), highlight=False)


@app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files or folders (searched recursively).")],
    run: Annotated[Path, typer.Option("--run", help="A run folder (or its result.json / adapter.safetensors).")],
    top_k: Annotated[int, typer.Option(min=1, help="Classes to show per image.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    model: Annotated[Optional[str], typer.Option(help="Override the run's model (if its config file moved).")] = None,
    pretrained: Annotated[Optional[str], typer.Option(help="Override the run's weights (if its checkpoint moved).")] = None,
    device: c.DeviceOpt = None,
) -> None:
    """Classify images with a fitted run: top-k classes and probabilities per image."""
    from cacheclip.predict import classify, list_images, load_model_for, load_run, result_json

    device = c.default_device(device)
    fitted = load_run(run, device)
    loaded = load_model_for(fitted, model, pretrained, device)
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
def models() -> None:
    """List open_clip model names (use -quickgelu names with OpenAI weights)."""
    from cacheclip.models import list_models

    c.out.print("\n".join(list_models()))


@app.command()
def methods() -> None:
    """List the few-shot methods `fit --method` accepts."""
    from cacheclip.methods import get_method, list_methods

    for name in list_methods():
        c.out.print(f"[bold]{name}[/]: {get_method(name).summary}", highlight=False)


@app.command()
def datasets() -> None:
    """List the dataset names and the folder each is expected in."""
    from cacheclip.datasets import get_dataset_spec, list_datasets

    table = Table("name", "folder under --root")
    for name in list_datasets():
        table.add_row(name, get_dataset_spec(name).folder + "/")
    table.add_row("imagefolder:PATH", "any folder with one sub-folder per class")
    c.out.print(table)


def main() -> None:
    c.quiet_libraries()
    try:
        code = app(standalone_mode=False)  # returns typer.Exit's code instead of raising it
    except typer.Exit as e:
        code = e.exit_code
    except typer.Abort:
        c.console.print("aborted")
        code = 130
    except KeyboardInterrupt:
        c.console.print("interrupted: finished work is kept; rerun the same command to resume")
        code = 130
    except Exception as e:
        code = c.report_error(e)   # click usage errors show themselves and give 2
    sys.exit(code if isinstance(code, int) else 0)


from . import batch as _batch  # noqa: E402,F401  (registers the batch, report and demo commands)
