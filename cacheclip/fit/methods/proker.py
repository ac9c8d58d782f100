"""ProKeR (Bendou et al., CVPR 2025, "A Kernel Perspective on Few-Shot Adaptation of Large
Vision-Language Models", arXiv 2501.11175): proximal kernel ridge regression around zero-shot CLIP.

Training-free and closed form (official code ``ybendou/ProKeR@f2ecb3d``, trainers/proker.py)::

    X       (M, D)  support vectors: the first V cached views of each of the N train images, each
                    L2-normalised (M = N V); V = 0 means the clean view (M = N)
    f0(x)   (K,)    = normalize(t) x_hat        base learner: the UNSCALED zero-shot cosine
    k(x,x')         = exp(-beta (1 - x_hat . x'_hat))
    K_SS    (M, M)  = k(X, X)
    R       (M, K)  = Y - f0(X)                 Y the one-hot labels
    A       (M, K)  = (K_SS / lambda + I)^-1 R
    logits  (M', K) = f0(f) + k(f, X) A         unscaled, as officially (the argmax is what counts)

lambda is the reference's (official L36, L50), not a plain ridge: (K/lambda + I)^-1 = lambda (K +
lambda I)^-1. lambda = 0 is taken as its limit, A = 0: zero-shot exactly. beta and lambda are chosen
on the few-shot val split over ProKeR's per-dataset grids (ties: the first, beta-major); without val
they are ProKeR's fixed per-shot values (``PROKER_FIXED``).

Cost: O(M^3) per beta and memory O(M^2) (``memory_bytes``), checked against the machine before any
work; ``--proker-views N`` lowers M. Solves in float64: in float32 the val top-1 of one grid point
moved by one image and the choice changed at M = 6,352 (benchmarks' 397-class data, 1 view).

Artifact: ``support`` (M, D) float32 = X (normalised), ``coef`` (M, K) float32 = A, ``text`` (K, D)
float32 = normalize(t), the base learner's classifier, ``beta`` (0-d float32).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cacheclip.errors import ConfigError
from cacheclip.fit.methods.base import (
    FitContext,
    Method,
    NewClassRule,
    Predictor,
    RunPlan,
    Trained,
    register_method,
    view_differences,
)
from cacheclip.fit.methods.gda import selection_differences, template_differences
from cacheclip.fit.metrics import classification_metrics
from cacheclip.settings import setting

PROKER_VIEWS = 10  # --augment-epoch default
PROKER_SCALE, PROKER_IMAGENET_SCALE = (0.5, 1.0), (0.08, 1.0)  # RandomResizedCrop scale of the views
# Official grids (low, high, count) for torch.linspace: (beta, lambda), configs/RN50/configs_proker/<ds>.yaml
PROKER_GRID_SPECS: dict[str, tuple[tuple[float, float, int], tuple[float, float, int]]] = {
    "caltech101": ((0.5, 3.0, 20), (0.001, 1.0, 10)),
    "fgvc_aircraft": ((0.5, 3.0, 20), (0.001, 1.0, 10)),
    "food101": ((0.5, 3.0, 20), (0.001, 1.0, 10)),
    "ucf101": ((0.5, 3.0, 20), (0.001, 1.0, 10)),
    "dtd": ((0.1, 10.0, 20), (0.001, 10.0, 100)),
    "oxford_flowers": ((0.1, 10.0, 20), (0.001, 10.0, 100)),
    "eurosat": ((0.5, 3.0, 20), (0.001, 1.0, 100)),
    "oxford_pets": ((0.01, 5.0, 40), (0.01, 0.3, 20)),
    "stanford_cars": ((0.1, 10.0, 5), (0.01, 1.0, 5)),
    "sun397": ((0.1, 10.0, 20), (0.01, 10.0, 10)),
    "imagenet": ((1.5, 3.0, 10), (0.05, 0.25, 10)),  # searched on test officially, with V = 1
}
GENERIC_GRID = "caltech101"  # datasets without a ProKeR config: the grid four of its configs share
# (beta, lambda) per shot count without val (--hp-selection imagenet, hyperparameters.json)
PROKER_FIXED = {1: (3.0, 0.05), 2: (2.6, 0.05), 4: (1.5, 0.05), 8: (1.66, 0.07), 16: (1.7, 0.1)}
# (M, how many Cholesky factorisations + solves one float64 eigh of K_SS costs at that M): measured with
# torch's MKL on 2 threads, AMD EPYC Zen 2, 2026-12-07 (1 thread: 20 at 4,000). The eigen sweep pays from
# that many lambdas. MKL's eigh scales worse than its Cholesky, so the count grows with M: of the official
# grids, the 5-10 lambda ones (most datasets, ImageNet) and Pets' 20 at 16 shots take Cholesky, the
# 100-lambda ones (DTD, Flowers, EuroSAT) the eigen sweep.
EIGH_COST = ((1_000, 14.0), (2_000, 13.0), (4_000, 18.0), (6_000, 23.0), (8_000, 34.0))
ROW_BYTES = 64 << 20  # query rows per chunk: one (rows, M) float32 kernel block near 64 MiB
HEADROOM = 0.9  # share of the available memory a fit may plan to use


@dataclass(frozen=True)
class ProkerConfig:
    """ProKeR's settings; ``official`` (None) means ProKeR's own value for the dataset or shots."""

    betas: tuple[float, ...] | None = setting(
        None, "kernel sharpness beta(s), chosen on val; official: the dataset's grid", flag="--proker-beta",
        none_word="official",
    )  # fmt: skip
    lambdas: tuple[float, ...] | None = setting(
        None, "lambda(s) of (K/lambda + I)^-1 (not a plain ridge), chosen on val; official: the dataset's grid",
        flag="--proker-lambda", none_word="official",
    )  # fmt: skip
    no_val: tuple[float, float] | None = setting(
        None, "beta,lambda without val; official: ProKeR's per-shot values", flag="--proker-no-val",
        none_word="official",
    )  # fmt: skip
    views: int | None = setting(
        None, "views per image in the support: the first N cached ones (0: the clean view); official: all "
        "(ImageNet: the clean view)", flag="--proker-views", none_word="official",
    )  # fmt: skip
    memory_gb: float | None = setting(
        None, "memory budget in GB; auto: 90% of the available memory", flag="--proker-memory-gb", none_word="auto"
    )

    def validate(self) -> None:
        bad = (self.betas is not None and min(self.betas) <= 0) or (self.lambdas is not None and min(self.lambdas) < 0)
        bad |= self.no_val is not None and (self.no_val[0] <= 0 or self.no_val[1] < 0)
        bad |= (self.views is not None and self.views < 0) or (self.memory_gb is not None and self.memory_gb <= 0)
        if bad:
            raise ConfigError(
                "--proker-beta must be > 0, --proker-lambda >= 0, --proker-views >= 0, --proker-memory-gb > 0",
                "e.g. --proker-beta 1,2 --proker-lambda 0.01,0.1 --proker-views 2",
            )


# ---------------------------------------------------------------- grids and views


def official_grid(dataset: str) -> tuple[list[float], list[float]]:
    """(betas, lambdas) of ProKeR's config for ``dataset`` (``GENERIC_GRID``'s for other datasets):
    its torch.linspace grids, in float64 (its float32 values differ by < 1e-7 relative)."""
    specs = PROKER_GRID_SPECS.get(dataset, PROKER_GRID_SPECS[GENERIC_GRID])
    return tuple(torch.linspace(*spec, dtype=torch.float64).tolist() for spec in specs)


def fixed_values(cfg: ProkerConfig, shots: int) -> tuple[float, float, str]:
    """(beta, lambda, where from) without val: the single values given, else ``no_val``, else ProKeR's
    for the largest tabulated shot count <= shots."""
    if cfg.betas is not None and cfg.lambdas is not None and len(cfg.betas) == len(cfg.lambdas) == 1:
        return float(cfg.betas[0]), float(cfg.lambdas[0]), "as given"
    if cfg.no_val is not None:
        return float(cfg.no_val[0]), float(cfg.no_val[1]), "--proker-no-val"
    tabulated = max(s for s in PROKER_FIXED if s <= max(shots, 1))
    return (*PROKER_FIXED[tabulated], f"ProKeR's fixed values for {tabulated} shots")


def candidate_grid(ctx: FitContext) -> tuple[list[float], list[float]]:
    """(betas, lambdas) a run considers: with val the grids (given or official), else one pair."""
    cfg = ctx.config
    if not ctx.has_val:
        beta, lam, _ = fixed_values(cfg, ctx.shots)
        return [beta], [lam]
    betas, lambdas = official_grid(ctx.data.dataset)
    if ctx.official:  # --protocol official: ProKeR's config grids, whatever was given
        return betas, lambdas
    return (
        [float(b) for b in cfg.betas] if cfg.betas is not None else betas,
        [float(x) for x in cfg.lambdas] if cfg.lambdas is not None else lambdas,
    )


def support_views(ctx: FitContext) -> int:
    """Views per image in the support: 0 is the clean view. Official: every cached view, the clean
    view on ImageNet (ProKeR's V = 1 there); ``--proker-views N``: the first N (at most the store's)."""
    if ctx.views != "aug":
        return 0
    if ctx.config.views is None:
        return 0 if ctx.data.dataset == "imagenet" else ctx.data.aug_views
    return min(ctx.config.views, ctx.data.aug_views)


# ---------------------------------------------------------------- memory


def memory_bytes(m: int, k: int, d: int, n_val: int, lambdas: int) -> int:
    """Estimated peak bytes of a fit on M support vectors (K classes, D dims, n_val val rows).

    The Cholesky path holds K_SS and one factor buffer (16 M^2, float64); the eigen path K_SS
    overwritten by its eigenvectors plus LAPACK syevd's 2 M^2 doubles of workspace (24 M^2). Then X in
    raw, float64 and float32 (16 M D), R, Q^T R and A in float64, A in float32 (28 M K), the val
    kernel blocks of one beta (4 n_val M) and one query chunk (``ROW_BYTES``)."""
    square = 24 if eigh_pays(m, lambdas) else 16
    return square * m * m + 16 * m * d + 28 * m * k + 4 * n_val * m + ROW_BYTES


def available_bytes() -> int | None:
    """Memory this process may still take: MemAvailable (Linux), capped by a cgroup v2 limit; else
    the free pages from ``os.sysconf``; None when nothing says."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        free = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    try:  # a container's own limit, when lower than the machine's
        cgroup = Path("/sys/fs/cgroup")
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            free = min(free, int(limit) - int((cgroup / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return free


def check_memory(ctx: FitContext, plan: RunPlan, lambdas: int) -> None:
    """ConfigError, before any work, when the fit's estimate exceeds the budget (``--proker-memory-gb``,
    else 90% of the available memory); the hint names the largest ``--proker-views`` that fits."""
    given, have = ctx.config.memory_gb, available_bytes()
    if given is None and have is None:
        return  # nothing to compare with
    budget = given * 1e9 if given is not None else HEADROOM * have
    n, k, d = len(plan.split.train), ctx.data.num_classes, ctx.data.class_weights.shape[1]
    n_val = len(ctx.data.val_labels) if ctx.official and ctx.has_full_val else len(plan.split.val)  # official: all val
    views, read = support_views(ctx), 4 * n * ctx.data.aug_views * d  # every cached view is read, then sliced
    need = memory_bytes(n * max(views, 1), k, d, n_val, lambdas) + (read if views else 0)
    if need <= budget:
        return
    fits = [v for v in range(views - 1, -1, -1) if memory_bytes(n * max(v, 1), k, d, n_val, lambdas) + read <= budget]
    hint = f"use fewer views per image: --proker-views {fits[0]}" if fits else "no view count fits: free memory"
    hint += " (0: the clean view)" if fits and fits[0] == 0 else ""
    limit = (
        f"--proker-memory-gb allows {given:g} GB"
        if given is not None
        else f"{have / 1e9:.1f} GB are available (a fit plans for {HEADROOM:.0%}: {budget / 1e9:.1f} GB)"
    )
    raise ConfigError(
        f"ProKeR needs about {need / 1e9:.1f} GB for M = {n * max(views, 1)} support vectors "
        f"({n} images x {max(views, 1)} {'views' if views else 'clean view'}) and {limit}",
        hint + ", or set the budget with --proker-memory-gb",
    )


# ---------------------------------------------------------------- the math


def base_logits(feats: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """f0 (M', K) = normalize(f) @ text^T for raw feats (M', D), text (K, D) normalised; text's dtype."""
    return F.normalize(feats.to(text.dtype), dim=-1) @ text.t()


def kernel(a: torch.Tensor, support: torch.Tensor, beta: float) -> torch.Tensor:
    """k(a, X) (M', M) = exp(beta (a @ X^T - 1)) for normalised a (M', D) and X (M, D)."""
    return (a @ support.t()).sub_(1.0).mul_(beta).exp_()


def eigh_cost(m: int) -> float:
    """Cholesky solves one eigh of an (M, M) K_SS costs: ``EIGH_COST`` interpolated in M, held below its
    first size and extended along its last slope beyond its last."""
    sizes, costs = zip(*EIGH_COST, strict=True)
    if m <= sizes[0]:
        return costs[0]
    i = next((i for i in range(1, len(sizes)) if m <= sizes[i]), len(sizes) - 1)
    return costs[i - 1] + (costs[i] - costs[i - 1]) / (sizes[i] - sizes[i - 1]) * (m - sizes[i - 1])


def eigh_pays(m: int, lambdas: int) -> bool:
    """Whether one eigh per beta costs less than ``lambdas`` Cholesky solves at this M."""
    return lambdas >= eigh_cost(m)


def coefficient_path(gram: torch.Tensor, residual: torch.Tensor, lambdas: Sequence[float]) -> Iterator[torch.Tensor]:
    """A(lambda) (M, K) = (K_SS / lambda + I)^-1 R for each lambda, float64; lambda = 0 gives A = 0.

    Short grids: one Cholesky factorisation per lambda, in a single reused buffer. Long ones (``eigh_pays``):
    one eigendecomposition K_SS = Q diag(e) Q^T, then A = Q diag(lambda / (e + lambda)) Q^T R
    per lambda; K_SS (overwritten by Q) is PSD, so round-off eigenvalues below 0 are clamped to 0.
    Both work in place on column-major views (``.mT`` of the symmetric row-major matrices): LAPACK
    then needs no copy, and the peak stays K_SS plus one M x M buffer (syevd: its 2 M^2 workspace)."""
    # lambda as the reference writes it (official L36, L50), not a plain ridge (K + lambda I)^-1
    if eigh_pays(gram.shape[0], len(lambdas)):
        evals, evecs = gram.new_empty(gram.shape[0]), gram.mT
        torch.linalg.eigh(evecs, out=(evals, evecs))
        evals.clamp_(min=0.0)
        projected = evecs.t() @ residual  # Q^T R (M, K)
        for lam in lambdas:
            yield evecs @ ((lam / (evals + lam)).unsqueeze(1) * projected) if lam > 0 else torch.zeros_like(residual)
        return
    factor, info = torch.empty_like(gram), torch.empty((), dtype=torch.int32)
    lower = factor.mT  # column-major: cholesky_ex and solve_triangular work on it without a copy
    for lam in lambdas:
        if lam == 0:
            yield torch.zeros_like(residual)
            continue
        torch.mul(gram, 1.0 / lam, out=factor).diagonal().add_(1.0)  # K/lam + I: symmetric, eigenvalues >= 1
        torch.linalg.cholesky_ex(lower, out=(lower, info))  # L L^T = K/lam + I, in place
        half = torch.linalg.solve_triangular(lower, residual, upper=False)  # (cholesky_solve would copy L)
        yield torch.linalg.solve_triangular(lower.mT, half, upper=True)


def chunk_rows(m: int) -> int:
    """Query rows per chunk: one (rows, M) float32 kernel block near ``ROW_BYTES``."""
    return max(1, ROW_BYTES // (4 * max(1, m)))


def query_blocks(feats: torch.Tensor, support: torch.Tensor, text: torch.Tensor, beta: float):
    """(f0, k(f, X)) per chunk of raw feats (M', D), float32: the (rows, M) kernel block near 64 MiB."""
    for chunk in feats.split(chunk_rows(support.shape[0])):
        yield base_logits(chunk, text), kernel(F.normalize(chunk.float(), dim=-1), support, beta)


def proker_logits(feats: torch.Tensor, support: torch.Tensor, coef: torch.Tensor, text: torch.Tensor, beta: float):
    """f0(f) + k(f, X) A (M', K) float32 for raw feats (M', D); support X (M, D) normalised, coef A
    (M, K), text (K, D) normalised, all float32."""
    out = [f0 + block @ coef for f0, block in query_blocks(feats, support, text, beta)]
    return torch.cat(out) if out else feats.new_zeros(0, text.shape[0])


@dataclass
class ProkerFit:
    support: torch.Tensor  # X (M, D) float32, normalised
    beta: float
    lam: float
    coef: torch.Tensor  # A (M, K) float32
    scores: list[list[float]] | None  # val top-1 (%) per (beta, lambda), None without val


def fit_grid(x, labels, text, betas, lambdas, val=None, tick=None) -> ProkerFit:
    """The best (beta, lambda) on val (strictly better wins: the first, beta-major) and its A; without
    val the single pair. x (M, D) raw support, labels (M,), text (K, D) normalised float32. The val
    blocks are kept per beta and scored as ``proker_logits`` scores (same chunks, same products), so
    the chosen run's val top-1 is the grid's."""
    x64 = F.normalize(x.double(), dim=-1)  # the kernel in float64: its rounding is the eigensolver's
    support = x64.float()
    residual = F.one_hot(labels.long(), text.shape[0]).double() - x64 @ text.double().t()  # R = Y - f0(X)
    best, scores = None, []
    for i, beta in enumerate(betas):
        gram = kernel(x64, x64, beta)  # (M, M) float64
        rows = chunk_rows(len(support))
        blocks = list(zip(query_blocks(val[0], support, text, beta), val[1].split(rows), strict=True)) if val else []
        row = []
        for lam, coef in zip(lambdas, coefficient_path(gram, residual, lambdas), strict=True):
            coef = coef.float()
            correct = sum(int((f0 + k @ coef).argmax(1).eq(y).sum()) for (f0, k), y in blocks)
            row.append(100.0 * correct / len(val[1]) if val else None)
            if best is None or correct > best[0]:
                best = (correct, beta, lam, coef)
        del gram, blocks
        scores.append(row)
        if tick is not None:
            tick(i + 1, len(betas))
    return ProkerFit(support, best[1], best[2], best[3], scores if val else None)


# ---------------------------------------------------------------- the method


def _support(ctx: FitContext, plan: RunPlan, views: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(X raw (N V, D), labels (N V,)): image i's views in rows i V .. i V + V - 1; V = 0: clean (N, D)."""
    if views == 0:
        feats, labels, _ = ctx.train_features(plan.split, aug=False)  # no views read
        return torch.from_numpy(feats), torch.from_numpy(labels)
    _, aug, labels = ctx.train_views(plan.split)
    n, _, d = aug.shape
    return aug[:, :views].reshape(n * views, d), labels.repeat_interleave(views)


def _support_text(v: int, cached: int) -> str:
    if v == 0:
        return "the clean view of each image, L2-normalised (M = N)"
    which = "all" if v == cached else f"the first {v} of"
    return f"{which} {cached} cached views per image, each L2-normalised (M = N x {v})"


def support_size(ctx: FitContext) -> int:
    """M of this shot count's runs: ``shots`` train images per class (fewer where a class has fewer) x views."""
    per_class = torch.bincount(torch.tensor(ctx.data.train_labels, dtype=torch.long)).clamp(max=ctx.shots)
    return int(per_class.sum()) * max(support_views(ctx), 1)


def _solver(m: int, lambdas: int) -> str:
    return "float64 eigendecomposition per beta" if eigh_pays(m, lambdas) else "float64 Cholesky per (beta, lambda)"


def payload(ctx: FitContext) -> dict[str, Any]:
    betas, lambdas = candidate_grid(ctx)
    v, data = support_views(ctx), ctx.data
    return {
        "betas": betas,
        "lambdas": lambdas,
        "grid": _grid_source(ctx),
        "support_views": v,
        "support": _support_text(v, data.aug_views),
        "solver": _solver(support_size(ctx), len(lambdas)),
        "logits": "unscaled: cos(f, t) + k(f, X) A",
    }


def _grid_source(ctx: FitContext) -> str:
    if not ctx.has_val:
        return "fixed: " + fixed_values(ctx.config, ctx.shots)[2]
    known = ctx.data.dataset in PROKER_GRID_SPECS
    return f"ProKeR's {ctx.data.dataset} config" if known else f"{GENERIC_GRID}'s (no ProKeR config)"


def train(ctx: FitContext, plans: list[RunPlan]) -> list[Trained]:
    data = ctx.data
    betas, lambdas = candidate_grid(ctx)
    views = support_views(ctx)
    for plan in plans:  # all of them before any work: never run out of memory half-way
        check_memory(ctx, plan, len(lambdas))
    text = F.normalize(data.class_weights.float(), dim=-1)
    out = []
    for p, plan in enumerate(plans):
        start = time.perf_counter()
        x, labels = _support(ctx, plan, views)
        val, val_set = ctx.official_val(plan.split)  # official: the whole val split (--hp-selection tip-adapter)
        tick = lambda done, total, p=p: ctx.tick(p * total + done, len(plans) * total)  # noqa: E731
        fit = fit_grid(x, labels, text, betas, lambdas, val, tick)
        predict = partial(proker_logits, support=fit.support, coef=fit.coef, text=text, beta=fit.beta)
        chosen = {"beta": fit.beta, "lambda": fit.lam}
        if val is not None:
            source = "full val split" if val_set == "full" else ctx.selection_source
            selection = {"on": source, "candidates": {"beta": betas, "lambda": lambdas}}
            selection |= {"val_top1": fit.scores, "val_top1_axes": ["beta", "lambda"], "chosen": chosen}
        else:
            selection = {"on": "none", "candidates": [dict(chosen)], "chosen": chosen}
            selection["reason"] = f"no val split: beta, lambda fixed ({fixed_values(ctx.config, ctx.shots)[2]})"
        val_metrics = classification_metrics(predict(val[0]), val[1], data.num_classes) if val else None
        config = {**payload(ctx), "chosen": chosen, "classifier": f"cos(f, t) + k(f, X) A, t: {data.classifier}"}
        tensors = {"support": fit.support, "coef": fit.coef.contiguous(), "text": text, "beta": torch.tensor(fit.beta)}
        meta = {
            "method_config": {**chosen, "support_views": views},
            "classnames": data.classnames,
            "logit_scale": 1.0,
            "logits": "normalize(f) @ text.T + exp(beta * (normalize(f) @ support.T - 1)) @ coef",
        }
        seconds = time.perf_counter() - start
        out.append(Trained(plan, predict, selection, val_metrics, config, (tensors, meta), seconds, val_set))
    return out


def from_artifact(tensors: dict, meta: dict, class_weights: torch.Tensor, logit_scale: float, device: str):
    support, coef, text = (tensors[k].to(device) for k in ("support", "coef", "text"))
    beta = float(tensors["beta"])
    return lambda feats: proker_logits(feats.to(device), support, coef, text, beta).cpu()


def new_class_coef(support: torch.Tensor, text: torch.Tensor, beta: float, lam: float) -> torch.Tensor:
    """A (M, K_new) float32 of the new classes' columns, as the formula defines them: no support image
    is of a new class, so their targets Y are 0 and R = -f0(X). support (M, D), text (K_new, D) normalised."""
    x64 = support.double()
    residual = -(x64 @ text.double().t())
    return next(coefficient_path(kernel(x64, x64, beta), residual, [lam])).float()


def new_classes(ctx: FitContext, trained: Trained, new_weights: torch.Tensor) -> Predictor:
    """The new classes' columns of the run's regression, on its (base-class) support and (beta, lambda)."""
    tensors, meta = trained.artifact
    support, beta = tensors["support"], float(tensors["beta"])
    text = F.normalize(new_weights.float(), dim=-1)
    coef = new_class_coef(support, text, beta, float(meta["method_config"]["lambda"]))
    return partial(proker_logits, support=support, coef=coef, text=text, beta=beta)


def differences(ctx: FitContext) -> list[str]:
    cfg, data = ctx.config, ctx.data
    betas, lambdas = candidate_grid(ctx)
    beta, lam, source = fixed_values(cfg, ctx.shots)
    fixed = f"beta = {beta:g}, lambda = {lam:g} ({source})"
    diffs = selection_differences(ctx, "beta, lambda", "ProKeR", fixed)
    theirs = "{} x {}".format(*map(len, official_grid(data.dataset)))
    if ctx.has_val and data.dataset not in PROKER_GRID_SPECS:
        diffs.append(f"{data.dataset} has no ProKeR config: {GENERIC_GRID}'s grid, {theirs}")
    elif ctx.has_val and not ctx.official and (cfg.betas is not None or cfg.lambdas is not None):
        diffs.append(f"grid of {len(betas)} betas x {len(lambdas)} lambdas (ProKeR's config: {theirs})")
    diffs += _view_differences(ctx) + template_differences(data, "ProKeR")
    solver = _solver(support_size(ctx), len(lambdas))
    diffs.append(f"coefficients by a {solver} (ProKeR: a float32 solve per (beta, lambda), on GPU)")
    return diffs


def _view_differences(ctx: FitContext) -> list[str]:
    data, v, imagenet = ctx.data, support_views(ctx), ctx.data.dataset == "imagenet"
    if imagenet and v == 0 and (ctx.config.views is None or ctx.views != "aug"):  # ProKeR's own choice there
        return ["support = the store's clean view (ProKeR's ImageNet: its V = 1 view, Resize 256 + CenterCrop 224)"]
    paper = "1 view, the centre crop" if imagenet else f"{PROKER_VIEWS} augmented views per image"
    if ctx.views != "aug":
        return view_differences(ctx, "ProKeR", paper, PROKER_VIEWS)
    if v == 0:
        return [f"support = the clean view only, --proker-views 0 (ProKeR: {paper})"]
    diffs = []
    if v < data.aug_views:
        diffs.append(f"the first {v} of {data.aug_views} cached views per image, --proker-views {v} (ProKeR: {paper})")
    elif v != PROKER_VIEWS or imagenet:
        diffs.append(f"{v} cached views per image (ProKeR: {paper})")
    scale, paper_scale = data.aug_scale, PROKER_IMAGENET_SCALE if imagenet else PROKER_SCALE
    if scale is not None and scale != paper_scale:
        diffs.append(f"support views cropped with scale {scale} (ProKeR: {paper_scale})")
    return diffs


register_method(
    Method(
        name="proker",
        summary="kernel ridge regression on the cached views around zero-shot CLIP, training-free "
        "(Bendou et al. 2025, arXiv 2501.11175)",
        config=ProkerConfig,
        payload=payload,
        train=train,
        differences=differences,
        from_artifact=from_artifact,
        new_classes=NewClassRule(
            "the new classes' columns of the run's kernel regression, as its formula defines them: no base "
            "support image is of a new class, so their targets are 0 and the kernel term pulls their "
            "zero-shot cosine towards 0 near base images (same support, beta and lambda)",
            new_classes,
        ),
        judges_templates=True,
        paper_classifier="ensemble",
    )
)
