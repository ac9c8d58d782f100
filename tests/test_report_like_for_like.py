"""Like with like: each published number beside our run of its own protocol, or marked (in the
Markdown cell and the CSV) as not like for like / uncertain, with the reasons."""

from __future__ import annotations

import csv
import io
import statistics

import pytest
from test_report import RN50, make_result

from cacheclip.results.published import (
    METHOD_KEYS,
    PAPER_DATASETS,
    published_curve,
    published_protocol,
    published_protocol_summary,
    published_zero_shot,
)
from cacheclip.results.render import render_markdown, to_csv, to_markdown
from cacheclip.results.report import build_reports

SEEDS = (1, 2, 3)
TIP_SCALE = "[0.5, 1.0]"


def top1(dataset: str, shots: int, seed: int) -> float:
    """Known accuracies, different per seed so that seed 1 and the mean differ."""
    return {"eurosat": 70.0, "dtd": 55.0, "imagenet": 62.0}[dataset] + shots / 4 + (0.9, -1.3, 2.2)[seed - 1]


def run(
    method: str,
    dataset: str,
    shots: int,
    seed: int,
    *,
    protocol: str = "fewshot",
    classifier: str | None = None,  # None: an older result without the block (templates_spec only)
    paper: str = "single",
    spec: str = "default",
    scale: str = "[0.08, 1.0]",
    preprocess: str = "default",
    epoch: str = "last",
    val: str = "val",
    zs: float = 40.0,
) -> dict:
    """A result as `cacheclip fit` writes it, with the fields that define its protocol."""
    result = make_result(dataset, shots, seed, top1(dataset, shots, seed), method, RN50, zs=zs)
    result["run_key"] += f"-{protocol}-{classifier}-{scale}-{preprocess}-{epoch}"
    result["config"] = {"protocol": protocol, "epoch": epoch}
    result["store"] = {
        "attrs": {"templates_spec": spec, "aug_scale": scale, "preprocess_protocol": preprocess, "aug_views": 10}
    }
    result["fewshot"] = {"val_source": val}
    result["protocol"]["name"] = protocol
    if classifier is not None:
        rule = "paper" if classifier == paper else "--classifier"
        result["classifier"] = {"name": classifier, "templates": [], "rule": rule, "paper": paper}
    return result


def rows_of(report) -> dict[tuple[str, int], dict]:
    return {(r["dataset"], int(r["shots"])): r for r in csv.DictReader(io.StringIO(to_csv(report)))}


def table_line(markdown: str, dataset: str) -> str:
    return next(line for line in markdown.splitlines() if line.startswith(f"| {dataset} |"))


def test_mismatched_comparison_is_marked_in_the_table_and_the_csv_with_its_reasons():
    """Tip-Adapter run as cacheclip's default (few-shot val, CoOp's crop scale) beside the published
    Tip-Adapter (seed 1, the full val split, cache views at (0.5, 1)): not like for like, and why."""
    (report,) = build_reports([run("tip-adapter", "eurosat", 16, s) for s in SEEDS])
    assert report.label == "Tip-Adapter"  # the default protocol: named as before
    paper = published_curve("eurosat", "tip-adapter")[16]
    ours = top1("eurosat", 16, 1)  # the paper ran seed 1 only: our seed-1 run is what it is compared with
    markdown = to_markdown(report)
    line = table_line(markdown, "eurosat")
    assert f"(seed 1 {ours:.2f}; paper {paper:.2f}, {ours - paper:+.2f}) ≠a" in line
    reasons = next(x for x in markdown.splitlines() if x.startswith("- ≠a: "))
    assert "--protocol fewshot (published: as --protocol official)" in reasons
    assert "chosen on val (published: the full val split)" in reasons
    assert "views crop scale (0.08, 1) (published: (0.5, 1))" in reasons
    row = rows_of(report)[("eurosat", 16)]
    assert (row["like_for_like"], row["compared_with"]) == ("no", "seed 1")
    assert float(row["compared_value"]) == pytest.approx(ours) and float(row["published"]) == paper
    assert float(row["diff"]) == pytest.approx(ours - paper, abs=1e-4)
    assert "views crop scale (0.08, 1) (published: (0.5, 1))" in row["mismatch"]
    assert "seed 1 only" in row["published_protocol"] and "full val split" in row["published_protocol"]
    # ...while its zero-shot column (single template, as published on EuroSAT) is like for like
    assert row["zero_shot_like_for_like"] == "yes" and row["zero_shot_mismatch"] == ""
    assert "| eurosat | 40.00 (paper 37.52, +2.48) |" in line + " |"


def test_seed_one_published_number_is_paired_with_our_seed_one_official_run():
    """Official Tip-Adapter (the whole val split, cache views at (0.5, 1), the paper's classifier)
    on two datasets, 3 seeds: each published number sits beside our seed-1 run, like for like; the
    average beside the mean of our seed-1 runs. A cell without seed 1 falls back to the mean, marked."""
    official = {"protocol": "official", "classifier": "single", "scale": TIP_SCALE, "val": "full val split"}
    results = [
        run("tip-adapter", d, s, seed, **official) for d in ("dtd", "eurosat") for s in (1, 16) for seed in SEEDS
    ]
    results = [r for r in results if not (r["dataset"], r["shots"], r["seed"]) == ("dtd", 16, 1)]
    (report,) = build_reports(results)
    assert report.label == "Tip-Adapter [official, crop scale 0.5-1]"
    markdown, rows = to_markdown(report), rows_of(report)
    for d in ("dtd", "eurosat"):
        paper, ours = published_curve(d, "tip-adapter")[1], top1(d, 1, 1)
        assert f"{report.cells[(d, 1)].mean:.2f} ± " in table_line(markdown, d)
        assert f"(seed 1 {ours:.2f}; paper {paper:.2f}, {ours - paper:+.2f}) |" in table_line(markdown, d) + " |"
        row = rows[(d, 1)]
        assert (row["like_for_like"], row["compared_with"], row["mismatch"]) == ("yes", "seed 1", "")
        assert float(row["compared_value"]) == pytest.approx(ours)
        assert float(row["mean"]) == pytest.approx(statistics.fmean(top1(d, 1, s) for s in SEEDS), abs=1e-4)
    seed1 = statistics.fmean(top1(d, 1, 1) for d in ("dtd", "eurosat"))
    paper_avg = statistics.fmean(published_curve(d, "tip-adapter")[1] for d in ("dtd", "eurosat"))
    average = next(x for x in markdown.splitlines() if x.startswith("| **Average"))
    assert f"(seed 1 {seed1:.2f}; paper {paper_avg:.2f}, {seed1 - paper_avg:+.2f})" in average
    # dtd 16-shot has no seed-1 run: compared with the mean of seeds 2, 3, and marked
    mean = statistics.fmean(top1("dtd", 16, s) for s in (2, 3))
    row = rows[("dtd", 16)]
    assert (row["like_for_like"], row["compared_with"]) == ("no", "mean of 2 seeds")
    assert float(row["compared_value"]) == pytest.approx(mean, abs=1e-4)
    assert row["mismatch"] == "no seed-1 run: compared with the mean of seeds 2, 3 (published: seed 1 only)"
    assert f"(paper {published_curve('dtd', 'tip-adapter')[16]:.2f}" in table_line(markdown, "dtd")
    assert rows[("eurosat", 16)]["like_for_like"] == "yes"


def test_variants_of_one_method_are_separate_reports_not_duplicates():
    """The same (dataset, shots, seed) under other protocols, preprocessing, crop scale or epoch
    rule is another report; an older result and a new one of the same protocol still collide."""
    base = [run("clip-adapter", "dtd", 4, s) for s in SEEDS]
    official = [run("clip-adapter", "dtd", 4, s, protocol="official", classifier="single") for s in SEEDS]
    coop2021 = [run("clip-adapter", "dtd", 4, s, preprocess="coop-2021", epoch="best-val") for s in SEEDS]
    tip_scale = [run("clip-adapter", "dtd", 4, s, scale=TIP_SCALE) for s in SEEDS]
    reports = build_reports(base + official + coop2021 + tip_scale)
    assert [r.label for r in reports] == [  # the default first, then by the names of the other parts
        "CLIP-Adapter",
        "CLIP-Adapter [coop-2021, best-val epoch]",
        "CLIP-Adapter [crop scale 0.5-1]",
        "CLIP-Adapter [official]",
    ]
    assert all(r.cells[("dtd", 4)].n == 3 for r in reports)
    assert not any(w.startswith("duplicate run") for r in reports for w in r.warnings)
    text = render_markdown(reports)
    assert "## CLIP-Adapter [official] — RN50-quickgelu / openai" in text and "## CLIP-Adapter — RN50" in text
    # --epoch does not apply to Tip-Adapter: a run that says so is the same protocol as one without it
    old = run("tip-adapter", "dtd", 4, 1)
    new = run("tip-adapter", "dtd", 4, 1, classifier="single", epoch="best-val (does not apply: tip-adapter ...)")
    (one,) = build_reports([old, new])
    assert one.label == "Tip-Adapter" and any(w.startswith("duplicate run") for w in one.warnings)


def test_clip_adapter_is_never_like_for_like_only_uncertain():
    """The published CLIP-Adapter numbers' seeds, preprocessing and final epoch are not known: an
    official run that matches all that is known is 'uncertain', with what is unknown listed."""
    (report,) = build_reports([run("clip-adapter", "dtd", 16, s, protocol="official") for s in SEEDS])
    row = rows_of(report)[("dtd", 16)]
    assert (row["like_for_like"], row["compared_with"]) == ("uncertain", "mean of 3 seeds")
    assert float(row["compared_value"]) == pytest.approx(statistics.fmean(top1("dtd", 16, s) for s in SEEDS))
    assert "9 Oct 2021" in row["mismatch"] and "seeds" in row["mismatch"]
    markdown = to_markdown(report)
    assert table_line(markdown, "dtd").endswith("?a |") and "- ?a: " in markdown


def test_imagenet_zero_shot_single_template_vs_the_published_ensemble():
    """Published ImageNet zero-shot 60.32 is the 7-template ensemble: the zero-shot method run with
    the ensemble pairs with it; with CoOp's single template (chosen, or an older store) it is marked,
    and so is the zero-shot column of a method that used the single template."""
    paper = published_zero_shot("imagenet")
    ensemble = [run("zero-shot", "imagenet", 0, 1, classifier="ensemble", paper="ensemble", zs=60.1)]
    single = [run("zero-shot", "imagenet", 0, 1, classifier="single", paper="ensemble", zs=58.2)]
    older = [run("zero-shot", "imagenet", 0, 2, zs=58.2)]  # no classifier block, default store: single
    for result in ensemble + single + older:
        result["metrics"] = result["zero_shot"]
    good, bad = build_reports(ensemble + single + older)
    assert (good.label, bad.label) == ("Zero-shot CLIP", "Zero-shot CLIP [single]")
    assert bad.cells[("imagenet", 0)].n == 2  # the older result is the same protocol as the chosen single
    assert rows_of(good)[("imagenet", 0)]["like_for_like"] == "yes"
    assert f"60.10 (paper {paper:.2f}, {60.1 - paper:+.2f}) |" in table_line(to_markdown(good), "imagenet")
    row = rows_of(bad)[("imagenet", 0)]
    assert row["like_for_like"] == "no"
    assert row["mismatch"] == "classifier single template (published: 7-template ensemble)"
    assert "(paper 60.32, -2.12) ≠a" in table_line(to_markdown(bad), "imagenet")
    # CLIP-Adapter's paper used the single template on ImageNet: its runs are its default protocol,
    # but the zero-shot recorded with them is not the published zero-shot's classifier
    (clip,) = build_reports([run("clip-adapter", "imagenet", 16, s, classifier="single", zs=58.2) for s in SEEDS])
    assert clip.label == "CLIP-Adapter"
    row = rows_of(clip)[("imagenet", 16)]
    assert row["zero_shot_like_for_like"] == "no" and "7-template ensemble" in row["zero_shot_mismatch"]
    assert "58.20 (paper 60.32, -2.12) ≠" in table_line(to_markdown(clip), "imagenet")


def test_choices_made_on_test_are_never_like_for_like():
    """Tip-Adapter-F kept its best epoch on test everywhere; GDA chose alpha on ImageNet's test."""
    gda = {"protocol": "official", "classifier": "ensemble", "paper": "ensemble", "scale": "[0.08, 1.0]"}
    (gda_report,) = build_reports([run("gda", "imagenet", 16, s, val="holdout", **gda) for s in SEEDS])
    row = rows_of(gda_report)[("imagenet", 16)]
    assert (row["like_for_like"], row["compared_with"]) == ("no", "mean of 3 seeds") and "TEST" in row["mismatch"]
    tipf = {"protocol": "official", "scale": TIP_SCALE, "val": "full val split", "epoch": "best-val"}
    (tipf_report,) = build_reports([run("tip-adapter-f", "dtd", 16, s, **tipf) for s in SEEDS])
    row = rows_of(tipf_report)[("dtd", 16)]
    assert row["like_for_like"] == "no" and row["mismatch"].startswith("kept the best epoch on TEST")
    assert row["compared_with"] == "seed 1"


def test_every_published_number_has_a_structured_protocol():
    for method in ("zero-shot", *METHOD_KEYS):
        assert published_protocol_summary(method)
        for dataset in PAPER_DATASETS:
            paper = published_protocol(dataset, method)
            assert paper is not None and paper.summary()
            on_test = paper.val == "test"
            assert on_test == bool(dataset == "imagenet" and method in ("tip-adapter", "tip-adapter-f", "gda"))
            assert not on_test or paper.never  # a choice made on test is never matched
    assert published_protocol("imagenet", "zero-shot").classifier == "ensemble"
    assert published_protocol("dtd", "tip-adapter").seeds == (1,)
    assert published_protocol("dtd", "clip-adapter").seeds is None  # unknown
    assert published_protocol("dtd", "clap") is None and published_protocol("x", "tip-adapter") is None
