"""The shift table's published column: the stored numbers equal published-shift.md, each shown
with its source and kind, beside runs of its own backbone only, disagreeing sources both shown."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from test_report import RN50
from test_report_shift import SEEDS, shift_result, top1

from cacheclip.results.published import (
    pick_shift_entry,
    published_shift_entries,
)
from cacheclip.results.render import render_markdown
from cacheclip.results.report import build_reports

IN, V2, SK, A, R = "imagenet", "imagenet-v2", "imagenet-sketch", "imagenet-a", "imagenet-r"
# published-shift.md, written out again: (section, method, variant, backbone) -> numbers by dataset
FACTS = {
    ("1a", "zero-shot", "7-template ensemble", "RN50"): {IN: 60.33, V2: 53.27, SK: 35.44},
    ("1a", "linear-probe", "", "RN50"): {IN: 56.13, V2: 45.61, SK: 19.13},
    ("1a", "coop", "", "RN50"): {IN: 62.95, V2: 54.58, SK: 31.04},
    ("1a", "clip-adapter", "", "RN50"): {IN: 63.59, V2: 55.69, SK: 35.68},
    ("1a", "tip-adapter", "", "RN50"): {IN: 62.03, V2: 54.60, SK: 35.90},
    ("1a", "tip-adapter-f", "", "RN50"): {IN: 65.51, V2: 57.11, SK: 36.00},
    ("1b", "zero-shot", "single template", "RN50"): {IN: 58.16, V2: 51.41, SK: 33.37, A: 21.83, R: 56.15},
    ("1b", "zero-shot", "prompt ensemble", "RN50"): {IN: 59.81, V2: 52.91, SK: 35.48, A: 23.24, R: 60.72},
    ("1b", "coop", "", "RN50"): {IN: 63.33, V2: 55.40, SK: 34.67, A: 23.06, R: 56.60},
    ("1b", "cocoop", "", "RN50"): {IN: 62.81, V2: 55.72, SK: 34.48, A: 23.32, R: 57.74},
    ("1b", "prolip", "", "RN50"): {IN: 64.48, V2: 56.24, SK: 34.80, A: 22.75, R: 59.56},
    ("1c", "gda", "", "ViT-B/32"): {IN: 67.01, V2: 58.51, SK: 42.11, A: 30.20, R: 67.80},
    ("1c", "gda", "", "ViT-B/16"): {IN: 72.23, V2: 65.04, SK: 48.96, A: 50.51, R: 76.97},
}
KINDS = {"1a": "primary", "1b": "secondary", "1c": "official repo"}


def _entries() -> list[dict]:
    path = Path(__file__).parents[1] / "cacheclip/results/data/published_shift.json"
    return json.loads(path.read_text("utf-8"))["entries"]


def test_the_data_file_holds_exactly_the_reference_numbers_with_their_kind():
    entries = _entries()
    stored = {(e["ref"], e["method"], e["variant"], e["backbone"]): e["top1"] for e in entries}
    assert stored == FACTS
    for e in entries:  # ProLIP's README is its authors' own: official repo, though listed under 1b
        assert e["kind"] == ("official repo" if e["method"] == "prolip" else KINDS[e["ref"]])
        assert e["source"] and e["protocol"]


def test_pairing_follows_backbone_and_templates():
    rn50 = published_shift_entries("RN50")
    assert pick_shift_entry(rn50, "zero-shot", ("imagenet7",)).variant == "7-template ensemble"  # Table 5's
    assert pick_shift_entry(rn50, "zero-shot", ("default",)).variant == "single template"
    assert pick_shift_entry(rn50, "coop", ()).kind == "primary"  # of two, the paper's own table
    assert pick_shift_entry(rn50, "gda", ("imagenet7",)) is None  # GDA's log has no RN50 run
    vit16 = pick_shift_entry(published_shift_entries("ViT-B/16"), "gda", ("imagenet7",))
    assert vit16.top1 == FACTS[("1c", "gda", "", "ViT-B/16")]
    assert published_shift_entries(None) == []


def _gda(model) -> list[dict]:
    out = []
    for seed in SEEDS:
        result = shift_result("tip-adapter-f", seed, model)
        result["method"] = "gda"
        out.append(result)
    return out


def test_a_vit_b16_run_gets_gdas_vit_b16_numbers_and_no_rn50_figure():
    text = render_markdown(build_reports(_gda(("ViT-B-16", "openai"))))
    ours = statistics.fmean(top1("tip-adapter-f", R, s) for s in SEEDS)
    assert f"(paper 76.97, {ours - 76.97:+.2f})" in text
    assert "- GDA: GDA official log (mrflogs/ICLR24 logs/robustness.log @c83409b5) (official repo)" in text
    for rn50_only in ("60.33", "63.33", "Tip-Adapter (arXiv 2207.09519)", "67.01"):  # nor ViT-B/32's
        assert rn50_only not in text


def test_an_rn50_gda_run_says_why_none_and_other_weights_get_none():
    text = render_markdown(build_reports(_gda(RN50)))
    assert "- GDA: GDA's log has ViT-B/32 and ViT-B/16 runs only: no RN50 number" in text
    assert "72.23" not in text and "CoOp (published only, primary)" in text  # RN50 rows only
    laion = render_markdown(build_reports(_gda(("ViT-B-16", "laion2b_s34b_b88k"))))
    assert "paper" not in laion and "published only" not in laion


def test_both_coop_sources_are_shown_with_their_kind():
    text = render_markdown(build_reports([shift_result("clip-adapter", s) for s in SEEDS]))
    assert "| CoOp (published only, primary) | — | — (paper 62.95) | — (paper 54.58) | — (paper 31.04) |" in text
    assert "| CoOp (published only, secondary) | — | — (paper 63.33) | — (paper 55.40) | — (paper 34.67) |" in text
    assert "KaiyangZhou/CoOp issue #8" in text
