"""`cacheclip extract`, `ls`, `export` and `models`: the feature stores."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cacheclip.cli import common as c
from cacheclip.cli.app import app


def _load(model: str, pretrained: str, device: str | None):
    from cacheclip.features.models import load_model, settle_process

    loaded = load_model(model, pretrained, device=c.default_device(device))
    settle_process(loaded.device)
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
    workers: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="DataLoader worker processes for decoding [default: the cores this process may use, at most 4].",
            show_default=False,
        ),
    ] = None,
    templates: Annotated[
        str, typer.Option(help="Template set (default, photo, imagenet7, imagenet80) or a file.")
    ] = "default",
    train: Annotated[
        str, typer.Option(help="fewshot: the train images the planned runs need; all: every one.")
    ] = "fewshot",
    shots: c.ShotsOpt = "1,2,4,8,16",
    seeds: c.SeedsOpt = "1,2,3",
    holdout_val: Annotated[
        bool, typer.Option(help="Also encode a hold-out val for datasets without val (ImageNet).")
    ] = False,
    aug_views: Annotated[int, typer.Option(min=0, help="Augmented views per train image (0: none).")] = 10,
    aug_scale: Annotated[
        str, typer.Option(help="RandomResizedCrop scale range (CoOp: 0.08,1; Tip-Adapter: 0.5,1).")
    ] = "0.08,1",
    aug_seed: Annotated[int, typer.Option(help="Seed of the augmented views.")] = 0,
    dtype: Annotated[str, typer.Option(help="Stored feature dtype: float16 or float32.")] = "float16",
    precision: Annotated[
        str,
        typer.Option(
            help="auto (amp on CUDA, fp32 on CPU), fp32, or amp (fp16 autocast on CUDA; bf16 on CPUs with AMX "
            "or AVX512-BF16)."
        ),
    ] = "auto",
    preprocess: Annotated[
        str,
        typer.Option(
            help="default (shorter side to the input size, centre crop; RandomResizedCrop views) or coop-2021 "
            "(CoOp/Dassl before 9 Oct 2021: squash ignoring aspect; flip + translation views)."
        ),
    ] = "default",
) -> None:
    """Encode datasets' images and prompted class names into feature stores (resumable)."""
    from cacheclip.datasets.catalog import expand_names
    from cacheclip.features.distributed import from_env, rank_device
    from cacheclip.features.extract import ExtractConfig, default_workers, extract_dataset
    from cacheclip.features.models import cpu_has_bf16

    names = expand_names(c.split_names(dataset)) if dataset is not None else _require_dataset()
    scale = c.parse_floats(aug_scale, "--aug-scale")
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise typer.BadParameter("expected two numbers 0 < lo <= hi <= 1", param_hint="--aug-scale")
    cfg = ExtractConfig(
        cache_dir=str(cache_dir),
        templates=templates,
        dtype=dtype,
        train=train,
        aug_views=aug_views,
        aug_scale=(scale[0], scale[1]),
        aug_seed=aug_seed,
        shots=c.parse_ints(shots, "--shots"),
        seeds=c.parse_ints(seeds, "--seeds"),
        holdout_val=holdout_val,
        batch_size=batch_size,
        workers=default_workers() if workers is None else workers,
        precision=precision,
        preprocess=preprocess,
    )
    cfg.validate()
    show_file_warnings()
    device = c.default_device(device)
    dist = from_env(device)  # under torchrun: this process's rank; else a single process
    loaded = _load(model, pretrained, rank_device(device, dist))
    if precision == "auto" and device == "cpu" and dist.is_main and cpu_has_bf16():
        c.console.print(
            "note: this CPU computes bf16 natively; --precision amp encodes much faster (RN50: about 3x) "
            "(features within a cosine of 0.9999 of fp32's, recorded in the store)",
            style="dim",
        )

    def one(name: str) -> None:
        with c.progress_bar(disable=not dist.is_main) as bar:
            summary = extract_dataset(name, root, loaded, cfg, progress=bar, dist=dist)
        if dist.is_main:
            _print_summary(summary)

    c.exit_on_failures(c.per_dataset(names, one)[1], len(names))


def show_file_warnings() -> None:
    """Skipped entries of image folders and huge images, as ``warning: ...`` lines on stderr
    (also from DataLoader workers, which inherit the hook when they fork)."""
    import sys
    import warnings

    from cacheclip.datasets.listing import LargeImageWarning, SkippedFilesWarning

    warnings.simplefilter("always", SkippedFilesWarning)
    warnings.simplefilter("always", LargeImageWarning)
    previous = warnings.showwarning
    if getattr(previous, "ours", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, (SkippedFilesWarning, LargeImageWarning)):
            sys.stderr.write(f"warning: {message}\n")
        else:
            previous(message, category, filename, lineno, file, line)

    show.ours = True  # type: ignore[attr-defined]
    warnings.showwarning = show


def _print_summary(summary) -> None:
    new = ", ".join(f"{s} {n}" for s, n in summary.encoded.items()) or "nothing new"
    c.out.print(
        f"[green]{summary.dataset}[/]: encoded {new} in {summary.seconds:.1f}s "
        f"({summary.images_per_second:.1f} img/s); store has "
        + ", ".join(f"{s} {n}" for s, n in summary.total.items())
        + (" (text re-encoded)" if summary.text_updated else ""),
        highlight=False,
    )
    if summary.changed:
        changed = ", ".join(f"{s} {n}" for s, n in summary.changed.items())
        c.out.print(f"  re-encoded images whose file changed since encoding: {changed}", highlight=False)
    for note in summary.notes:
        c.console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    c.out.print(f"  store: {escape(str(summary.store))}", highlight=False)


def _require_dataset() -> list[str]:
    raise typer.BadParameter("give at least one dataset (or 'all')", param_hint="--dataset")


@app.command("ls")
def list_stores(cache_dir: c.CacheDirOpt = Path("cache")) -> None:
    """List feature stores: model, weights, splits, counts, size."""
    from cacheclip.features.check import health
    from cacheclip.features.store import describe, find_stores

    stores = find_stores(cache_dir)
    if not stores:
        c.console.print(f"no stores under {cache_dir} (run `cacheclip extract`)")
        return
    table = Table("dataset", "model", "weights", "train", "val", "test", "aug views", "dtype", "size", "health", "path")
    for path in stores:
        state = health(path)
        try:
            d = describe(path)
        except Exception:  # a damaged store is listed, not fatal
            table.add_row(path.stem, "?", "?", "", "", "", "", "", "", f"[red]{escape(state)}[/]", str(path))
            continue
        counts = [
            f"{d['splits'].get(s, {}).get('encoded', 0)}/{d['splits'].get(s, {}).get('items', 0)}"
            for s in ("train", "val", "test")
        ]
        pending = f" (+{d['pending_parts']} unfinished chunks)" if d["pending_parts"] else ""
        table.add_row(
            d["dataset"],
            d["model"],
            path.parent.name,
            *counts,
            str(d["aug_views"]),
            d["dtype"],
            f"{d['bytes'] / 2**20:.1f} MiB",
            "ok" if state == "ok" else f"[yellow]{escape(state)}[/]",
            str(path) + pending,
        )
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
    from cacheclip.features.export import export_split
    from cacheclip.features.locate import locate_store

    path, expect = locate_store(cache_dir, model, pretrained, dataset)
    shapes = export_split(path, split, out, expect)
    c.out.print(f"wrote {out}: " + ", ".join(f"{k} {v}" for k, v in shapes.items()), highlight=False)


@app.command()
def models() -> None:
    """List open_clip model names (use -quickgelu names with OpenAI weights)."""
    from cacheclip.features.models import list_models

    c.out.print("\n".join(list_models()))
