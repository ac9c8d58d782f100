"""Tip-Adapter and Tip-Adapter-F (Zhang et al. 2022, ECCV, arXiv 2207.09519): a key-value cache
of the few-shot train features whose retrieval scores are added to CLIP's zero-shot logits.

    keys    F (NK, D)  L2-normalised train features; with the augmented cache, each image's
                       raw features averaged over its cached views, then normalised
    values  L (NK, K)  one-hot train labels
    A       = exp(-beta * (1 - f_n @ F^T))                 (M, NK), f_n = normalize(f)
    logits  = s * f_n @ W_n^T + alpha * A @ L              s: the store's logit scale

``tip-adapter`` is training-free. ``tip-adapter-f`` makes F learnable (values stay fixed) and
trains it with cross-entropy on those logits. Both choose (alpha, beta) on the few-shot val
split only, over a grid scored in a few matrix products; without val they keep fixed values.
``--protocol official`` follows Tip-Adapter's configs instead (data/tip_adapter_configs.json): the
whole val split, the dataset's grid, Tip-Adapter-F's initial alpha/beta, epochs and lr; never test.
Since L is one-hot, ``A @ L`` is computed as a per-class sum of A's columns (``index_add``).
Tip-Adapter-F trains every seed of a shot count in one stack (:mod:`cacheclip.fit.trainer`): keys
(R, NK, D), each run's cache labels and batches its own (:func:`finetune_runs`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cacheclip.errors import ConfigError
from cacheclip.fit.adapters import zero_shot_logits
from cacheclip.fit.methods.base import (
    FitContext,
    FitData,
    Method,
    NewClassRule,
    RunPlan,
    Trained,
    register_method,
    zero_shot_on_new,
)
from cacheclip.fit.metrics import classification_metrics
from cacheclip.fit.train import last_epoch_record
from cacheclip.fit.trainer import (
    Keeper,
    Recipe,
    Samples,
    Stack,
    run_apart,
    run_cross_entropy,
    run_stacks,
    stack_blocks,
    stack_chunks,
    stack_vals,
    train_stack,
)
from cacheclip.settings import setting

TIP_SCALE = (0.5, 1.0)  # Tip-Adapter's RandomResizedCrop scale for its cache views
TIP_VIEWS = 10  # Tip-Adapter's augmented views per image
TIPF_WEIGHT_DECAY = 0.01  # torch AdamW's default, which Tip-Adapter-F's optimiser kept
TIPF_EPS = 1e-4  # Tip-Adapter-F's AdamW eps
CHUNK = 4096  # rows of features scored at once (bounds the (rows, NK) affinity)
TIP_GRID = tuple(round(0.1 + 0.3 * i, 2) for i in range(34))  # 0.1 .. 10 in steps of 0.3 (34 values)
# Tip-Adapter's per-dataset configs (grids, Tip-Adapter-F's init, epochs, lr), applied by --protocol official;
# the file names the repository, commit and config file of every value
OFFICIAL = json.loads((Path(__file__).parent / "data" / "tip_adapter_configs.json").read_text())["datasets"]


@dataclass(frozen=True)
class TipAdapterConfig:
    """Tip-Adapter's settings: the (alpha, beta) grid searched on val, and the values without val."""

    alphas: tuple[float, ...] = setting(
        TIP_GRID, "cache weight(s) alpha, chosen on val (0.1..10 step 0.3)", flag="--tip-alpha"
    )
    betas: tuple[float, ...] = setting(
        TIP_GRID, "sharpness value(s) beta, chosen on val (0.1..10 step 0.3)", flag="--tip-beta"
    )
    init: tuple[float, float] = setting(
        (1.0, 1.0), "(alpha, beta) without val; Tip-Adapter-F trains with them", flag="--tip-init"
    )

    def validate(self) -> None:
        if min(*self.betas, self.init[1]) <= 0 or min(*self.alphas, self.init[0]) < 0:
            raise ConfigError(
                "--tip-beta values must be > 0 and --tip-alpha values >= 0", "e.g. --tip-alpha 0.5,1,2 --tip-beta 1,5"
            )


@dataclass(frozen=True)
class TipAdapterFConfig(TipAdapterConfig):
    """Tip-Adapter-F's settings: Tip-Adapter's, plus the training of the cache keys."""

    epochs: int = setting(
        20, "epochs training the cache keys (Tip-Adapter's configs; EuroSAT's 100)", flag="--tip-epochs"
    )
    lr: float = setting(1e-3, "AdamW learning rate (eps 1e-4), cosine per step", flag="--tip-lr")
    batch_size: int = setting(256, "cache images per step", flag="--tip-batch-size")

    def validate(self) -> None:
        super().validate()
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("--tip-epochs and --tip-batch-size must be >= 1 and --tip-lr > 0", "e.g. --tip-epochs 20")


# ---------------------------------------------------------------- the math


def build_keys(clean: torch.Tensor, aug: torch.Tensor | None) -> torch.Tensor:
    """Cache keys (N, D): normalize(mean of the N images' aug views (N, V, D)), or of clean (N, D)."""
    raw = aug.float().mean(dim=1) if aug is not None else clean.float()
    return F.normalize(raw, dim=-1)


def cache_logits(affinity: torch.Tensor, cache_labels: torch.Tensor, num_classes: int, beta: float) -> torch.Tensor:
    """exp(-beta * (1 - affinity)) @ one_hot(cache_labels): (M, NK) -> (M, K)."""
    weights = torch.exp(affinity.mul(beta).sub_(beta))
    return weights.new_zeros(affinity.shape[0], num_classes).index_add_(1, cache_labels, weights)


def tip_logits(
    feats: torch.Tensor,
    keys: torch.Tensor,
    cache_labels: torch.Tensor,
    class_weights: torch.Tensor,
    scale: float,
    alpha: float,
    beta: float,
) -> torch.Tensor:
    """Tip-Adapter logits (M, K) for raw features (M, D); alpha = 0 gives the zero-shot logits exactly."""
    feats = feats.float()
    zs = zero_shot_logits(feats, class_weights, scale)
    k = class_weights.shape[0]
    cache = [cache_logits(F.normalize(chunk, dim=-1) @ keys.t(), cache_labels, k, beta) for chunk in feats.split(CHUNK)]
    return zs + alpha * (torch.cat(cache) if cache else zs.new_zeros(zs.shape))


def grid_top1(
    feats: torch.Tensor,
    labels: torch.Tensor,
    keys: torch.Tensor,
    cache_labels: torch.Tensor,
    class_weights: torch.Tensor,
    scale: float,
    alphas: Sequence[float],
    betas: Sequence[float],
) -> torch.Tensor:
    """Top-1 % of ``tip_logits`` for every (beta, alpha): (len(betas), len(alphas)).

    One affinity matrix; per beta one cache term, then every alpha in one broadcast add
    (A, M, K) and one argmax (alphas in slices that keep that tensor near 64 MiB)."""
    feats = feats.float()
    zs = zero_shot_logits(feats, class_weights, scale)  # (M, K)
    affinity = torch.cat([F.normalize(c, dim=-1) @ keys.t() for c in feats.split(CHUNK)])  # (M, NK)
    k, m = class_weights.shape[0], feats.shape[0]
    alpha_col = torch.tensor([float(a) for a in alphas]).view(-1, 1, 1)  # (A, 1, 1)
    step = max(1, (16 << 20) // max(1, zs.numel()))
    out = torch.empty(len(betas), len(alphas))
    for i, beta in enumerate(betas):
        cache = cache_logits(affinity, cache_labels, k, beta)
        for j in range(0, len(alphas), step):
            logits = zs + alpha_col[j : j + step] * cache  # as tip_logits, bit for bit
            out[i, j : j + step] = logits.argmax(dim=-1).eq(labels).sum(dim=-1) * (100.0 / m)
    return out


def cosine_per_step(lr: float, steps: int) -> list[float]:
    """The lr of each of ``steps`` steps under ``CosineAnnealingLR(T_max=steps)`` stepped per step:
    its recursive form, (1 + cos(pi i / T)) / (1 + cos(pi (i - 1) / T)) times the previous lr, as
    torch computes it (equal to torch's values, not just to the closed form's)."""
    out = [float(lr)]
    for i in range(1, steps):
        out.append((1 + math.cos(math.pi * i / steps)) / (1 + math.cos(math.pi * (i - 1) / steps)) * out[-1])
    return out


def tipf_batches(num_images: int, batch_size: int) -> tuple[int, int]:
    """(rows per step, steps per epoch): every image once per epoch, the last batch smaller when
    ``batch_size`` does not divide N."""
    per_step = min(batch_size, num_images)
    return per_step, math.ceil(num_images / per_step)


def epoch_rows(n: int, v: int, per_step: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """A run's batches as blocks of rows i V + j (image i, view j) of its table: per epoch
    ``randint(V, (N,))`` (not drawn when V = 1) then ``randperm(N)``, as a (N // per_step, per_step)
    block of the full batches, then the short last batch (1, N % per_step) as a block of its own
    when there is one. Runs of one cache size share these shapes, so a stack needs no padding
    (padding the last batch to ``per_step`` rows cost up to 1.3x the rows trained)."""
    full = (n // per_step) * per_step
    while True:
        pick = torch.randint(v, (n,), generator=generator) if v > 1 else None
        perm = torch.randperm(n, generator=generator)
        rows = perm * v + (pick[perm] if pick is not None else 0)
        yield rows[:full].view(-1, per_step)
        if full < n:
            yield rows[full:].view(1, -1)


def stacked_cache_logits(f_hat, keys, cache_index, num_classes: int, beta: float) -> torch.Tensor:
    """``cache_logits`` for R runs, each with its own keys and labels: f_hat (R, B, D) normalised,
    keys (R, NK, D), cache_index (R NK,) each run's cache labels + r K -> (R, B, K). The affinity
    is computed as (R, NK, B), so one ``index_add_`` over the flattened runs sums each run's
    classes (in cache order, as ``cache_logits``)."""
    r, nk, _ = keys.shape
    affinity = torch.bmm(keys, f_hat.transpose(1, 2))  # (R, NK, B)
    weights = torch.exp(affinity.mul(beta).sub_(beta)).view(r * nk, -1)
    out = weights.new_zeros(r * num_classes, weights.shape[1]).index_add_(0, cache_index, weights)
    return out.view(r, num_classes, -1).transpose(1, 2)


def keys_loss(cw: torch.Tensor, cache_index: torch.Tensor, scale: float, alpha: float, beta: float):
    """The trainer's loss for R runs: each run's mean cross-entropy (R,) of Tip-Adapter's logits
    with its own keys (R, NK, D) and cache labels (in ``cache_index``), on its batch x (R, B, D),
    y (R, B). cw (K, D) is the normalised text classifier."""
    k = cw.shape[0]

    def loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        f = F.normalize(x, dim=-1)
        logits = scale * f @ cw.t() + alpha * stacked_cache_logits(f, params["keys"], cache_index, k, beta)
        return run_cross_entropy(logits, y)

    return loss


@dataclass(frozen=True)
class KeysRun:
    """One seed's cache to fine-tune: its images, initial keys, val (for --epoch best-val) and seed."""

    views: torch.Tensor  # (N, V, D) raw
    labels: torch.Tensor  # (N,): the cache labels, also the training labels
    keys: torch.Tensor  # (N, D) initial keys (build_keys)
    seed: int
    val: tuple[torch.Tensor, torch.Tensor] | None = None  # (M, D) raw, (M,)


@dataclass(frozen=True)
class FineTuned:
    """A trained cache: its keys (N, D) on the CPU and, when it kept its best val epoch, the record."""

    keys: torch.Tensor
    epoch: dict | None = None


def finetune_runs(
    runs: Sequence[KeysRun],
    class_weights: torch.Tensor,
    scale: float,
    alpha: float,
    beta: float,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    best_val: bool = False,
    fused: bool = True,
) -> list[FineTuned]:
    """Tip-Adapter-F for every run, stacked (:mod:`cacheclip.fit.trainer`): runs with the same cache
    size together, in chunks that keep their state in the cache. Each run trains its keys on its
    views with AdamW (eps 1e-4, weight decay 0.01), cosine lr over all its steps (per step, to 0),
    CE on ``tip_logits`` at the training alpha, beta; its batches come from its own
    ``torch.Generator().manual_seed(seed)`` (see :func:`epoch_rows`), so its result does not depend
    on its neighbours. ``best_val``: each run keeps its first best val epoch (scored with alpha,
    beta), else its last. ``progress(done, total)`` counts run-epochs. float32 (float64 if keys are)."""
    groups: dict[int, list[int]] = {}
    for r, run in enumerate(runs):
        groups.setdefault(run.keys.shape[0], []).append(r)
    settings = (alpha, beta, epochs, lr, batch_size, device, best_val, fused)
    stacks = []
    for nk, members in groups.items():
        dtype = torch.promote_types(runs[members[0]].keys.dtype, torch.float32)
        state = 4 * nk * runs[members[0]].keys.shape[1] * dtype.itemsize  # keys, gradient, AdamW's two moments
        flops = 4.0 * min(batch_size, runs[members[0]].views.shape[0]) * nk * runs[members[0]].keys.shape[1]
        stacks += [[members[i] for i in chunk] for chunk in stack_chunks(len(members), state, device, flops)]

    def train(idx: list[int], tick: Callable[[int], None] | None) -> list[FineTuned]:
        dtype = torch.promote_types(runs[idx[0]].keys.dtype, torch.float32)
        return _finetune_stack([runs[r] for r in idx], class_weights, scale, dtype, tick, *settings)

    flops = max(
        4.0 * min(batch_size, runs[m[0]].views.shape[0]) * nk * runs[m[0]].keys.shape[1] for nk, m in groups.items()
    )
    return run_stacks(stacks, train, len(runs), epochs, progress, device, flops)


def _finetune_stack(
    runs, class_weights, scale, dtype, progress, alpha, beta, epochs, lr, batch_size, device, best_val, fused
) -> list[FineTuned]:
    """One stack: the tables (N V views each), each run's batch stream from its own generator, the
    per-step cosine, and each run's first best val epoch when asked."""
    r, (n, _, d) = len(runs), runs[0].views.shape
    per_step, steps = tipf_batches(n, batch_size)
    streams = [
        epoch_rows(n, run.views.shape[1], per_step, torch.Generator().manual_seed(int(run.seed))) for run in runs
    ]
    k = class_weights.shape[0]
    cw = F.normalize(class_weights.to(dtype), dim=-1).to(device)
    cache_index = torch.cat([run.labels.to(torch.long) + j * k for j, run in enumerate(runs)]).to(device)
    lrs = {}  # peak lr -> its per-step lrs (one peak: every run trains at lr)

    def lr_at(i: int, peak: float) -> float:
        if peak not in lrs:
            lrs[peak] = cosine_per_step(peak, epochs * steps)
        return lrs[peak][i]

    stack = Stack(
        params={"keys": torch.stack([run.keys.to(dtype) for run in runs]).to(device)},
        loss=keys_loss(cw, cache_index, scale, alpha, beta),
        recipe=Recipe("adamw", eps=TIPF_EPS),
        lrs=[lr] * r,
        weight_decays=[TIPF_WEIGHT_DECAY] * r,
        schedule=lr_at,
        samples=Samples.of_views([run.views for run in runs], [run.labels for run in runs], device),
        blocks=stack_blocks(streams, device),
        dtype=dtype,
        fused=fused,
        step_flops=2.0 * r * per_step * n * d,  # the affinity (R, NK, B)
    )
    keeper = Keeper(r, ties="first") if best_val else None
    scorer = _stacked_scorer(runs, class_weights, scale, alpha, beta, dtype, device, cache_index) if best_val else None

    def after_step(i: int, params: dict[str, torch.Tensor]) -> None:
        if (i + 1) % steps:
            return
        epoch = (i + 1) // steps
        if keeper is not None:
            keeper.observe(epoch, scorer(params["keys"]), params)
        if progress is not None:
            progress(epoch)

    last = train_stack(stack, epochs * steps, after_step)["keys"]
    if keeper is None:
        return [FineTuned(keys) for keys in last.cpu()]
    kept = keeper.state["keys"].cpu()
    return [FineTuned(kept[j], keeper.record(j)) for j in range(r)]


def _stacked_scorer(runs, class_weights, scale, alpha, beta, dtype, device, cache_index):
    """keys (R, NK, D) -> each run's val top-1 % (R,) (float64, as ``top1_percent``) of ``tip_logits``
    at the training alpha, beta, on its own val: one batched forward, in slices of val rows that
    keep the affinity (R, NK, rows) near 64 MiB. Vals are zero-padded to the largest, label -1."""
    f_hat, y, sizes = stack_vals([run.val for run in runs], dtype, device, normalize=True)
    m, k = f_hat.shape[1], class_weights.shape[0]
    zs = scale * (f_hat @ F.normalize(class_weights.to(device=device, dtype=dtype), dim=-1).t())  # (R, M, K)
    rows = max(1, (16 << 20) // max(1, len(runs) * runs[0].keys.shape[0]))

    def score(keys: torch.Tensor) -> torch.Tensor:
        correct = torch.zeros(len(runs), dtype=torch.long, device=device)
        for s in range(0, m, rows):
            cache = stacked_cache_logits(f_hat[:, s : s + rows], keys, cache_index, k, beta)
            correct += (zs[:, s : s + rows] + alpha * cache).argmax(-1).eq(y[:, s : s + rows]).sum(1)
        return 100.0 * correct.to("cpu", torch.float64) / sizes

    return score


def finetune_keys(
    views: torch.Tensor,
    labels: torch.Tensor,
    keys: torch.Tensor,
    class_weights: torch.Tensor,
    scale: float,
    alpha: float,
    beta: float,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: str = "cpu",
    fused: bool = True,
) -> torch.Tensor:
    """Tip-Adapter-F for one run alone (a stack of one): the last epoch's keys (NK, D), on the CPU.
    See :func:`finetune_runs`."""
    run = KeysRun(views, labels, keys, seed)
    [trained] = finetune_runs(
        [run],
        class_weights,
        scale,
        alpha,
        beta,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        device=device,
        fused=fused,
    )
    return trained.keys


# ---------------------------------------------------------------- the official configs


def official_grid(entry: dict) -> tuple[list[float], list[float]]:
    """(alphas, betas) of a Tip-Adapter config: for each of beta and alpha, ``step`` values
    i (scale - 0.1) / step + 0.1, i = 0 .. step - 1 (from 0.1 up to just below ``scale``)."""
    (scale_b, scale_a), (step_b, step_a) = entry["search_scale"], entry["search_step"]
    betas = [i * (scale_b - 0.1) / step_b + 0.1 for i in range(step_b)]
    alphas = [i * (scale_a - 0.1) / step_a + 0.1 for i in range(step_a)]
    return alphas, betas


def resolved(ctx: FitContext) -> TipAdapterConfig:
    """The settings a run uses: the user's, or under --protocol official the dataset's Tip-Adapter
    config (grid; for Tip-Adapter-F also initial alpha/beta, epochs, lr). A dataset without a
    config keeps the user's settings (recorded as a difference)."""
    cfg, entry = ctx.config, OFFICIAL.get(ctx.data.dataset)
    if not ctx.official or entry is None:
        return cfg
    alphas, betas = official_grid(entry)
    cfg = replace(cfg, alphas=tuple(alphas), betas=tuple(betas), init=(entry["init_alpha"], entry["init_beta"]))
    if isinstance(cfg, TipAdapterFConfig):
        cfg = replace(cfg, epochs=entry["train_epoch"], lr=entry["lr"])
    return cfg


# ---------------------------------------------------------------- selection


def choose(
    val: tuple[torch.Tensor, torch.Tensor] | None,
    keys: torch.Tensor,
    cache_labels: torch.Tensor,
    cfg: TipAdapterConfig,
    data: FitData,
    source: str,
) -> tuple[float, float, dict[str, Any]]:
    """(alpha, beta, selection record): the best val top-1 over the grid (ties: the first,
    beta-major as Tip-Adapter's search), or the fixed values without val."""
    alphas, betas = candidate_grid(cfg, val is not None)
    if val is None:
        chosen = {"alpha": alphas[0], "beta": betas[0]}
        why = (
            "no val split: alpha, beta fixed (a single value given is used as is; otherwise "
            f"Tip-Adapter's initial values alpha={cfg.init[0]:g}, beta={cfg.init[1]:g})"
        )
        return alphas[0], betas[0], {"on": "none", "candidates": [dict(chosen)], "chosen": chosen, "reason": why}
    scores = grid_top1(val[0], val[1], keys, cache_labels, data.class_weights, data.logit_scale, alphas, betas)
    best = int(torch.argmax(scores.flatten()))  # first maximum in row-major (beta, alpha) order
    beta, alpha = betas[best // len(alphas)], alphas[best % len(alphas)]
    record = {
        "on": source,
        "candidates": {"alpha": alphas, "beta": betas},
        "val_top1": [[round(float(x), 4) for x in row] for row in scores],
        "val_top1_axes": ["beta", "alpha"],
        "chosen": {"alpha": alpha, "beta": beta},
    }
    return alpha, beta, record


# ---------------------------------------------------------------- the methods


def candidate_grid(cfg: TipAdapterConfig, has_val: bool) -> tuple[list[float], list[float]]:
    """(alphas, betas) a run considers: the grids with val; without, one value each (the
    single value given, else ``init``)."""
    alphas, betas = [float(a) for a in cfg.alphas], [float(b) for b in cfg.betas]
    if has_val:
        return alphas, betas
    return (
        [alphas[0] if len(alphas) == 1 else float(cfg.init[0])],
        [betas[0] if len(betas) == 1 else float(cfg.init[1])],
    )


def payload(ctx: FitContext, finetune: bool = False) -> dict[str, Any]:
    cfg, data, mode = resolved(ctx), ctx.data, ctx.views
    alphas, betas = candidate_grid(cfg, ctx.has_val)
    out = {
        "alphas": alphas,
        "betas": betas,
        "cache": (
            f"mean of {data.aug_views} cached augmented views per image, then L2-normalised"
            if mode == "aug"
            else "the clean (val-transform) view, L2-normalised"
        ),
        "views_used": mode,
    }
    if finetune:
        out["finetune"] = {
            "epochs": cfg.epochs,
            "lr": cfg.lr,
            "batch_size": cfg.batch_size,
            "optimizer": f"AdamW(eps={TIPF_EPS:g}, weight_decay={TIPF_WEIGHT_DECAY:g})",
            "schedule": "cosine per step to 0",
            "train_alpha_beta": [float(cfg.init[0]), float(cfg.init[1])],
            "train_views": (
                "one random cached view per image per epoch" if mode == "aug" else "the clean view every epoch"
            ),
            "model": "first best val epoch" if ctx.epoch_rule == "best-val" else "last epoch",
        }
    if ctx.official:
        out["official_config"] = OFFICIAL.get(data.dataset, {}).get("file", "none for this dataset")
        out["val"] = "full val split" if ctx.has_full_val else ctx.selection_source
    return out


def _train(ctx: FitContext, plans: list[RunPlan], finetune: bool) -> list[Trained]:
    """Every seed of this shot count: the cache keys (Tip-Adapter-F: fine-tuned, all seeds in one
    stack, :func:`finetune_runs`), then each seed's (alpha, beta) search on its val."""
    cfg, data = resolved(ctx), ctx.data
    start, inputs = time.perf_counter(), []
    for plan in plans:
        clean, views, labels = ctx.train_views(plan.split)  # views (N, V, D)
        keys = build_keys(clean, views if ctx.views == "aug" else None)
        val, val_set = ctx.official_val(plan.split)  # official: the whole val split, as Tip-Adapter
        inputs.append((plan, views, labels, keys, val, val_set))
    kept: list[dict | None] = [None] * len(plans)
    if finetune:
        best_val = ctx.epoch_rule == "best-val" and all(i[4] is not None for i in inputs)
        runs = [KeysRun(views, labels, keys, plan.seed, val) for plan, views, labels, keys, val, _ in inputs]
        trained = finetune_runs(
            runs,
            data.class_weights,
            data.logit_scale,
            float(cfg.init[0]),
            float(cfg.init[1]),
            epochs=cfg.epochs,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            device=ctx.device,
            progress=ctx.tick,
            best_val=best_val,
        )
        inputs = [(*i[:3], t.keys, *i[4:]) for i, t in zip(inputs, trained, strict=True)]
        kept = [t.epoch or last_epoch_record(cfg.epochs, ctx.epoch_fallback) for t in trained]
    seconds = (time.perf_counter() - start) / max(1, len(plans))  # training's share; each adds its search

    def search(r: int) -> tuple[float, float, dict, float]:
        """Seed r's (alpha, beta) search and its seconds (``run_apart``: one thread each, the seeds at once)."""
        begin = time.perf_counter()
        _, _, labels, keys, val, val_set = inputs[r]
        source = "full val split" if val_set == "full" else ctx.selection_source
        return (*choose(val, keys, labels, cfg, data, source), time.perf_counter() - begin)

    searched = run_apart(len(plans), search, None if finetune else ctx.tick, ctx.device)
    out = []
    for (plan, _, labels, keys, val, val_set), record, (alpha, beta, selection, took) in zip(
        inputs, kept, searched, strict=True
    ):
        begin = time.perf_counter()
        if record is not None:
            selection["epoch"] = record
        predict = _predictor(keys, labels, data, alpha, beta)
        val_metrics = classification_metrics(predict(val[0]), val[1], data.num_classes) if val else None
        chosen = {"alpha": alpha, "beta": beta}
        config = {**payload(ctx, finetune), "chosen": chosen, "classifier": data.classifier}
        values = F.one_hot(labels, data.num_classes).to(torch.uint8)  # (NK, K)
        tensors = {
            "keys": keys.float().contiguous(),
            "values": values,
            "alpha": torch.tensor(alpha),
            "beta": torch.tensor(beta),
        }
        meta = {
            "method_config": chosen,
            "classnames": data.classnames,
            "logit_scale": data.logit_scale,
            "logits": "s * normalize(f) @ normalize(class_weights).T + alpha * exp(-beta * (1 - "
            "normalize(f) @ keys.T)) @ values",
        }
        took += seconds + time.perf_counter() - begin
        out.append(Trained(plan, predict, selection, val_metrics, config, (tensors, meta), took, val_set))
    return out


def _predictor(keys, cache_labels, data: FitData, alpha: float, beta: float):
    return lambda feats: tip_logits(feats, keys, cache_labels, data.class_weights, data.logit_scale, alpha, beta)


def from_artifact(tensors: dict, meta: dict, class_weights: torch.Tensor, logit_scale: float, device: str):
    keys, labels = tensors["keys"].to(device), tensors["values"].argmax(dim=1).to(device)
    alpha, beta, cw = float(tensors["alpha"]), float(tensors["beta"]), class_weights.to(device)
    return lambda feats: tip_logits(feats.to(device), keys, labels, cw, logit_scale, alpha, beta).cpu()


def differences(ctx: FitContext, finetune: bool = False) -> list[str]:
    data, diffs = ctx.data, []
    if ctx.views == "aug":
        scale = data.aug_scale
        if scale is not None and list(scale) != list(TIP_SCALE):
            diffs.append(f"cache views cropped with scale {tuple(scale)} (Tip-Adapter: {TIP_SCALE})")
        if data.aug_views != TIP_VIEWS:
            diffs.append(f"cache averages {data.aug_views} views per image (Tip-Adapter: {TIP_VIEWS})")
    else:
        diffs.append(f"cache keys from the clean view (Tip-Adapter: mean of {TIP_VIEWS} augmented views)")
    diffs += _selection_differences(ctx)
    if finetune:
        diffs += _finetune_differences(ctx)
    return diffs


def _selection_differences(ctx: FitContext) -> list[str]:
    """Where the (alpha, beta) search departs from Tip-Adapter's: its val set and grid."""
    cfg, data = resolved(ctx), ctx.data
    on_test = data.dataset == "imagenet"  # Tip-Adapter searched ImageNet's alpha, beta on test
    if not ctx.has_val:
        return ["alpha, beta fixed without val (Tip-Adapter: ImageNet's searched on test)"]
    official_grid_used = ctx.official and data.dataset in OFFICIAL
    diffs = []
    if not official_grid_used:
        diffs.append(
            f"alpha, beta searched on a {len(cfg.betas)} x {len(cfg.alphas)} grid "
            + ("(no Tip-Adapter config for this dataset; its configs: " if ctx.official else "(Tip-Adapter: ")
            + "per-dataset grids of 200 betas x 20 alphas)"
        )
    if on_test:
        diffs.append("alpha, beta chosen on a val held out from train (Tip-Adapter: ImageNet's searched on test)")
    elif not (ctx.official and ctx.has_full_val):
        diffs.append("alpha, beta chosen on the few-shot val (Tip-Adapter: the full val split)")
    return diffs


def _finetune_differences(ctx: FitContext) -> list[str]:
    cfg, data = resolved(ctx), ctx.data
    entry = OFFICIAL.get(data.dataset)
    kept = (
        "the first best val epoch's keys" if ctx.epoch_rule == "best-val" else "the last epoch's keys"
    ) + " (Tip-Adapter-F: the best epoch on test)"
    diffs = [
        "keys trained on cached views, one per image per epoch (Tip-Adapter-F: fresh random crops)"
        if ctx.views == "aug"
        else "keys trained on the clean view (Tip-Adapter-F: random crops)",
        kept,
        "fp32 keys (Tip-Adapter-F: fp16 on GPU)",
    ]
    if entry is None:
        diffs.append(
            f"no Tip-Adapter config for {data.dataset}: trained with alpha={cfg.init[0]:g}, beta={cfg.init[1]:g}"
        )
        return diffs
    if tuple(cfg.init) != (entry["init_alpha"], entry["init_beta"]):
        diffs.append(
            f"trained with alpha={cfg.init[0]:g}, beta={cfg.init[1]:g} "
            f"(Tip-Adapter-F's config: alpha={entry['init_alpha']:g}, beta={entry['init_beta']:g})"
        )
    if cfg.epochs != entry["train_epoch"]:
        diffs.append(f"epochs {cfg.epochs} (Tip-Adapter-F's config: {entry['train_epoch']})")
    if cfg.lr != entry["lr"] or cfg.batch_size != 256:
        diffs.append(f"lr {cfg.lr:g}, batch {cfg.batch_size} (Tip-Adapter-F: {entry['lr']:g}, 256)")
    return diffs


TIP_NEW_CLASSES = NewClassRule(
    "zero-shot CLIP with the new classes' text weights: the cache holds base-class images only and its "
    "values are one-hot over the base classes, so the cache term adds nothing to a new class's logit",
    zero_shot_on_new,
)


register_method(
    Method(
        name="tip-adapter",
        summary="training-free cache of few-shot features added to zero-shot CLIP "
        "(Zhang et al. 2022, arXiv 2207.09519)",
        config=TipAdapterConfig,
        payload=payload,
        train=lambda ctx, plans: _train(ctx, plans, finetune=False),
        differences=differences,
        from_artifact=from_artifact,
        new_classes=TIP_NEW_CLASSES,
        paper_classifier="ensemble",
    )
)

register_method(
    Method(
        name="tip-adapter-f",
        summary="Tip-Adapter with its cache keys fine-tuned, 20 epochs (Zhang et al. 2022, arXiv 2207.09519)",
        config=TipAdapterFConfig,
        payload=lambda ctx: payload(ctx, finetune=True),
        train=lambda ctx, plans: _train(ctx, plans, finetune=True),
        differences=lambda ctx: differences(ctx, finetune=True),
        from_artifact=from_artifact,
        new_classes=TIP_NEW_CLASSES,
        epoch_note="",
        paper_classifier="ensemble",
    )
)
