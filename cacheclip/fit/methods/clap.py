"""ZS-LP and CLAP (Silva-Rodriguez et al. 2024, CVPR, arXiv 2312.12730): a linear probe with cosine
logits, started from the text classifier and trained by SGD on the cached augmented views. CLAP adds
a class-adaptive pull back to that start. ``zs-lp`` and ``clap`` share this module and its settings.

    t        (K, D)  mean over the store's T templates of the RAW text embeddings (never normalised)
    logits   = s * normalize(f) @ normalize(W)^T      (M, K); W (K, D) starts at t; s the store's logit scale
    ZS-LP    loss = CE
    CLAP     loss = CE + (1/K) sum_k lambda_k ||w_k - t_k||^2        (raw vectors)
    lambda_k = mean, over every cached view of the class-k support images, of softmax(s * f^ @ t^^T)_k

SGD (momentum 0.9, no weight decay, torch.optim's), one warm-up epoch at lr 1e-5, then a
cosine from lr 0.1 (Dassl's schedule, ``coop_lr_schedule``); batches of 256, floor(N / 256) steps
per epoch (1 step of all N when N < 256); 300 epochs; the last epoch is kept (CLAP selects
nothing; ``--epoch best-val``: the first best val epoch). lambda is computed once and kept fixed:
the shipped CLAP command never runs the paper's augmented-Lagrangian update.

Trained on :mod:`cacheclip.fit.trainer`: every seed of a shot count in one stack (R runs, W (R, K, D)),
the loss written once for R runs (CLAP's penalty a term of it: autograd gives its gradient), SGD by
torch.optim, each run's batches drawn from its own ``torch.Generator().manual_seed(seed)``, epoch
by epoch (image: ``randint(V, (N,))`` unless V = 1, then ``randperm(N)``; pool: ``randperm(N V)``):
the draws of the one-run loop this replaced, so a run's numbers are the same (float tolerance)
whatever runs share its stack.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from cacheclip.datasets.templates import GENERIC_TEMPLATE, IMAGENET7
from cacheclip.errors import ConfigError
from cacheclip.fit.methods.base import (
    FitContext,
    FitData,
    Method,
    NewClassRule,
    RunPlan,
    Trained,
    register_method,
    view_differences,
    zero_shot_on_new,
)
from cacheclip.fit.metrics import classification_metrics
from cacheclip.fit.train import batch_plan, last_epoch_record
from cacheclip.fit.trainer import (
    Keeper,
    Recipe,
    Samples,
    Stack,
    run_cross_entropy,
    run_stacks,
    stack_blocks,
    stack_chunks,
    train_stack,
)
from cacheclip.settings import setting

CLAP_VIEWS = 20  # augmented views per image encoded by CLAP's code
CLAP_SCALE = (0.08, 1.0)  # Dassl's RandomResizedCrop scale, CLAP's augmentation
CLAP_IMAGENET_TEMPLATES = (*IMAGENET7, GENERIC_TEMPLATE)  # IMAGENET_TEMPLATES_SELECT + "a photo of a {}."
SAMPLINGS = ("image", "pool")
CHUNK = 8192  # rows scored at once for lambda (bounds the (rows, K) softmax)


@dataclass(frozen=True)
class ClapConfig:
    """ZS-LP's and CLAP's settings; the defaults are the official config (SGD_lr1e-1_B256_ep300)."""

    epochs: int = setting(300, "SGD epochs", flag="--clap-epochs")
    lr: float = setting(0.1, "peak learning rate, after the warm-up (cosine to the end)", flag="--clap-lr")
    batch_size: int = setting(256, "rows per step; steps per epoch = floor(N / batch), or 1", flag="--clap-batch-size")
    momentum: float = setting(0.9, "SGD momentum", flag="--clap-momentum")
    weight_decay: float = setting(0.0, "SGD weight decay", flag="--clap-weight-decay")
    warmup_epochs: int = setting(1, "constant-lr warm-up epochs", flag="--clap-warmup-epochs")
    warmup_lr: float = setting(1e-5, "warm-up learning rate", flag="--clap-warmup-lr")
    sampling: str = setting(
        "image",
        "image: one cached view per image per epoch; pool: batches of a shuffle of all N x V views (CLAP's code)",
        flag="--clap-sampling",
    )

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.warmup_epochs < 0:
            raise ConfigError("--clap-epochs and --clap-batch-size must be >= 1", "e.g. --clap-epochs 300")
        if self.lr <= 0 or self.warmup_lr < 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ConfigError(
                "--clap-lr must be > 0, --clap-warmup-lr and --clap-weight-decay >= 0, --clap-momentum in [0, 1)",
                "e.g. --clap-lr 0.1 --clap-momentum 0.9",
            )
        if self.sampling not in SAMPLINGS:
            raise ConfigError(f"--clap-sampling {self.sampling} is not supported", f"use {' or '.join(SAMPLINGS)}")


# ---------------------------------------------------------------- the schedule


def coop_lr(epoch: int, lr: float, epochs: int, warmup_epochs: int, warmup_lr: float) -> float:
    """Epoch ``epoch``'s (0-based) lr: Dassl's constant warm-up around CosineAnnealingLR(T=epochs).

    e < W: warmup_lr;  e >= W: lr * (1 + cos(pi * (e - W) / T)) / 2   (W = warmup_epochs, T = epochs).
    The cosine restarts its count after the warm-up but keeps T, so it never reaches 0
    (the derivation of ``cacheclip.fit.train.lr_per_epoch``).
    """
    if epoch < warmup_epochs:
        return warmup_lr
    return lr * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / epochs)) / 2.0


def coop_lr_schedule(epochs: int, lr: float, warmup_epochs: int, warmup_lr: float) -> list[float]:
    """The lr of each epoch (len == epochs), :func:`coop_lr` epoch by epoch."""
    return [coop_lr(e, lr, epochs, warmup_epochs, warmup_lr) for e in range(epochs)]


# ---------------------------------------------------------------- the math


def base_text(per_template: torch.Tensor) -> torch.Tensor:
    """t (K, D) = mean over T of the raw (T, K, D) embeddings. Raw on purpose: the penalty's
    strength depends on this scale, so a normalised classifier would change CLAP."""
    return per_template.float().mean(0)


def cosine_logits(feats: torch.Tensor, weight: torch.Tensor, scale: float) -> torch.Tensor:
    """s * normalize(f) @ normalize(W)^T: feats (..., D) raw, weight (K, D) raw -> (..., K)."""
    w = weight.to(feats.device, torch.float32)
    return scale * F.normalize(feats.float(), dim=-1) @ F.normalize(w, dim=-1).t()


def clap_lambdas(views: torch.Tensor, labels: torch.Tensor, base: torch.Tensor, scale: float) -> torch.Tensor:
    """lambda (K,): class k's mean zero-shot probability of class k over ALL V views of its images.

    views (N, V, D) raw, labels (N,), base t (K, D); the zero-shot model is the probe at its
    start (W = t), scaled by s. A class without support images gets 0 (nothing pulls it back)."""
    n, v, d = views.shape
    k = base.shape[0]
    flat, y = views.reshape(n * v, d), labels.repeat_interleave(v)
    sums = torch.zeros(k, dtype=torch.float64, device=views.device)
    for start in range(0, n * v, CHUNK):
        rows = slice(start, start + CHUNK)
        p = torch.softmax(cosine_logits(flat[rows], base, scale), dim=-1)
        sums.index_add_(0, y[rows], p.gather(1, y[rows, None]).squeeze(1).double())
    return (sums / torch.bincount(y, minlength=k).clamp(min=1)).float()


def penalty(weight: torch.Tensor, base: torch.Tensor, lambdas: torch.Tensor) -> torch.Tensor:
    """CLAP's pull (1/K) sum_k lambda_k ||w_k - t_k||^2 per run (R,): weight (R, K, D), base t (K, D),
    lambdas (R, K). A loss term: autograd gives its gradient (2/K) lambda_k (w_k - t_k)."""
    return (lambdas * (weight - base).pow(2).sum(-1)).sum(-1) / weight.shape[1]


def probe_loss(
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    scale: float,
    base: torch.Tensor | None = None,
    lambdas: torch.Tensor | None = None,
) -> torch.Tensor:
    """Each run's loss (R,): mean CE of s normalize(x) normalize(W)^T, plus CLAP's :func:`penalty`
    when ``lambdas`` (R, K) is given. x (R, B, D) raw, y (R, B), W (R, K, D)."""
    w = params["weight"]
    # W^ x^T, not x W^^T: W's gradient then comes out of the product in W's own (K, D) layout, not
    # transposed (1.3x slower steps at K = 397: every (K, D) op after it strided, and a copy);
    # normalize(x) as a scale on the (R, K, B) logits, not another (R, B, D) copy of the batch
    z = torch.bmm(F.normalize(w, dim=-1), x.transpose(1, 2))  # (R, K, B)
    z = z.transpose(1, 2) * (scale / x.norm(dim=-1, keepdim=True).clamp(min=1e-12))  # F.normalize's eps
    loss = run_cross_entropy(z, y)
    return loss if lambdas is None else loss + penalty(w, base, lambdas)


def step_rows(n: int, v: int, batch_size: int, sampling: str) -> tuple[int, int]:
    """(rows per step, steps per epoch): batch_plan(N, batch)'s steps; pool steps take
    min(batch, N V) views each, image steps batch_plan's images."""
    size, steps = batch_plan(n, batch_size)
    return (min(batch_size, n * v) if sampling == "pool" else size), steps


def epoch_batches(n: int, v: int, batch_size: int, gen: torch.Generator, sampling: str) -> list[tuple]:
    """One epoch's steps as (image indices (B,), view indices (B,)); batch_plan(N, batch) steps.

    image: one view per image (``randint(V, (N,))``, skipped when V = 1), then batches of
           ``randperm(N)``: every image at most once per epoch.
    pool:  batches of min(batch, N V) rows of ``randperm(N V)`` (flat i V + j = view j of image i),
           as CLAP's loader over its pool of views."""
    size, steps = step_rows(n, v, batch_size, sampling)
    if sampling == "pool":
        perm = torch.randperm(n * v, generator=gen)
        return [(b // v, b % v) for b in (perm[i * size : (i + 1) * size] for i in range(steps))]
    view = torch.randint(v, (n,), generator=gen) if v > 1 else torch.zeros(n, dtype=torch.long)
    perm = torch.randperm(n, generator=gen)
    return [(b, view[b]) for b in (perm[i * size : (i + 1) * size] for i in range(steps))]


def epoch_rows(n: int, v: int, batch_size: int, gen: torch.Generator, sampling: str) -> Iterator[torch.Tensor]:
    """Endless epochs, each (steps, B) rows i V + j into the run's (N V, D) views: the draws of
    :func:`epoch_batches`, epoch after epoch."""
    while True:
        yield torch.stack([i * v + j for i, j in epoch_batches(n, v, batch_size, gen, sampling)])


# ---------------------------------------------------------------- training, stacked


@dataclass(frozen=True)
class ProbeRun:
    """One probe to train: its views, CLAP's lambdas (None: ZS-LP), its own generator, and a val
    scored after every epoch (the first best epoch kept) or None (the last epoch kept)."""

    views: torch.Tensor  # (N, V, D) raw
    labels: torch.Tensor  # (N,)
    lambdas: torch.Tensor | None  # (K,)
    gen: torch.Generator
    val: tuple[torch.Tensor, torch.Tensor] | None = None  # (M, D) raw, (M,)


@dataclass(frozen=True)
class ProbeFit:
    """A trained probe: W (K, D) on the CPU; with val, the epoch kept (1-based) and the record."""

    weight: torch.Tensor
    epoch: int
    record: dict | None  # {"rule": "best-val", "chosen", "val_top1"}; None without val


def train_probes(
    runs: Sequence[ProbeRun],
    base: torch.Tensor,
    cfg: ClapConfig,
    *,
    scale: float,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    on_epoch: Callable[[int, int, torch.Tensor], None] | None = None,
) -> list[ProbeFit]:
    """Train every run from W = base, stacked (:mod:`cacheclip.fit.trainer`): runs with the same
    rows per step and steps per epoch (and val or none) together, in chunks that keep their state in the cache.
    Each run draws its batches from its own generator, so its result depends only on its own
    inputs. ``on_epoch(r, epoch, W)`` sees run r's W (K, D) after every epoch (1-based);
    ``progress(done, total)`` counts run-epochs. Generator draws stay on the CPU: a seed gives
    the same batches on any device."""
    k, d = base.shape
    groups: dict[tuple[int, int, bool], list[int]] = {}
    for r, run in enumerate(runs):
        key = (*step_rows(*run.views.shape[:2], cfg.batch_size, cfg.sampling), run.val is None)
        groups.setdefault(key, []).append(r)
    stacks = [  # state: W, its gradient, SGD's momentum; a step: the forward and W's gradient
        [members[i] for i in chunk]
        for (rows, _, _), members in groups.items()
        for chunk in stack_chunks(len(members), 3 * k * d * 4, device, 4.0 * rows * k * d)
    ]

    def train(rs: list[int], tick: Callable[[int], None] | None) -> list[ProbeFit]:
        hook = None if on_epoch is None else partial(_relay_epoch, on_epoch, rs)
        return _train_stack([runs[r] for r in rs], base, cfg, scale, device, tick, hook)

    flops = 4.0 * max(rows for rows, _, _ in groups) * k * d
    return run_stacks(stacks, train, len(runs), cfg.epochs, progress, device, flops)


def _relay_epoch(on_epoch, rs: list[int], j: int, epoch: int, w: torch.Tensor) -> None:
    on_epoch(rs[j], epoch, w)


def probe_stack(runs: Sequence[ProbeRun], base: torch.Tensor, cfg: ClapConfig, scale: float, device: str = "cpu"):
    """(the :class:`~cacheclip.fit.trainer.Stack` of runs with equal rows per step and steps per
    epoch, steps per epoch): per run its table, its endless epochs of rows from its own generator
    and CLAP's lambdas (zeros for a ZS-LP run beside CLAP runs); SGD by torch.optim."""
    r, (k, d) = len(runs), base.shape
    size, steps = step_rows(*runs[0].views.shape[:2], cfg.batch_size, cfg.sampling)
    streams = [epoch_rows(*run.views.shape[:2], cfg.batch_size, run.gen, cfg.sampling) for run in runs]
    t = base.to(device, torch.float32)
    lambdas = None
    if any(run.lambdas is not None for run in runs):
        lambdas = torch.stack([torch.zeros(k) if run.lambdas is None else run.lambdas.float().cpu() for run in runs])
    stack = Stack(
        params={"weight": t.expand(r, k, d).clone()},
        loss=partial(probe_loss, scale=scale, base=t, lambdas=None if lambdas is None else lambdas.to(device)),
        recipe=Recipe("sgd", momentum=cfg.momentum),
        lrs=[cfg.lr] * r,
        weight_decays=[cfg.weight_decay] * r,
        schedule=lambda i, peak: coop_lr(i // steps, peak, cfg.epochs, cfg.warmup_epochs, cfg.warmup_lr),
        samples=Samples.of_views(
            [run.views for run in runs], [run.labels for run in runs], device, dtype=torch.float32
        ),
        blocks=stack_blocks(streams, device),
        step_flops=4.0 * r * size * k * d,
    )
    return stack, steps


def _train_stack(runs: Sequence[ProbeRun], base, cfg: ClapConfig, scale, device, progress, on_epoch) -> list[ProbeFit]:
    """One stack trained, val scored after each epoch in one batched forward (the first best kept)."""
    r, d = len(runs), base.shape[1]
    stack, steps = probe_stack(runs, base, cfg, scale, device)
    has_val = runs[0].val is not None
    keeper = Keeper(r, ties="first") if has_val else None
    val = stacked_val([run.val for run in runs], d, device) if has_val else None

    def after_step(i: int, params: dict[str, torch.Tensor]) -> None:
        if (i + 1) % steps:
            return
        epoch, w = (i + 1) // steps, params["weight"]
        if on_epoch is not None:
            for j in range(r):
                on_epoch(j, epoch, w[j])
        if keeper is not None:
            keeper.observe(epoch, val_top1(val, w, scale), params)
        if progress is not None:
            progress(epoch)

    last = train_stack(stack, cfg.epochs * steps, after_step)["weight"].cpu()
    if keeper is None:
        return [ProbeFit(last[j], cfg.epochs, None) for j in range(r)]
    kept = keeper.state["weight"].cpu()
    return [
        ProbeFit(kept[j], int(keeper.at[j]), {"rule": "best-val", "chosen": int(keeper.at[j]), "val_top1": curve})
        for j, curve in enumerate(keeper.curves)
    ]


def stacked_val(vals, d: int, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(normalize(x) (R, M, D), y (R, M), sizes (R,)): each run's val, zero-padded to the largest
    with label -1 (never a prediction)."""
    m = max(len(y) for _, y in vals)
    x = torch.zeros(len(vals), m, d, device=device)
    y = torch.full((len(vals), m), -1, dtype=torch.long, device=device)
    for j, (feats, labels) in enumerate(vals):
        x[j, : len(labels)] = F.normalize(feats.to(device, torch.float32), dim=-1)
        y[j, : len(labels)] = labels.to(device, torch.long)
    return x, y, torch.tensor([len(labels) for _, labels in vals], dtype=torch.float64)


def val_top1(val: tuple[torch.Tensor, torch.Tensor, torch.Tensor], weight: torch.Tensor, scale: float) -> torch.Tensor:
    """Each run's val top-1 % (R,) of s normalize(f) normalize(W)^T, W (R, K, D): ``top1_percent``'s number."""
    x, y, sizes = val
    z = torch.bmm(scale * x, F.normalize(weight, dim=-1).transpose(1, 2))
    correct = z.argmax(-1).eq(y).sum(1).cpu().double()
    return 100.0 * correct / sizes.clamp(min=1)


def train_probe(
    views: torch.Tensor,
    labels: torch.Tensor,
    base: torch.Tensor,
    lambdas: torch.Tensor | None,
    cfg: ClapConfig,
    *,
    scale: float,
    gen: torch.Generator,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    on_epoch: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """One probe alone (a stack of one): W (K, D) after cfg.epochs epochs from W = base, on the CPU;
    lambdas None: ZS-LP, (K,): CLAP's penalty. ``on_epoch(epoch, W)`` sees W after every epoch
    (1-based). views (N, V, D) raw, labels (N,). See :func:`train_probes`."""
    hook = None if on_epoch is None else (lambda _, epoch, w: on_epoch(epoch, w))
    run = ProbeRun(views, labels, lambdas, gen)
    return train_probes([run], base, cfg, scale=scale, device=device, progress=progress, on_epoch=hook)[0].weight


# ---------------------------------------------------------------- the methods


def payload(ctx: FitContext, clap: bool) -> dict[str, Any]:
    cfg, data = ctx.config, ctx.data
    out = {
        "epochs": cfg.epochs,
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "momentum": cfg.momentum,
        "weight_decay": cfg.weight_decay,
        "warmup": {"epochs": cfg.warmup_epochs, "lr": cfg.warmup_lr},
        "schedule": "constant warm-up, then cosine over all epochs (Dassl), stepped per epoch",
        "sampling": cfg.sampling,
        "views_used": ctx.views,
        "base": f"raw mean of {data.per_template.shape[0]} per-template text embedding(s)",
        "model": "first best val epoch" if ctx.epoch_rule == "best-val" else "last epoch",
    }
    if clap:
        views = f"{data.aug_views} cached views" if ctx.views == "aug" else "the clean view"
        out["lambda"] = f"zero-shot probability of the true class, mean over {views} of each class's images"
    return out


def _train(ctx: FitContext, plans: list[RunPlan], clap: bool) -> list[Trained]:
    """Every seed of this shot count in one call: the probes train stacked (:func:`train_probes`)."""
    cfg, data = ctx.config, ctx.data
    start, base, best_val = time.perf_counter(), base_text(data.per_template), ctx.epoch_rule == "best-val"
    runs, vals = [], []
    for plan in plans:
        _, views, labels = ctx.train_views(plan.split)  # views (N, V, D) raw
        views, labels = views.to(ctx.device, torch.float32), labels.to(ctx.device)
        lambdas = clap_lambdas(views, labels, base.to(ctx.device), data.logit_scale).cpu() if clap else None
        val = ctx.val_features(plan.split)  # only reported, unless --epoch best-val chooses the epoch on it
        gen = torch.Generator().manual_seed(plan.seed)
        runs.append(ProbeRun(views, labels, lambdas, gen, val if best_val else None))
        vals.append(val)
    fits = train_probes(runs, base, cfg, scale=data.logit_scale, device=ctx.device, progress=ctx.tick)
    seconds = (time.perf_counter() - start) / max(1, len(plans))
    return [
        _trained(ctx, plan, fit, run.lambdas, base, val, clap, seconds)
        for plan, fit, run, val in zip(plans, fits, runs, vals, strict=True)
    ]


def _trained(ctx: FitContext, plan: RunPlan, fit: ProbeFit, lambdas, base, val, clap: bool, seconds: float) -> Trained:
    cfg, data = ctx.config, ctx.data
    if fit.record is not None:
        kept = fit.record
        selection = {"on": ctx.selection_source, "candidates": {"epochs": cfg.epochs}, "chosen": {}}
    else:
        kept = last_epoch_record(cfg.epochs, ctx.epoch_fallback)
        selection = {
            "on": "none",
            "candidates": [{"epoch": cfg.epochs}],
            "chosen": {},
            "reason": "the paper selects nothing: the last epoch is kept"
            + ("; val is only reported" if val else "; no val split"),
        }
    chosen = {"epoch": kept["chosen"]}
    selection["chosen"], selection["epoch"] = chosen, kept
    predict = _predictor(fit.weight, data.logit_scale)
    val_metrics = classification_metrics(predict(val[0]), val[1], data.num_classes) if val else None
    config = {**payload(ctx, clap), "chosen": chosen, "classifier": "learned cosine classifier (K, D), from t"}
    tensors = {"weight": fit.weight, "base": base.clone()}
    if lambdas is not None:
        tensors["lambdas"] = lambdas
    meta = {
        "method_config": chosen,
        "classnames": data.classnames,
        "logit_scale": data.logit_scale,
        "logits": "logit_scale * normalize(f) @ normalize(weight).T",
    }
    return Trained(plan, predict, selection, val_metrics, config, (tensors, meta), seconds)


def _predictor(weight: torch.Tensor, scale: float):
    return lambda feats: cosine_logits(feats, weight, scale).cpu()


def from_artifact(tensors: dict, meta: dict, class_weights: torch.Tensor, logit_scale: float, device: str):
    weight = tensors["weight"].to(device)
    return lambda feats: cosine_logits(feats.to(device), weight, logit_scale).cpu()


def differences(ctx: FitContext, clap: bool) -> list[str]:
    cfg, data = ctx.config, ctx.data
    v, n = data.aug_views, data.num_classes * ctx.shots
    diffs = view_differences(ctx, "CLAP", f"{CLAP_VIEWS} augmented views per image", CLAP_VIEWS)
    if ctx.views == "aug":
        if cfg.sampling == "image":
            diffs.append(
                f"trained on {v} cached views per image, one view per image per epoch "
                f"(CLAP: batches cut from a fresh shuffle of all {CLAP_VIEWS} views of every image)"
            )
        elif v != CLAP_VIEWS:
            diffs.append(f"batches drawn from {v} cached views per image (CLAP: {CLAP_VIEWS})")
        if clap and v != CLAP_VIEWS:
            diffs.append(f"lambda_k from the zero-shot accuracy on {v} cached views per image (CLAP: {CLAP_VIEWS})")
        scale = data.aug_scale
        if scale is not None and scale != CLAP_SCALE:
            diffs.append(f"views cropped with scale {scale} (CLAP: Dassl's {CLAP_SCALE})")
    elif clap:
        diffs.append(f"lambda_k from the zero-shot accuracy on the clean view (CLAP: {CLAP_VIEWS} augmented views)")
    if n < cfg.batch_size and (cfg.sampling == "image" or ctx.views != "aug"):
        diffs.append(
            f"each epoch is one step on all {n} images, one view each "
            f"(CLAP: min({cfg.batch_size}, {CLAP_VIEWS}·N) = {min(cfg.batch_size, CLAP_VIEWS * n)} views from its pool)"
        )
    diffs += _template_differences(data) + _hyper_differences(cfg)
    if ctx.epoch_rule == "best-val":
        diffs.append("the first best val epoch kept (CLAP: the last epoch, no val)")
    return diffs


def _template_differences(data: FitData) -> list[str]:
    t, spec = data.per_template.shape[0], data.attrs.get("templates_spec", "default")
    if data.dataset == "imagenet":
        if sorted(data.templates) != sorted(CLAP_IMAGENET_TEMPLATES):  # a mean: the order is irrelevant
            return [
                f"text base from {t} template(s) ({spec}) "
                f"(CLAP on ImageNet: raw mean of 7 selected templates + '{GENERIC_TEMPLATE}')"
            ]
    elif spec != "default" or t != 1:
        return [f"text base from {t} template(s) ({spec}) (CLAP: the dataset's single CoOp template)"]
    return []


def _hyper_differences(cfg: ClapConfig) -> list[str]:
    official = ClapConfig()
    diffs = [
        f"{name} {getattr(cfg, key):g} (CLAP: {getattr(official, key):g})"
        for key, name in (("epochs", "epochs"), ("lr", "lr"), ("batch_size", "batch"), ("momentum", "momentum"))
        if getattr(cfg, key) != getattr(official, key)
    ]
    if cfg.weight_decay != official.weight_decay:
        diffs.append(f"weight decay {cfg.weight_decay:g} (CLAP: 0)")
    if (cfg.warmup_epochs, cfg.warmup_lr) != (official.warmup_epochs, official.warmup_lr):
        diffs.append(f"warm-up {cfg.warmup_epochs} epoch(s) at {cfg.warmup_lr:g} (CLAP: 1 at 1e-05)")
    return diffs


NEW_CLASSES = NewClassRule(
    "zero-shot CLIP with the new classes' text weights: the class prototypes are per base class, a new "
    "class keeps its prototype's start, its zero-shot weights",
    zero_shot_on_new,
)


register_method(
    Method(
        name="zs-lp",
        summary="linear probe from the zero-shot classifier, SGD 300 epochs, no selection "
        "(Silva-Rodriguez et al. 2024, arXiv 2312.12730)",
        config=ClapConfig,
        payload=lambda ctx: payload(ctx, clap=False),
        train=lambda ctx, plans: _train(ctx, plans, clap=False),
        differences=lambda ctx: differences(ctx, clap=False),
        from_artifact=from_artifact,
        new_classes=NEW_CLASSES,
        judges_templates=True,
        epoch_note="",
        paper_classifier="single+ensemble",
    )
)

register_method(
    Method(
        name="clap",
        summary="ZS-LP with a class-adaptive L2 pull to the zero-shot classifier "
        "(Silva-Rodriguez et al. 2024, arXiv 2312.12730)",
        config=ClapConfig,
        payload=lambda ctx: payload(ctx, clap=True),
        train=lambda ctx, plans: _train(ctx, plans, clap=True),
        differences=lambda ctx: differences(ctx, clap=True),
        from_artifact=from_artifact,
        new_classes=NEW_CLASSES,
        judges_templates=True,
        epoch_note="",
        paper_classifier="single+ensemble",
    )
)
