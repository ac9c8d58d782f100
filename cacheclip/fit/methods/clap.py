"""ZS-LP and CLAP (Silva-Rodriguez et al. 2024, CVPR, arXiv 2312.12730): a linear probe with cosine
logits, started from the text classifier and trained by SGD on the cached augmented views. CLAP adds
a class-adaptive pull back to that start. ``zs-lp`` and ``clap`` share this module and its settings.

    t        (K, D)  mean over the store's T templates of the RAW text embeddings (never normalised)
    logits   = s * normalize(f) @ normalize(W)^T      (M, K); W (K, D) starts at t; s the store's logit scale
    ZS-LP    loss = CE
    CLAP     loss = CE + (1/K) sum_k lambda_k ||w_k - t_k||^2        (raw vectors)
    lambda_k = mean, over every cached view of the class-k support images, of softmax(s * f^ @ t^^T)_k

SGD (momentum 0.9, no weight decay, PyTorch semantics), one warm-up epoch at lr 1e-5, then a
cosine from lr 0.1 (Dassl's schedule, ``coop_lr_schedule``); batches of 256, floor(N / 256) steps
per epoch (1 step of all N when N < 256); 300 epochs; the last epoch is kept (CLAP selects
nothing). lambda is computed once and kept fixed: the shipped CLAP command never runs the
paper's augmented-Lagrangian update. Randomness: ``torch.Generator().manual_seed(seed)`` only.

Also used by ``lp_plus_plus``: ``sgd_step_``, ``aug_scale``, ``store_templates``, ``view_differences``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from cacheclip.datasets.templates import GENERIC_TEMPLATE, IMAGENET7
from cacheclip.errors import ConfigError
from cacheclip.fit.methods.base import (
    FitContext,
    FitData,
    Method,
    RunPlan,
    Trained,
    register_method,
    view_differences,
)
from cacheclip.fit.metrics import classification_metrics
from cacheclip.fit.train import BestEpoch, batch_plan, last_epoch_record, top1_percent
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


# ---------------------------------------------------------------- helpers shared with lp_plus_plus


def coop_lr_schedule(epochs: int, lr: float, warmup_epochs: int, warmup_lr: float) -> list[float]:
    """The lr of each epoch (len == epochs): Dassl's constant warm-up around CosineAnnealingLR(T=epochs).

    e < W: warmup_lr;  e >= W: lr * (1 + cos(pi * (e - W) / T)) / 2   (W = warmup_epochs, T = epochs).
    The cosine restarts its count after the warm-up but keeps T, so it never reaches 0
    (the derivation of ``cacheclip.fit.train.lr_per_epoch``).
    """
    return [
        warmup_lr if e < warmup_epochs else lr * (1.0 + math.cos(math.pi * (e - warmup_epochs) / epochs)) / 2.0
        for e in range(epochs)
    ]


def sgd_step_(param: torch.Tensor, grad: torch.Tensor, buf: torch.Tensor, lr: float, momentum: float, wd: float = 0.0):
    """torch.optim.SGD's update in place (no dampening, no Nesterov); ``buf`` starts at zero."""
    if wd:
        grad = grad + wd * param
    buf.mul_(momentum).add_(grad)
    param.add_(buf, alpha=-lr)


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


def penalty_grad(weight: torch.Tensor, base: torch.Tensor, lambdas: torch.Tensor) -> torch.Tensor:
    """d/dW of (1/K) sum_k lambda_k ||w_k - t_k||^2 = (2/K) lambda_k (w_k - t_k), (K, D).
    Written out: autograd through the (K, D) temporaries cost ~20% of a K = 397 step."""
    return (weight - base).mul_(lambdas[:, None] * (2.0 / weight.shape[0]))


def epoch_batches(n: int, v: int, batch_size: int, gen: torch.Generator, sampling: str) -> list[tuple]:
    """One epoch's steps as (image indices (B,), view indices (B,)); batch_plan(N, batch) steps.

    image: one view per image (``randint(V, (N,))``, skipped when V = 1), then batches of
           ``randperm(N)``: every image at most once per epoch.
    pool:  batches of min(batch, N V) rows of ``randperm(N V)`` (flat i V + j = view j of image i),
           as CLAP's loader over its pool of views."""
    steps = batch_plan(n, batch_size)[1]
    if sampling == "pool":
        perm, size = torch.randperm(n * v, generator=gen), min(batch_size, n * v)
        return [(b // v, b % v) for b in (perm[i * size : (i + 1) * size] for i in range(steps))]
    view = torch.randint(v, (n,), generator=gen) if v > 1 else torch.zeros(n, dtype=torch.long)
    perm, size = torch.randperm(n, generator=gen), batch_plan(n, batch_size)[0]
    return [(b, view[b]) for b in (perm[i * size : (i + 1) * size] for i in range(steps))]


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
    """W (K, D) after cfg.epochs epochs from W = base; lambdas None: ZS-LP, (K,): CLAP's penalty.
    ``on_epoch(epoch, W)`` sees W after every epoch (1-based), e.g. to keep the best val epoch.

    views (N, V, D) raw, labels (N,). Generator draws stay on the CPU, so a seed gives the same
    batches on any device. Returns the last epoch's W on the CPU."""
    x, y = views.to(device, torch.float32), labels.to(device, torch.long)
    t = base.to(device, torch.float32)
    lam = None if lambdas is None else lambdas.to(device, torch.float32)
    w, buf = t.clone().requires_grad_(True), torch.zeros_like(t)
    n, v, _ = x.shape
    for epoch, lr in enumerate(coop_lr_schedule(cfg.epochs, cfg.lr, cfg.warmup_epochs, cfg.warmup_lr)):
        for img, view in epoch_batches(n, v, cfg.batch_size, gen, cfg.sampling):
            img, view = img.to(device), view.to(device)
            loss = F.cross_entropy(cosine_logits(x[img, view], w, scale), y[img])  # (B, K) logits
            (grad,) = torch.autograd.grad(loss, [w])
            with torch.no_grad():
                if lam is not None:
                    grad += penalty_grad(w, t, lam)
                sgd_step_(w, grad, buf, lr, cfg.momentum, cfg.weight_decay)
        if on_epoch is not None:
            on_epoch(epoch + 1, w.detach())
        if progress is not None:
            progress(epoch + 1, cfg.epochs)
    return w.detach().cpu()


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
    cfg, data = ctx.config, ctx.data
    base = base_text(data.per_template)
    out = []
    for done, plan in enumerate(plans):
        start = time.perf_counter()
        _, views, labels = ctx.train_views(plan.split)  # views (N, V, D) raw
        views, labels = views.to(ctx.device, torch.float32), labels.to(ctx.device)
        lambdas = clap_lambdas(views, labels, base.to(ctx.device), data.logit_scale).cpu() if clap else None

        def tick(epoch: int, total: int, offset: int = done * cfg.epochs) -> None:
            ctx.tick(offset + epoch, len(plans) * total)

        gen = torch.Generator().manual_seed(plan.seed)
        val = ctx.val_features(plan.split)  # only reported, unless --epoch best-val chooses the epoch on it
        keeper = BestEpoch(1) if ctx.epoch_rule == "best-val" else None
        on_epoch = None if keeper is None else _scorer(keeper, val, data.logit_scale)
        weight = train_probe(
            views,
            labels,
            base,
            lambdas,
            cfg,
            scale=data.logit_scale,
            gen=gen,
            device=ctx.device,
            progress=tick,
            on_epoch=on_epoch,
        )
        if keeper is not None:
            weight, kept = keeper.state["weight"][0].cpu(), keeper.record()
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
        predict = _predictor(weight, data.logit_scale)
        val_metrics = classification_metrics(predict(val[0]), val[1], data.num_classes) if val else None
        config = {**payload(ctx, clap), "chosen": chosen, "classifier": "learned cosine classifier (K, D), from t"}
        tensors = {"weight": weight, "base": base.clone()}
        if lambdas is not None:
            tensors["lambdas"] = lambdas
        meta = {
            "method_config": chosen,
            "classnames": data.classnames,
            "logit_scale": data.logit_scale,
            "logits": "logit_scale * normalize(f) @ normalize(weight).T",
        }
        out.append(Trained(plan, predict, selection, val_metrics, config, (tensors, meta), time.perf_counter() - start))
    return out


def _predictor(weight: torch.Tensor, scale: float):
    return lambda feats: cosine_logits(feats, weight, scale).cpu()


def _scorer(keeper: BestEpoch, val: tuple[torch.Tensor, torch.Tensor], scale: float):
    """on_epoch for ``train_probe``: W's val top-1, kept by ``keeper`` when best so far."""

    def on_epoch(epoch: int, weight: torch.Tensor) -> None:
        preds = cosine_logits(val[0].to(weight.device), weight, scale)
        keeper.observe(epoch, torch.tensor([top1_percent(preds, val[1])]), {"weight": weight[None]})

    return on_epoch


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
        judges_templates=True,
        epoch_note="",
        paper_classifier="single+ensemble",
    )
)
