"""TaskRes (Yu et al., CVPR 2023, arXiv 2211.10277): a learned residual on CLIP's text classifier.

    base        t (K, D)   raw (unnormalised) mean over the store's T templates of the class text
                           embeddings ``per_template`` (T, K, D): TaskRes's "regular base"
    classifier  t' = t + alpha * x          x (K, D), the residual, starts at zero, so t' = t
    logits      z = s * normalize(f) @ normalize(t')^T        (M, K), s the store's logit scale
    loss        mean cross-entropy; Adam on x, weight decay as L2 added to the gradient

Official values (``geekyutao/TaskRes@5195359``: train_regular.sh, configs/trainers/TaskRes, Dassl
defaults): alpha 0.5 (Flowers102 1.0), lr 2e-3 (ImageNet 2e-4), 100 epochs below 8 shots and 200
from 8, batch 256 (Dassl drops the last partial batch, or takes all N when N < 256), weight decay
5e-4, betas (0.9, 0.999), one warm-up epoch at 1e-5, then cosine per epoch; the last epoch's
residual is kept. The official code has no validation: here several ``--taskres-alpha`` values
are chosen on the few-shot val split; a single value is used as given.

Training: every seed x alpha of a shot count trains in stacks on :mod:`cacheclip.fit.trainer`
(the residuals (R, K, D), one loss for R runs with each run's alpha and its gradient written out,
torch.optim's Adam).
Randomness: every run draws from its own ``torch.Generator().manual_seed(seed)`` (so a grid entry
is the same run as that alpha alone, whatever shares its stack): nothing at init (x = 0), then per
epoch ``randint(V, (N,))`` (one cached view per image; not drawn when V = 1, the clean view) then
``randperm(N)``. float32 (float64 if given float64).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
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
    select_on_val,
    zero_shot_on_new,
)
from cacheclip.fit.train import last_epoch_record
from cacheclip.fit.trainer import (
    Keeper,
    Recipe,
    Samples,
    Stack,
    epoch_rows,
    run_stacks,
    stack_blocks,
    stack_chunks,
    stack_vals,
    train_stack,
    warmup_cosine,
)
from cacheclip.settings import setting

COOP_DATASETS = (
    "imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
    "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101",
)  # fmt: skip
ALPHA = {"oxford_flowers": 1.0}  # RESIDUAL_SCALE in train_regular.sh; every other dataset 0.5
LR = {"imagenet": 2e-4}  # OPTIM.LR in train_regular.sh; every other dataset 2e-3
GENERIC_ALPHA, GENERIC_LR = 0.5, 2e-3  # the scripts' common values, also used for other datasets
EPOCHS_FEW, EPOCHS_MANY, MANY_FROM = 100, 200, 8  # 1/2/4 shots: 100, 8/16 shots: 200 (5-7: never run)
WARMUP_EPOCHS, WARMUP_LR = 1, 1e-5  # Dassl constant warm-up
EPS = 1e-8  # torch.optim.Adam's default (Dassl passes none)
OLD_DASSL_BETAS = (0.9, 0.99)  # older Dassl defaults; TaskRes does not pin its Dassl
IMAGENET_BASE = "the 7 imagenet7 templates + 'a photo of a {}.' (8)"  # the official ImageNet base


@dataclass(frozen=True)
class TaskResConfig:
    """TaskRes's settings; ``official`` (None) means the value of the official scripts."""

    alphas: tuple[float, ...] | None = setting(
        None,
        "residual scale(s) alpha; official: per dataset (0.5, Flowers102 1.0); several are chosen on val",
        flag="--taskres-alpha",
        none_word="official",
    )
    lr: float | None = setting(
        None, "Adam lr; official: 2e-3 (ImageNet 2e-4)", flag="--taskres-lr", none_word="official"
    )
    epochs: int | None = setting(
        None, "epochs; official: 100 below 8 shots, 200 from 8", flag="--taskres-epochs", none_word="official"
    )
    batch_size: int = setting(
        256, "images per step (Dassl: the last partial batch dropped)", flag="--taskres-batch-size"
    )
    weight_decay: float = setting(5e-4, "L2 weight decay added to the gradient (Dassl)", flag="--taskres-wd")
    betas: tuple[float, float] = setting((0.9, 0.999), "Adam betas (older Dassl: 0.9,0.99)", flag="--taskres-betas")

    def validate(self) -> None:
        bad = (self.alphas is not None and min(self.alphas) < 0) or (self.lr is not None and self.lr <= 0)
        bad |= (self.epochs is not None and self.epochs < 1) or self.batch_size < 1 or self.weight_decay < 0
        if bad or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(
                "--taskres-alpha must be >= 0, --taskres-lr > 0, --taskres-epochs and --taskres-batch-size >= 1, "
                "--taskres-wd >= 0 and --taskres-betas in [0, 1)",
                "e.g. --taskres-alpha 0.25,0.5,1 --taskres-lr 2e-3",
            )


@dataclass(frozen=True)
class Official:
    """The official (alpha, lr, epochs) for a dataset and shot count, and where they come from."""

    alpha: float
    lr: float
    epochs: int
    scripted: bool  # False: a dataset outside the scripts, given their common values


def official_values(dataset: str, shots: int) -> Official:
    """train_regular.sh's values; datasets outside its 11 get the scripts' common ones."""
    epochs = EPOCHS_MANY if shots >= MANY_FROM else EPOCHS_FEW
    if dataset in COOP_DATASETS:
        return Official(ALPHA.get(dataset, GENERIC_ALPHA), LR.get(dataset, GENERIC_LR), epochs, True)
    return Official(GENERIC_ALPHA, GENERIC_LR, epochs, False)


# ---------------------------------------------------------------- the math


def base_classifier(data: FitData) -> torch.Tensor:
    """t (K, D): raw mean of ``per_template`` (T, K, D), as TaskRes builds its base. Not the store's
    ensemble (a normalised mean): |t| sets how far alpha x moves t'. T = 1: the raw embedding."""
    return data.per_template.float().mean(dim=0)


def taskres_logits(feats: torch.Tensor, base: torch.Tensor, residual: torch.Tensor, alpha: float, scale: float):
    """s * normalize(f) @ normalize(t + alpha x)^T: (M, D) raw -> (M, K). x = 0 or alpha = 0: zero-shot, bitwise."""
    weights = base + alpha * residual
    return scale * (F.normalize(feats.to(base.dtype), dim=-1) @ F.normalize(weights, dim=-1).t())


def stacked_logits(f_hat: torch.Tensor, base: torch.Tensor, residual: torch.Tensor, alphas: torch.Tensor, scale: float):
    """``taskres_logits`` for R runs at once: f_hat (R, M, D) L2-normalised, base t (K, D), residual
    x (R, K, D), alphas (R,) -> (R, M, K)."""
    weights = F.normalize(base + alphas.view(-1, 1, 1) * residual, dim=-1)
    return scale * torch.bmm(f_hat, weights.transpose(1, 2))


class ResidualCrossEntropy(torch.autograd.Function):
    """Each run's mean cross-entropy (R,) of z = s f^ w^_r^T, w_r = t + alpha_r x_r, over the real
    rows of its batch (label -1: padding), with dL/dx written out: autograd's bookkeeping through
    the normalisation measured 1.2-1.6x slower per stacked step (AMD EPYC, 1 thread, 3 runs, K =
    10 / 100 / 397; ``tests/test_method_taskres.py`` keeps the two equal). With G_r = (softmax(z_r)
    - onehot(y_r)) / B_r on real rows (0 on padding), n = |w|, w^ = w / n::

        dL/dw^  = s G^T f^                                  (R, K, D)
        dL/dw_k = (dL/dw^_k - w^_k <w^_k, dL/dw^_k>) / n_k  (through normalize)
        dL/dx   = alpha dL/dw
    """

    @staticmethod
    def forward(ctx, residual, f_hat, y, base, alphas, scale):
        w = torch.addcmul(base, alphas.view(-1, 1, 1), residual)  # (R, K, D)
        norm = w.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # F.normalize's floor
        w_hat = w / norm
        z = torch.bmm(f_hat, w_hat.transpose(1, 2)).mul_(scale)  # (R, B, K)
        real, rows = y >= 0, y.clamp(min=0).unsqueeze(-1)
        count = real.sum(1).clamp(min=1).to(z.dtype)  # (R,)
        loss = (z.logsumexp(-1) - z.gather(-1, rows).squeeze(-1)).mul_(real).sum(1) / count
        g = torch.softmax(z, dim=-1)
        g.scatter_add_(-1, rows, torch.full(rows.shape, -1.0, dtype=g.dtype, device=g.device))
        g.mul_((real.to(g.dtype) * (scale / count).unsqueeze(1)).unsqueeze(-1))  # s G
        ctx.save_for_backward(g, f_hat, w_hat, norm, alphas)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        g, f_hat, w_hat, norm, alphas = ctx.saved_tensors
        g_what = torch.bmm(g.transpose(1, 2), f_hat)  # (R, K, D)
        g_what.sub_(w_hat * (w_hat * g_what).sum(dim=-1, keepdim=True))
        g_what.mul_((alphas * grad_loss).view(-1, 1, 1) / norm)
        return g_what, None, None, None, None, None


def residual_loss(base: torch.Tensor, alphas: torch.Tensor, scale: float):
    """The trainer's loss for R runs: each run's mean cross-entropy (R,) of z = s normalize(f)
    normalize(t + alpha_r x_r)^T on its batch x (R, B, D), y (R, B) (label -1: padding, left out);
    alpha per run (R,) and the base t (K, D) are captured. Its gradient: :class:`ResidualCrossEntropy`."""

    def loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ResidualCrossEntropy.apply(params["residual"], F.normalize(x, dim=-1), y, base, alphas, scale)

    return loss


def lr_per_epoch(lr: float, epochs: int) -> list[float]:
    """Dassl's constant warm-up around CosineAnnealingLR(T_max=epochs), stepped per epoch: epoch
    e < W at 1e-5, then lr (1 + cos(pi (e - W) / epochs)) / 2 (the count restarts after warm-up)."""
    return [warmup_cosine(e, epochs, lr, WARMUP_EPOCHS, WARMUP_LR) for e in range(epochs)]


def batch_plan(num_images: int, batch_size: int) -> tuple[int, int]:
    """(images per step, steps per epoch): Dassl drops the last partial batch iff N >= batch."""
    return (batch_size, num_images // batch_size) if num_images >= batch_size else (num_images, 1)


@dataclass(frozen=True)
class ResidualRun:
    """One (seed, alpha) to train: its images, its val (for --epoch best-val) and its generator's seed."""

    views: torch.Tensor  # (N, V, D) raw, any float dtype
    labels: torch.Tensor  # (N,)
    alpha: float
    seed: int
    val: tuple[torch.Tensor, torch.Tensor] | None = None  # (M, D) raw, (M,)


@dataclass(frozen=True)
class Residual:
    """A trained run: its residual x (K, D) on the CPU and, when it kept its best val epoch, the record."""

    residual: torch.Tensor
    epoch: dict | None = None


def train_residuals(
    runs: Sequence[ResidualRun],
    base: torch.Tensor,
    scale: float,
    lr: float,
    epochs: int,
    cfg: TaskResConfig,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    best_val: bool = False,
    fused: bool = True,
) -> list[Residual]:
    """Train every run stacked (:mod:`cacheclip.fit.trainer`): runs of one batch plan together, in
    chunks that keep their state in the cache. Each run's residual depends only on its own inputs
    and seed. ``best_val``: each run keeps its first best val epoch (every run needs a val), else
    its last. ``progress(done, total)`` counts run-epochs. float32 (float64 if base is)."""
    dtype = torch.promote_types(base.dtype, torch.float32)
    k, d = base.shape
    groups: dict[tuple[int, int], list[int]] = {}
    for r, run in enumerate(runs):
        groups.setdefault(batch_plan(run.views.shape[0], cfg.batch_size), []).append(r)
    samples = Samples.of_views([run.views for run in runs], [run.labels for run in runs], device)  # once
    stacks = [
        [members[i] for i in chunk]
        for plan, members in groups.items()
        for chunk in stack_chunks(len(members), 4 * k * d * dtype.itemsize, device, 4.0 * plan[0] * d * k)
    ]

    def train(idx: list[int], tick: Callable[[int], None] | None) -> list[Residual]:
        plan = batch_plan(runs[idx[0]].views.shape[0], cfg.batch_size)
        members = [runs[r] for r in idx]
        return _train_stack(
            members, samples.subset(idx), base, scale, lr, epochs, cfg, plan, dtype, device, tick, best_val, fused
        )

    flops = 4.0 * max(plan[0] for plan in groups) * d * k
    return run_stacks(stacks, train, len(runs), epochs, progress, device, flops)


def _train_stack(
    runs, samples, base, scale, lr, epochs, cfg, plan, dtype, device, progress, best_val, fused
) -> list[Residual]:
    """One stack: the tables (each distinct views tensor once), each run's batch stream from its own
    generator, Dassl's per-epoch schedule, and each run's first best val epoch when asked."""
    per_step, steps = plan
    streams = [
        epoch_rows(*run.views.shape[:2], per_step, steps, torch.Generator().manual_seed(int(run.seed))) for run in runs
    ]
    r, (k, d) = len(runs), base.shape
    t = base.to(device=device, dtype=dtype)
    alphas = torch.tensor([float(run.alpha) for run in runs], dtype=dtype, device=device)

    def lr_at(i: int, peak: float) -> float:  # per epoch
        return warmup_cosine(i // steps, epochs, peak, WARMUP_EPOCHS, WARMUP_LR)

    stack = Stack(
        params={"residual": torch.zeros(r, k, d, dtype=dtype, device=device)},  # t' = t before the first step
        loss=residual_loss(t, alphas, scale),
        recipe=Recipe("adam", betas=tuple(cfg.betas), eps=EPS),
        lrs=[lr] * r,
        weight_decays=[cfg.weight_decay] * r,
        schedule=lr_at,
        samples=samples,
        blocks=stack_blocks(streams, device),
        dtype=dtype,
        fused=fused,
        step_flops=2.0 * r * per_step * d * k,
    )
    keeper = Keeper(r, ties="first") if best_val else None
    val = stack_vals([run.val for run in runs], dtype, device, normalize=True) if best_val else None

    def after_step(i: int, params: dict[str, torch.Tensor]) -> None:
        if (i + 1) % steps:
            return
        epoch = (i + 1) // steps
        if keeper is not None:
            keeper.observe(epoch, val_top1(val, t, params["residual"], alphas, scale), params)
        if progress is not None:
            progress(epoch)

    last = train_stack(stack, epochs * steps, after_step)["residual"]
    if keeper is None:
        return [Residual(x) for x in last.cpu()]
    kept = keeper.state["residual"].cpu()
    return [Residual(kept[j], keeper.record(j)) for j in range(r)]


def val_top1(val, base, residual, alphas, scale) -> torch.Tensor:
    """Each run's val top-1 % (R,), float64, as ``top1_percent`` computes it one run at a time."""
    f_hat, y, sizes = val
    correct = stacked_logits(f_hat, base, residual, alphas, scale).argmax(-1).eq(y).sum(1)
    return 100.0 * correct.to("cpu", torch.float64) / sizes


def train_residual(
    views: torch.Tensor,
    labels: torch.Tensor,
    base: torch.Tensor,
    scale: float,
    alpha: float,
    lr: float,
    epochs: int,
    cfg: TaskResConfig,
    seed: int,
    device: str = "cpu",
    fused: bool = True,
) -> torch.Tensor:
    """One run alone (a stack of one): the last epoch's residual x (K, D), on the CPU. views (N, V, D)
    raw (any float dtype), labels (N,), base t (K, D); its generator is seeded with ``seed``."""
    run = ResidualRun(views, labels, alpha, seed)
    return train_residuals([run], base, scale, lr, epochs, cfg, device, fused=fused)[0].residual


# ---------------------------------------------------------------- the method


def candidate_alphas(cfg: TaskResConfig, official: Official, has_val: bool) -> list[float]:
    """The official alpha; the given grid with val; without val one value (the single one given,
    else the official one: nothing to choose on)."""
    if cfg.alphas is None:
        return [official.alpha]
    if has_val or len(cfg.alphas) == 1:
        return [float(a) for a in cfg.alphas]
    return [official.alpha]


def _resolved(ctx: FitContext) -> tuple[Official, list[float], float, int]:
    """(official values, alphas, lr, epochs); --protocol official: the scripts' values, whatever was given."""
    cfg, official = ctx.config, official_values(ctx.data.dataset, ctx.shots)
    if ctx.official:
        cfg = replace(cfg, alphas=None, lr=None, epochs=None)
    lr = cfg.lr if cfg.lr is not None else official.lr
    epochs = cfg.epochs if cfg.epochs is not None else official.epochs
    return official, candidate_alphas(cfg, official, ctx.has_val), lr, epochs


def _base_description(data: FitData) -> str:
    t = data.per_template.shape[0]
    spec = data.attrs.get("templates_spec", "default")
    return "the single template's raw embedding" if t == 1 else f"raw mean of the {t} templates of '{spec}'"


def payload(ctx: FitContext) -> dict[str, Any]:
    cfg = ctx.config
    official, alphas, lr, epochs = _resolved(ctx)
    return {
        "alphas": alphas,
        "lr": lr,
        "epochs": epochs,
        "batch_size": cfg.batch_size,
        "weight_decay": cfg.weight_decay,
        "betas": list(cfg.betas),
        "eps": EPS,
        "schedule": f"{WARMUP_EPOCHS} epoch at {WARMUP_LR:g}, then cosine per epoch (Dassl)",
        "values_from": "train_regular.sh" if official.scripted else "generic (dataset not in TaskRes's scripts)",
        "base": _base_description(ctx.data),
        "views_used": ctx.views,
        "model": "first best val epoch" if ctx.epoch_rule == "best-val" else "last epoch",
    }


def train(ctx: FitContext, plans: list[RunPlan]) -> list[Trained]:
    """Every seed x alpha of this shot count trained together (:func:`train_residuals`)."""
    data, cfg = ctx.data, ctx.config
    _, alphas, lr, epochs = _resolved(ctx)
    base, scale = base_classifier(data), data.logit_scale
    start, vals, runs = time.perf_counter(), [], []
    for plan in plans:
        _, views, labels = ctx.train_views(plan.split)  # (N, V, D); V = 1 for the clean view
        val = ctx.val_features(plan.split)
        vals.append(val)
        runs += [ResidualRun(views, labels, alpha, plan.seed, val) for alpha in alphas]
    best_val = ctx.epoch_rule == "best-val" and all(val is not None for val in vals)
    trained = train_residuals(runs, base, scale, lr, epochs, cfg, ctx.device, ctx.tick, best_val)
    seconds = (time.perf_counter() - start) / max(1, len(plans))
    out = []
    for p, (plan, val) in enumerate(zip(plans, vals, strict=True)):
        mine = trained[p * len(alphas) : (p + 1) * len(alphas)]
        residuals = [t.residual for t in mine]
        predictors = [_predictor(base, x, a, scale) for x, a in zip(residuals, alphas, strict=True)]
        best, selection, val_metrics = select_on_val(
            [{"alpha": a} for a in alphas], predictors, val, data, ctx.selection_source
        )
        if val is None:
            why = (
                "as given"
                if not ctx.official and cfg.alphas is not None and len(cfg.alphas) == 1
                else "the official value"
            )
            selection["reason"] = f"no val split: alpha fixed at {alphas[0]:g} ({why})"
        selection["epoch"] = mine[best].epoch or last_epoch_record(epochs, ctx.epoch_fallback)
        chosen = {"alpha": alphas[best], "lr": lr, "epochs": epochs}
        config = {
            **payload(ctx),
            "chosen": chosen,
            "classifier": f"TaskRes: t + alpha x, t = {_base_description(data)}",
        }
        tensors = {"base": base.contiguous(), "residual": residuals[best].float(), "alpha": torch.tensor(alphas[best])}
        meta = {
            "method_config": chosen,
            "classnames": data.classnames,
            "logit_scale": scale,
            "logits": "logit_scale * normalize(f) @ normalize(base + alpha * residual).T",
        }
        out.append(Trained(plan, predictors[best], selection, val_metrics, config, (tensors, meta), seconds))
    return out


def _predictor(base: torch.Tensor, residual: torch.Tensor, alpha: float, scale: float):
    return lambda feats: taskres_logits(feats.float(), base, residual.float(), alpha, scale)


def from_artifact(tensors: dict, meta: dict, class_weights: torch.Tensor, logit_scale: float, device: str):
    """The file's own base (the store's classifier may be the normalised ensemble), not class_weights."""
    base, residual, alpha = tensors["base"].to(device), tensors["residual"].to(device), float(tensors["alpha"])
    return lambda feats: taskres_logits(feats.to(device).float(), base, residual, alpha, logit_scale).cpu()


def differences(ctx: FitContext) -> list[str]:
    cfg, data = ctx.config, ctx.data
    official, alphas, lr, epochs = _resolved(ctx)
    diffs = []
    if ctx.views == "aug":
        scale = data.attrs.get("aug_scale", "?")
        diffs.append(
            f"augmentation: one of {data.aug_views} cached RandomResizedCrop (scale {scale}) + flip views per image "
            "per epoch (official: a fresh RandomResizedCrop(0.08, 1) + flip through the image encoder every epoch)"
        )
    else:
        diffs.append("no augmentation: the clean view every epoch (official: a fresh RandomResizedCrop + flip)")
    if not official.scripted:
        diffs.append(f"{data.dataset} is not in TaskRes's scripts: generic alpha {GENERIC_ALPHA}, lr {GENERIC_LR:g}")
    if ctx.has_val and not ctx.official and cfg.alphas is not None and len(cfg.alphas) > 1:
        diffs.append(
            f"alpha chosen on the few-shot val split from {alphas} "
            f"(official: fixed at {official.alpha:g} for this dataset, no validation)"
        )
    elif alphas != [official.alpha]:
        diffs.append(f"alpha {alphas[0]:g} (official: {official.alpha:g})")
    for name, ours, theirs in (
        ("lr", lr, official.lr),
        ("epochs", epochs, official.epochs),
        ("batch size", cfg.batch_size, 256),
        ("weight decay", cfg.weight_decay, 5e-4),
    ):
        if ours != theirs:
            diffs.append(f"{name} {ours:g} (official: {theirs:g})")
    if ctx.epoch_rule == "best-val":
        diffs.append("the first best val epoch kept (official: the last epoch, no val)")
    diffs.append(
        f"Adam betas {tuple(cfg.betas)} (TaskRes does not pin its Dassl: (0.9, 0.999) at Dassl HEAD, "
        f"{OLD_DASSL_BETAS} in older versions)"
    )
    if data.dataset == "imagenet":
        diffs += _imagenet_base_difference(ctx)
    return diffs


def _imagenet_base_difference(ctx: FitContext) -> list[str]:
    """The official ImageNet base is the raw mean of the 8 templates a default ImageNet store holds
    (``--classifier single+ensemble``, TaskRes's paper classifier)."""
    data = ctx.data
    if sorted(data.templates) == sorted((*IMAGENET7, GENERIC_TEMPLATE)):  # a mean: the order is irrelevant
        return []
    return [f"ImageNet base: {_base_description(data)} (official: raw mean of {IMAGENET_BASE})"]


register_method(
    Method(
        name="taskres",
        summary="a learned residual on the text classifier, t + alpha x (Yu et al. 2023, arXiv 2211.10277)",
        config=TaskResConfig,
        payload=payload,
        train=train,
        differences=differences,
        from_artifact=from_artifact,
        new_classes=NewClassRule(
            "zero-shot CLIP with the new classes' text weights: the residual is learned per base class, "
            "a new class keeps its initial value, 0",
            zero_shot_on_new,
        ),
        judges_templates=True,
        epoch_note="",
        paper_classifier="single+ensemble",
    )
)
