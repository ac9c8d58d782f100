"""The paper-style few-shot figure (like CLIP-Adapter's Figure 3).

One small panel per dataset plus one for the average; x = shots per class on
a log2 axis, y = test top-1. Each method is one colour: ours solid with std
error bars, the paper's dashed; zero-shot CLIP is a grey horizontal line
(ours solid, the paper's dotted). matplotlib is imported inside
``plot_report`` and driven through its object API (no pyplot, no global
backend switch).
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

from cacheclip.common import atomic_path
from cacheclip.errors import ConfigError
from cacheclip.results.published import PUBLISHED_SHOTS, published_curve, published_zero_shot
from cacheclip.results.report import Report, average_row, dataset_order, mean_over

DISPLAY_NAMES = {
    "imagenet": "ImageNet",
    "caltech101": "Caltech101",
    "oxford_pets": "OxfordPets",
    "stanford_cars": "StanfordCars",
    "oxford_flowers": "Flowers102",
    "food101": "Food101",
    "fgvc_aircraft": "FGVCAircraft",
    "sun397": "SUN397",
    "dtd": "DTD",
    "eurosat": "EuroSAT",
    "ucf101": "UCF101",
}
METHOD_COLORS = {
    "clip-adapter": "#d62728",
    "tip-adapter-f": "#ff7f0e",
    "tip-adapter": "#2ca02c",
    "linear-probe": "#1f77b4",
    "zero-shot": "#7f7f7f",
}
PALETTE = (
    *("#d62728", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"),
    *("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#31a354"),  # 12 methods stay apart
)
MARKERS = ("o", "s", "^", "D", "v")
ZS_GREYS = ("0.45", "0.7", "0.25", "0.55")
AVERAGE = "__average__"


def _styles(reports: list[Report]) -> dict[tuple[str, str, str], tuple[str, str]]:
    """(colour, marker) per series: colour by method for one backbone, by series for several."""
    pairs = list(dict.fromkeys((r.model, r.pretrained) for r in reports))
    styles, spare = {}, [c for c in PALETTE if c not in METHOD_COLORS.values()]
    for i, r in enumerate(reports):
        if len(pairs) > 1:
            color = PALETTE[i % len(PALETTE)]
        else:
            color = METHOD_COLORS.get(r.method) or spare[i % len(spare)]
        marker = MARKERS[pairs.index((r.model, r.pretrained)) % len(MARKERS)]
        styles[(r.model, r.pretrained, r.method)] = (color, marker)
    return styles


def _points(report: Report, panel: str) -> list[tuple[int, float, float, bool]]:
    """(shots, mean, std, partial) of our runs in one panel; shots > 0 only."""
    if panel == AVERAGE:
        row = average_row(report)
        return [(s, c.mean, c.std, c.partial) for s, c in row.items() if c is not None and s > 0]
    return [(s, c.mean, c.std, False) for (d, s), c in sorted(report.cells.items()) if d == panel and s > 0]


def _paper_curve(report: Report, panel: str, datasets: list[str]) -> dict[int, float]:
    """The paper's curve; for the average, over the datasets the report covers."""
    if panel != AVERAGE:
        return published_curve(panel, report.method) or {}
    curves = [published_curve(d, report.method) for d in datasets]
    if not curves or None in curves:
        return {}
    return {s: math.fsum(c[s] for c in curves) / len(curves) for s in PUBLISHED_SHOTS}


def _zero_shot(report: Report, panel: str, datasets: list[str]) -> tuple[float | None, float | None]:
    """(ours, paper) zero-shot top-1 for one panel."""
    if panel != AVERAGE:
        ours = report.zero_shot.get(panel)
        return ours, (published_zero_shot(panel) if report.published_zero_shot else None)
    ours = mean_over(report.zero_shot, datasets)
    paper = [published_zero_shot(d) for d in datasets] if report.published_zero_shot else []
    return ours, (math.fsum(paper) / len(paper) if paper and None not in paper else None)


def _draw_panel(ax, panel: str, reports: list[Report], styles: dict) -> set[int]:
    """Draw one panel; return the shot counts it shows."""
    shown: set[int] = set()
    pairs = list(dict.fromkeys((r.model, r.pretrained) for r in reports))
    zs_drawn: set[tuple[str, str]] = set()
    for report in reports:
        datasets = report.covered
        if panel != AVERAGE and panel not in report.datasets:
            continue
        color, marker = styles[(report.model, report.pretrained, report.method)]
        pair = (report.model, report.pretrained)
        suffix = f", {report.model}/{report.pretrained}" if len(pairs) > 1 else ""
        if pair not in zs_drawn:
            zs_drawn.add(pair)
            ours, paper = _zero_shot(report, panel, datasets)
            grey = ZS_GREYS[pairs.index(pair) % len(ZS_GREYS)]
            if ours is not None:
                ax.axhline(ours, color=grey, lw=1.0, ls="-", label=f"Zero-shot CLIP (ours{suffix})")
            if paper is not None:
                ax.axhline(paper, color=ZS_GREYS[0], lw=1.0, ls=":", label="Zero-shot CLIP (paper)")
        if report.method == "zero-shot":
            continue
        if report.published:
            paper_curve = _paper_curve(report, panel, datasets)
            if paper_curve:
                xs = sorted(paper_curve)
                ax.plot(
                    xs,
                    [paper_curve[s] for s in xs],
                    color=color,
                    ls="--",
                    lw=1.2,
                    alpha=0.85,
                    label=f"{report.label} (paper)",
                )
                shown.update(xs)
        points = _points(report, panel)
        if points:
            xs, means, stds, partial = zip(*points, strict=False)
            ax.errorbar(
                xs,
                means,
                yerr=stds,
                color=color,
                marker=marker,
                ms=4,
                lw=1.6,
                capsize=2.5,
                label=f"{report.label} (ours{suffix})",
            )
            for x, y, p in zip(xs, means, partial, strict=False):
                if p:  # hollow marker: an average over fewer datasets than expected
                    ax.plot([x], [y], marker=marker, ms=5, mec=color, mfc="white", ls="none", zorder=5)
            shown.update(xs)
    return shown


def _style_axis(ax, title: str, ticks: list[int]) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlim(ticks[0] / 1.35, ticks[-1] * 1.35)
    ax.grid(True, color="0.9", lw=0.6)
    ax.tick_params(labelsize=8)


def _average_title(reports: list[Report]) -> str:
    counts = sorted({len(r.covered) for r in reports})
    k = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    return f"Average ({k}/{max(r.n_expected_datasets for r in reports)})"


def _legend_order(labels: list[str]) -> tuple[list[str], int | None]:
    """Labels grouped by series (ours above paper), and the column count that gives each group its
    own column when the groups are alike and few (else None: as many columns as fit)."""
    groups: dict[str, list[str]] = {}
    for label in labels:
        groups.setdefault(label.split(" (")[0], []).append(label)
    ordered = [sorted(g, key=lambda x: "(paper" in x) for g in groups.values()]
    flat = [label for g in ordered for label in g]
    if len({len(g) for g in ordered}) == 1 and len(ordered) <= 5:
        return flat, len(ordered)
    return flat, None


LEGEND_FONT = 9
LEGEND_MARGIN = 0.98  # the share of the figure's width the legend may take


def _place_legend(fig, handles: list, labels: list[str], preferred: int | None):
    """The legend in a row of its own under the panels, with as many columns as fit the figure's
    width, measured with the renderer (widening the figure when even one column does not fit).
    Returns (legend, its height in inches)."""
    renderer = fig.canvas.get_renderer()
    candidates = list(range(preferred or min(len(labels), 6), 0, -1))  # most columns first, 1 last
    for ncol in candidates:
        legend = fig.legend(
            handles,
            labels,
            loc="lower center",
            bbox_to_anchor=(0.5, 0.0),
            ncol=ncol,
            frameon=False,
            fontsize=LEGEND_FONT,
        )
        box = legend.get_window_extent(renderer)
        if box.width <= LEGEND_MARGIN * fig.bbox.width:
            break
        if ncol != candidates[-1]:
            legend.remove()
    else:  # one column is still too wide: widen the figure to the legend
        width, height = fig.get_size_inches()
        fig.set_size_inches(box.width / fig.dpi / LEGEND_MARGIN, height)
    return legend, box.height / fig.dpi


def _title(reports: list[Report]) -> str:
    pairs = list(dict.fromkeys((r.model, r.pretrained) for r in reports))
    return "Few-shot test top-1 accuracy (%) — " + ", ".join(f"{m} / {p}" for m, p in pairs)


def report_figure(reports: list[Report]):
    """The matplotlib ``Figure`` of one or several reports (methods overlaid), its legend in a row
    of its own that fits the figure whatever the number of series."""
    if not reports:
        raise ConfigError("nothing to plot: no results", hint="run `cacheclip fit` first")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    datasets = dataset_order([d for r in reports for d in r.datasets])
    panels = datasets + ([AVERAGE] if len(datasets) > 1 else [])
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(3.3 * ncols, 2.7 * nrows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()

    styles = _styles(reports)
    handles: dict[str, object] = {}
    for i, (ax, panel) in enumerate(zip(axes, panels, strict=False)):
        shown = _draw_panel(ax, panel, reports, styles)
        ticks = sorted(shown) or list(PUBLISHED_SHOTS)
        if panel == AVERAGE:
            title = _average_title(reports)
        else:
            title = DISPLAY_NAMES.get(panel, panel)
        _style_axis(ax, title, ticks)
        if not ax.lines and not ax.collections:
            ax.text(0.5, 0.5, "no results", ha="center", va="center", transform=ax.transAxes, color="0.5")
        if i % ncols == 0:
            ax.set_ylabel("Top-1 accuracy (%)", fontsize=9)
        if i >= len(panels) - ncols:
            ax.set_xlabel("Shots per class", fontsize=9)
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=False):
            handles.setdefault(label, handle)
    for ax in axes[len(panels) :]:
        ax.set_axis_off()

    labels, preferred = _legend_order(list(handles))
    width = max(3.3 * ncols, 5.0)
    fig.set_size_inches(width, 2.7 * nrows)
    _, legend_in = _place_legend(fig, [handles[k] for k in labels], labels, preferred)
    width = fig.get_size_inches()[0]
    title = textwrap.fill(_title(reports), width=int(width * 10))
    title_in = 0.1 + 0.22 * (title.count("\n") + 1)
    height = 2.7 * nrows + legend_in + 0.15 + title_in
    fig.set_size_inches(width, height)
    fig.suptitle(title, fontsize=12, y=1 - 0.08 / height, va="top")
    fig.tight_layout(rect=(0, (legend_in + 0.15) / height, 1, 1))  # leaves room for the suptitle itself
    return fig


def plot_report(reports: list[Report], out_png: Path) -> Path:
    """Draw the figure for one or several reports (methods overlaid) into ``out_png``.

    Missing points are left out; an average point over fewer datasets than
    expected has a hollow marker. The file is written atomically.
    """
    return _save_atomic(report_figure(reports), Path(out_png))


def _save_atomic(fig, out_png: Path) -> Path:
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    return out_png
