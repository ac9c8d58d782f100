"""The report's figure keeps its legend inside the image, under the panels, for any number of
methods (measured with the renderer, as the saved PNG is drawn)."""

from __future__ import annotations

import pytest

from cacheclip.fit.methods import builtin_methods as list_methods  # the built-in ones: at least 12, in their order
from cacheclip.results.plots import report_figure
from cacheclip.results.report import build_reports

RN50 = ("RN50-quickgelu", "openai")  # the published curves add a "(paper)" entry per method that has one


def result(method: str, dataset: str, shots: int, seed: int) -> dict:
    top1 = 40.0 + 2 * shots + seed + len(method)
    return {
        "schema": "cacheclip.result/1",
        "run_key": f"{method}-{dataset}-{shots}-{seed}",
        "method": method,
        "dataset": dataset,
        "shots": shots,
        "seed": seed,
        "model": RN50[0],
        "pretrained": RN50[1],
        "config": {},
        "selection": {},
        "store": {},
        "versions": {},
        "fewshot": {},
        "protocol": {"matches_paper": True, "differences": []},
        "zero_shot": {"val": None, "test": {"top1": 40.0, "mean_per_class": 40.0, "n": 100}},
        "metrics": {
            "val": {"top1": top1, "mean_per_class": top1, "n": 10},
            "test": {"top1": top1, "mean_per_class": top1, "n": 100},
        },
        "wall_time_s": 1.0,
    }


def reports(methods: list[str], datasets: tuple[str, ...]):
    runs = [result(m, d, s, seed) for m in methods for d in datasets for s in (1, 2, 4, 8, 16) for seed in (1, 2)]
    return build_reports(runs)


def legend_fits(fig, tmp_path) -> None:
    fig.savefig(tmp_path / "figure.png", dpi=130)  # draws the figure, as the report does
    renderer = fig.canvas.get_renderer()
    (legend,) = fig.legends
    box, canvas = legend.get_window_extent(renderer), fig.bbox
    assert canvas.x0 - 0.5 <= box.x0 and box.x1 <= canvas.x1 + 0.5, (box, canvas)
    assert canvas.y0 - 0.5 <= box.y0 and box.y1 <= canvas.y1 + 0.5, (box, canvas)
    panels = [ax.get_tightbbox(renderer) for ax in fig.axes if ax.axison]
    assert box.y1 <= min(p.y0 for p in panels) + 1, "the legend is a row of its own, under the panels"
    texts = {t.get_text() for t in legend.get_texts()}
    assert "Zero-shot CLIP (ours)" in texts


@pytest.mark.parametrize(
    ("n", "datasets"),
    [
        (12, ("eurosat",)),
        (12, ("eurosat", "dtd")),
        (6, ("eurosat", "dtd")),
        (2, ("eurosat", "dtd", "oxford_pets", "food101")),
    ],
)
def test_the_legend_is_inside_the_image(tmp_path, n, datasets):
    methods = list_methods()
    assert len(methods) >= 12
    chosen = [m for m in methods if m != "zero-shot"][: n - 1] + ["zero-shot"]
    fig = report_figure(reports(chosen, datasets))
    legend_fits(fig, tmp_path)
