"""What `cacheclip methods NAME`, the README's methods table and the manual's method pages say
about each method beyond its settings: its paper, its kind, its cost, its paper's protocol and
what cacheclip changes. Plain data (no torch): the settings themselves come from each method's
config dataclass, the published numbers from ``cacheclip/results/data/published_rn50.json``.

A method registered without notes here still works everywhere; ``cacheclip methods NAME`` then
shows its summary and settings only.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodNotes:
    paper: str  # authors, venue, year, arXiv id
    code: str  # the official code the protocol was read from ("" when none is pinned)
    kind: str  # training-free, trained (and how), or nothing
    cost: str  # seconds per 16-shot run at 10 / 397 classes (docs/benchmarks.md, 2-core CPU)
    protocol: str  # the paper's protocol, in a sentence or two
    changes: tuple[str, ...]  # what cacheclip does differently (each run records its own list)
    page: str  # the manual's page, relative to docs/
    official: str = "nothing changes: the defaults are the paper's protocol"  # what --protocol official does


NOTES: dict[str, MethodNotes] = {
    "zero-shot": MethodNotes(
        paper="Radford et al. 2021, arXiv 2103.00020 (CLIP)",
        code="",
        kind="nothing trained",
        cost="none",
        protocol="no training; the dataset's single template (ImageNet: the 7-template ensemble); "
        "CLIP's test transform",
        changes=("none: the store's classifier and logit scale, exactly",),
        page="methods/zero-shot.md",
    ),
    "clip-adapter": MethodNotes(
        paper="Gao et al. 2021, arXiv 2110.04544 (CLIP-Adapter)",
        code="gaopengcuhk/CLIP-Adapter",
        kind="trained: residual bottleneck adapter(s), SGD",
        cost="2.9 s / 145 s",
        protocol="CoOp's RN50 configs: SGD lr 0.002, batch 32, cosine with one warm-up epoch, 50-200 epochs "
        "by shots; residual ratio 0.2; seeds, preprocessing and final epoch not published",
        changes=(
            "augmentation from cached views, one per image per epoch (CoOp: a fresh random crop every epoch)",
            "several --alpha values are chosen on the few-shot val split (official code: fixed 0.2)",
            "image features cached in float16 (extract --dtype float32 to avoid)",
        ),
        page="methods/clip-adapter.md",
        official="the ratio fixed at 0.2, no selection; val is only reported",
    ),
    "linear-probe": MethodNotes(
        paper="Radford et al. 2021, arXiv 2103.00020, sec. 3.2; CoOp (Zhou et al. 2022, arXiv 2109.01134) "
        "as few-shot baseline",
        code="KaiyangZhou/CoOp lpclip/",
        kind="trained: logistic regression, L-BFGS (full batch)",
        cost="0.73 s / 42 s",
        protocol="sklearn's L-BFGS LogisticRegression on raw features, C searched on validation "
        "(CoOp: 1e-6..1e6 in 7 steps, then 8 binary-search steps)",
        changes=(
            "L2-normalised features",
            "a fixed grid of 13 C values (1e-2 to 1e4), chosen on the few-shot val",
            "torch L-BFGS instead of sklearn (same objective, same minimiser)",
        ),
        page="methods/linear-probe.md",
    ),
    "tip-adapter": MethodNotes(
        paper="Zhang et al., ECCV 2022, arXiv 2207.09519 (Tip-Adapter)",
        code="gaopengcuhk/Tip-Adapter",
        kind="training-free: a key-value cache of the few-shot features",
        cost="0.01 s / 6.3 s",
        protocol="seed 1; alpha, beta searched on the full val split over per-dataset grids "
        "(ImageNet: on test); cache views at crop scale (0.5, 1); ImageNet text: the 7-template ensemble",
        changes=(
            "alpha, beta chosen on the few-shot val (--protocol official: the full val split and its grids)",
            "never chosen on test (ImageNet: fixed values, or --no-val holdout)",
            "cached views at the store's crop scale (default (0.08, 1); extract --aug-scale 0.5,1 to match)",
        ),
        page="methods/tip-adapter.md",
        official="alpha, beta searched on the whole val split over the dataset's config grid (beta-major, first "
        "best); ImageNet: the config's initial values without val, or its grid on --no-val holdout",
    ),
    "tip-adapter-f": MethodNotes(
        paper="Zhang et al., ECCV 2022, arXiv 2207.09519 (Tip-Adapter-F)",
        code="gaopengcuhk/Tip-Adapter",
        kind="trained: the cache keys, AdamW, 20 epochs",
        cost="0.15 s / 30 s",
        protocol="as Tip-Adapter, plus the cache keys fine-tuned (AdamW lr 1e-3, 20 epochs, batch 256) on "
        "fresh random crops, keeping the epoch that scored best on test",
        changes=(
            "those of tip-adapter",
            "trained on cached views (Tip-Adapter-F: fresh random crops)",
            "the last epoch is kept, never the best on test",
        ),
        page="methods/tip-adapter-f.md",
        official="as tip-adapter, and training with the config's initial alpha/beta, epochs and lr",
    ),
    "zs-lp": MethodNotes(
        paper="Silva-Rodriguez et al., CVPR 2024, arXiv 2312.12730 (ZS-LP baseline of CLAP)",
        code="jusiro/CLAP (CONSTRAINT none)",
        kind="trained: cosine linear probe from the text classifier, SGD 300 epochs",
        cost="0.20 s / ~38 s",
        protocol="SGD lr 0.1, batch 256, 300 epochs, one warm-up epoch; CoOp's splits, seeds 1-3; "
        "no validation, the last epoch",
        changes=(
            "cached views, one per image per epoch (CLAP: batches from all 20 views of every image; "
            "--clap-sampling pool is closer)",
            "the store's crop scale and view count",
        ),
        page="methods/zs-lp.md",
    ),
    "clap": MethodNotes(
        paper="Silva-Rodriguez et al., CVPR 2024, arXiv 2312.12730 (CLAP)",
        code="jusiro/CLAP (CONSTRAINT l2)",
        kind="trained: ZS-LP with a class-adaptive pull to the zero-shot classifier",
        cost="0.10 s / ~49 s",
        protocol="as ZS-LP, plus the penalty lambda_k from the zero-shot confidence on the support views, "
        "computed once",
        changes=(
            "those of zs-lp",
            "lambda from the store's V cached views (CLAP: 20)",
            "the paper's augmented-Lagrangian update of lambda is not implemented (the shipped command "
            "does not run it)",
        ),
        page="methods/clap.md",
    ),
    "lp++": MethodNotes(
        paper="Huang et al., CVPR 2024, arXiv 2404.02285 (LP++)",
        code="FereshteShakeri/FewShot-CLIP-Strong-Baseline",
        kind="trained: linear probe blended with the text classifier, full batch, 300 epochs",
        cost="0.19 s / ~41 s",
        protocol="its own few-shot draws, mean of 10 tasks; K val images per class; one random crop per "
        "image; data-driven step sizes; the code accumulates alpha's gradient",
        changes=(
            "CoOp's few-shot splits and a min(K, 4)-shot val (--protocol official: K per class)",
            "one cached view per image, drawn once per run",
            "the paper's alpha update by default (--lpp-quirk true: the code's)",
        ),
        page="methods/lp-plus-plus.md",
        official="its val rule on K val images per class (ImageNet: --no-val holdout)",
    ),
    "taskres": MethodNotes(
        paper="Yu et al., CVPR 2023, arXiv 2211.10277 (TaskRes)",
        code="geekyutao/TaskRes@5195359",
        kind="trained: a residual on the text classifier, Adam",
        cost="0.04 s / ~24 s",
        protocol="per-dataset alpha, lr and epochs from train_regular.sh; no validation; the last epoch; "
        "fresh random crops every epoch",
        changes=(
            "cached views instead of fresh crops",
            "several --taskres-alpha values are chosen on the few-shot val (the official code fixes one)",
        ),
        page="methods/taskres.md",
        official="the official scripts' per-dataset alpha, lr and epochs",
    ),
    "cross-modal": MethodNotes(
        paper="Lin et al., CVPR 2023, arXiv 2301.06267 (Multimodality Helps Unimodality)",
        code="linzhiqiu/cross_modal_adaptation@ac9077e",
        kind="trained: a linear head on image and text samples, AdamW",
        cost="18 s / 134 s",
        protocol="12 (lr, weight decay, batch) configurations x 12,800 iterations, each early-stopped on a "
        "min(K, 4)-shot val; image samples: the centre crop and its flip",
        changes=(
            "image samples from the cached random-crop views (officially: centre crop + flip)",
            "cacheclip's few-shot sampling (officially: the repository's shipped indices)",
        ),
        page="methods/cross-modal.md",
    ),
    "gda": MethodNotes(
        paper="Wang et al., ICLR 2024, arXiv 2402.04087 (GDA)",
        code="mrflogs/ICLR24@560fe21",
        kind="training-free: Gaussian discriminant analysis in closed form",
        cost="0.18 s / 6.1 s",
        protocol="seeds 1-3 of its own draws; alpha on the full val split (ImageNet: on test); 10 views at "
        "crop scale (0.5, 1)",
        changes=(
            "alpha chosen on the few-shot val (--protocol official: the full val split)",
            "never chosen on test (ImageNet: alpha 10 without val, or --no-val holdout)",
            "CoOp's few-shot sampling; the store's crop scale and view count",
        ),
        page="methods/gda.md",
        official="alpha chosen on the whole val split (ImageNet: fixed, or on --no-val holdout)",
    ),
    "proker": MethodNotes(
        paper="Bendou et al., CVPR 2025, arXiv 2501.11175 (ProKeR)",
        code="ybendou/ProKeR@f2ecb3d",
        kind="training-free: kernel ridge regression in closed form (O(M^3))",
        cost="17 s / ~560 s with --proker-views 1",
        protocol="beta, lambda on the full val split over per-dataset grids (ImageNet: on test); 10 views "
        "(ImageNet: 1)",
        changes=(
            "beta, lambda chosen on the few-shot val (--protocol official: the full val split)",
            "never chosen on test (ImageNet: its fixed per-shot values, or --no-val holdout)",
            "float64 solves; a memory guard that names --proker-views when the kernel does not fit",
        ),
        page="methods/proker.md",
        official="the config grids searched on the whole val split (ImageNet: fixed, or on --no-val holdout)",
    ),
}
