"""LP++ (Huang et al. 2024, CVPR, arXiv 2404.02285): a linear probe blended with the text classifier
by class-wise multipliers, trained full batch with data-driven step sizes (block-coordinate
majorize-minimize).

    f        = normalize(x)                    one cached view per image, drawn once per run (M = N rows)
    t^       = normalize(mean_T normalize(text))               the template ensemble (K, D)
    logits   = f @ W^T + b + alpha * (f @ t^^T)                (M, K); alpha (K,); no logit scale
    W_k      = sum_{i in k} f_i  (a class SUM)     b ~ U(-1/sqrt(D), 1/sqrt(D))  (nn.Linear's default)
    alpha_k  = 250 * mean_c mean_{i in c} f_i . t^_c           (one value for every class)
    lr_w     = 4 M / lambda_max(F^T F)             lr_alpha = M / (4 max_k sum_i (f_i . t^_k)^2)

Each of 300 epochs: one backward pass of the mean cross-entropy over all M rows, an SGD step
(momentum 0.9) on (W, b) at lr_w, and after every 10th epoch a plain step alpha -= lr_alpha * g
with the gradient g of that same pass: by default this epoch's gradient (the paper's update); with
``--lpp-quirk true`` the sum of the alpha gradients of every epoch so far, as the official code,
which never zeroes alpha's ``.grad``. Kept: the last epoch with the best val top-1 (``>=``, as the
code), or the last epoch without val. Randomness: ``torch.Generator().manual_seed(seed)``, drawn
in this order: the view of each image, then the bias.

Trained on :mod:`cacheclip.fit.trainer`: every seed of a shot count in one stack, the loss written
once for R runs, (W, b) by torch.optim's SGD with one param group per run (the step size lr_w is
each run's own, computed from its data; for a full-batch method, one step per epoch, that costs
little), alpha by its own documented update (:func:`_alpha_step`: a plain step every n-th epoch,
with the quirk's running sum, which no torch.optim step gives). Each run's draws are the one-run
loop's, so its numbers are the same (float tolerance) whatever runs share its stack.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from cacheclip.datasets.fewshot import VAL_SHOTS_CAP
from cacheclip.datasets.templates import IMAGENET7
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
from cacheclip.fit.trainer import Keeper, Recipe, Stack, run_cross_entropy, run_stacks, stack_chunks, train_stack
from cacheclip.settings import setting

LPP_SCALE = (0.5, 1.0)  # LP++'s RandomResizedCrop scale
ALPHA_INIT_SCALE = 250.0  # alpha_k init = 250 * mean class-wise text similarity
VIEW_MODES = ("one", "all")
SELECT_MODES = ("val", "last")
ALPHA_UPDATES = {
    False: "this epoch's alpha gradient (the paper's block-coordinate update)",
    True: "alpha gradient summed over every epoch so far (the official code: .grad never zeroed)",
}


@dataclass(frozen=True)
class LppConfig:
    """LP++'s settings; the defaults are the official ones (configs/base.yaml), the alpha update the paper's."""

    epochs: int = setting(300, "full-batch epochs", flag="--lpp-epochs")
    momentum: float = setting(0.9, "SGD momentum on (W, b)", flag="--lpp-momentum")
    alpha_every: int = setting(10, "alpha steps after every n-th epoch", flag="--lpp-alpha-every")
    quirk: bool = setting(
        False,
        "true: alpha steps with its gradient summed over all epochs (the official code); false: the paper's update",
        flag="--lpp-quirk",
    )
    views: str = setting(
        "one", "one: one cached view per image, drawn once per run (LP++'s); all: every cached view", flag="--lpp-views"
    )
    select: str = setting(
        "val", "val: the last best epoch on the few-shot val; last: the last epoch", flag="--lpp-select"
    )

    def validate(self) -> None:
        if self.epochs < 1 or self.alpha_every < 1 or not 0 <= self.momentum < 1:
            raise ConfigError(
                "--lpp-epochs and --lpp-alpha-every must be >= 1, --lpp-momentum in [0, 1)", "e.g. --lpp-epochs 300"
            )
        if self.views not in VIEW_MODES or self.select not in SELECT_MODES:
            raise ConfigError(
                f"--lpp-views {self.views} / --lpp-select {self.select} not supported",
                f"use --lpp-views {' or '.join(VIEW_MODES)}, --lpp-select {' or '.join(SELECT_MODES)}",
            )


# ---------------------------------------------------------------- the math


def ensemble_text(per_template: torch.Tensor) -> torch.Tensor:
    """t^ (K, D) = normalize(mean over T of normalize(text)) from raw (T, K, D): the store's ensemble."""
    return F.normalize(F.normalize(per_template.float(), dim=-1).mean(0), dim=-1)


def training_set(views: torch.Tensor, labels: torch.Tensor, gen: torch.Generator, mode: str):
    """(f (M, D) L2-normalised, labels (M,)) from raw views (N, V, D).

    one: M = N, view ``randint(V, (N,))`` per image (no draw when V = 1), kept for every epoch;
    all: M = N V, every view."""
    n, v, d = views.shape
    if mode == "all":
        return F.normalize(views.reshape(n * v, d).float(), dim=-1), labels.repeat_interleave(v)
    pick = torch.randint(v, (n,), generator=gen) if v > 1 else torch.zeros(n, dtype=torch.long)
    return F.normalize(views[torch.arange(n, device=views.device), pick.to(views.device)].float(), dim=-1), labels


def init_params(f: torch.Tensor, y: torch.Tensor, text_hat: torch.Tensor, gen: torch.Generator):
    """(W (K, D), b (K,), alpha (K,)) from normalised f (M, D), labels (M,), t^ (K, D).

    W_k is the class SUM (the code's division is commented out); b is drawn by ``rand(K)``;
    alpha is the mean over classes (not samples) of the class-mean own-class text similarity."""
    k, d = text_hat.shape
    weight = torch.zeros(k, d, device=f.device).index_add_(0, y, f)
    bias = ((2.0 * torch.rand(k, generator=gen) - 1.0) / math.sqrt(d)).to(f.device)
    own = (f @ text_hat.t()).gather(1, y[:, None]).squeeze(1).double()  # f_i . t^_{y_i}  (M,)
    counts = torch.bincount(y, minlength=k)
    means = torch.zeros(k, dtype=torch.float64, device=f.device).index_add_(0, y, own) / counts.clamp(min=1)
    alpha0 = ALPHA_INIT_SCALE * float(means[counts > 0].mean())
    return weight, bias, torch.full((k,), alpha0, device=f.device)


def step_sizes(f: torch.Tensor, text_hat: torch.Tensor) -> tuple[float, float]:
    """(lr_w, lr_alpha) = (4 M / lambda_max(F^T F), M / (4 max_k sum_i (f_i . t^_k)^2)), f (M, D).

    lambda_max in float64 from the smaller of F^T F (D, D) and F F^T (M, M): the same non-zero spectrum."""
    m, g = f.shape[0], f.double()
    gram = g.t() @ g if m >= f.shape[1] else g @ g.t()
    lr_w = 4.0 * m / float(torch.linalg.eigvalsh(gram)[-1])
    lr_alpha = m / (4.0 * float((g @ text_hat.double().t()).pow(2).sum(0).max()))
    return lr_w, lr_alpha


def lpp_logits(feats: torch.Tensor, weight, bias, alpha, text_hat) -> torch.Tensor:
    """normalize(f) @ W^T + b + alpha * (normalize(f) @ t^^T): raw feats (M, D) -> (M, K)."""
    dev = feats.device
    f = F.normalize(feats.float(), dim=-1)
    weight, bias, alpha, text_hat = (x.to(dev, torch.float32) for x in (weight, bias, alpha, text_hat))
    return f @ weight.t() + bias + alpha * (f @ text_hat.t())


def lpp_loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, *, alpha: torch.Tensor) -> torch.Tensor:
    """Each run's mean CE (R,) of f W^T + b + alpha * sim: x (R, M, D + K) rows [f, f . t^] (the
    text similarities ride along the features: computed once), y (R, M), W (R, K, D), b and alpha (R, K)."""
    k = alpha.shape[-1]
    f, sim = x[..., :-k], x[..., -k:]
    # W f^T, not f W^T: W's gradient then comes out of the product in W's own (K, D) layout
    z = torch.baddbmm(params["bias"][:, :, None], params["weight"], f.transpose(1, 2)).transpose(1, 2)
    return run_cross_entropy(z + alpha[:, None, :] * sim, y)


@dataclass
class LppFit:
    """A trained LP++ probe (CPU tensors), the epoch kept and each epoch's val top-1 (%, 4 decimals)."""

    weight: torch.Tensor  # (K, D)
    bias: torch.Tensor  # (K,)
    alpha: torch.Tensor  # (K,)
    text_hat: torch.Tensor  # (K, D)
    lr_w: float
    lr_alpha: float
    epoch: int
    val_top1: list[float]


@dataclass(frozen=True)
class LppRun:
    """One LP++ run: raw views (N, V, D), labels (N,), its own generator, and the val it keeps its
    last best epoch on (None: the last epoch)."""

    views: torch.Tensor
    labels: torch.Tensor
    gen: torch.Generator
    val: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass
class _Prepared:  # one run's full batch, start and step sizes
    table: torch.Tensor  # (M, D + K): [f, f . t^]
    labels: torch.Tensor  # (M,)
    weight: torch.Tensor
    bias: torch.Tensor
    alpha: torch.Tensor
    lr_w: float
    lr_alpha: float


def train_lpps(
    runs: Sequence[LppRun],
    per_template: torch.Tensor,
    cfg: LppConfig,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> list[LppFit]:
    """Train every run, stacked (:mod:`cacheclip.fit.trainer`), in chunks that keep their state in
    the cache. Per run, from its own generator in this order: its training set (the view of each
    image), then its bias; then its step sizes. (W, b) step by torch.optim's SGD at the run's own
    lr_w: data-dependent, so one param group per run (a full-batch method: one step per epoch, the
    groups cost little). alpha steps by a method-owned update (:func:`_alpha_step`), as LP++'s own
    code does outside its optimiser. ``progress(done, total)`` counts run-epochs."""
    text_hat = ensemble_text(per_template).to(device)
    k, d = text_hat.shape
    prepared = [_prepare(run, text_hat, cfg, device) for run in runs]
    stacks = []
    for with_val in (True, False):
        order = [r for r in range(len(runs)) if (runs[r].val is not None) == with_val]
        order.sort(key=lambda r: prepared[r].lr_w)  # equal step sizes adjacent: one param group
        if order:
            rows = prepared[order[0]].labels.numel()  # full batch: every row each step
            chunks = stack_chunks(
                len(order), (3 * k * d + 5 * k) * 4, device, 4.0 * rows * k * d
            )  # W, b, grads, momenta
            stacks += [[order[i] for i in chunk] for chunk in chunks]

    def train(rs: list[int], tick: Callable[[int], None] | None) -> list[LppFit]:
        return _train_stack([runs[r] for r in rs], [prepared[r] for r in rs], text_hat, cfg, device, tick)

    flops = 4.0 * max(p.labels.numel() for p in prepared) * k * d
    return run_stacks(stacks, train, len(runs), cfg.epochs, progress, device, flops)


def _prepare(run: LppRun, text_hat: torch.Tensor, cfg: LppConfig, device: str) -> _Prepared:
    f, y = training_set(run.views.to(device), run.labels.to(device, torch.long), run.gen, cfg.views)
    weight, bias, alpha = init_params(f, y, text_hat, run.gen)
    lr_w, lr_alpha = step_sizes(f, text_hat)
    return _Prepared(torch.cat([f, f @ text_hat.t()], dim=1), y, weight, bias, alpha, lr_w, lr_alpha)


def _alpha_step(alpha: torch.Tensor, grad_sum: torch.Tensor, lr_alpha: torch.Tensor, epoch: int, cfg: LppConfig):
    """After epoch ``epoch``'s (W, b) step: take alpha's gradient of that epoch's pass (autograd left
    it in ``alpha.grad``: alpha is no optimiser parameter), add it to the running sum, and every
    ``alpha_every`` epochs step alpha -= lr_alpha * (the sum if cfg.quirk, else this gradient)."""
    with torch.no_grad():
        grad, alpha.grad = alpha.grad, None
        grad_sum += grad
        if epoch % cfg.alpha_every == 0:
            alpha -= lr_alpha * (grad_sum if cfg.quirk else grad)


class FullBatch:
    """:class:`~cacheclip.fit.trainer.Samples`' interface for a full-batch method: every step's batch
    is every run's whole table, stacked once (R, M, D + K), label -1 on the rows that pad a smaller
    table: no gather and no fresh (R, M, D + K) batch per step (measured: ~3000 page faults an
    epoch at K = 100, 16 shots, 3 runs, which cost LP++ more than its products)."""

    def __init__(self, tables: Sequence[tuple[torch.Tensor, torch.Tensor]], device: str = "cpu"):
        m, width = max(len(y) for _, y in tables), tables[0][0].shape[1]
        self.x = torch.zeros(len(tables), m, width, device=device)
        self.y = torch.full((len(tables), m), -1, dtype=torch.long, device=device)
        for j, (feats, labels) in enumerate(tables):
            self.x[j, : len(labels)] = feats
            self.y[j, : len(labels)] = labels

    def batch(self, rows: torch.Tensor, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x.to(dtype), self.y


def _train_stack(runs, prepared: list[_Prepared], text_hat, cfg: LppConfig, device, progress) -> list[LppFit]:
    r, (k, d) = len(runs), text_hat.shape
    samples = FullBatch([(p.table, p.labels) for p in prepared], device)
    m = samples.y.shape[1]
    alpha = torch.stack([p.alpha for p in prepared]).requires_grad_(True)  # (R, K): method-owned, see _alpha_step
    grad_sum = torch.zeros_like(alpha)
    lr_alpha = torch.tensor([[p.lr_alpha] for p in prepared], device=device)
    stack = Stack(
        params={"weight": torch.stack([p.weight for p in prepared]), "bias": torch.stack([p.bias for p in prepared])},
        loss=partial(lpp_loss, alpha=alpha),
        recipe=Recipe("sgd", momentum=cfg.momentum),
        lrs=[p.lr_w for p in prepared],
        weight_decays=[0.0] * r,
        schedule=lambda i, peak: peak,
        samples=samples,  # type: ignore[arg-type]  # Samples' interface (batch)
        blocks=itertools.repeat(torch.zeros(1, r, m, dtype=torch.long)),  # read by nobody: the batch is all rows
        step_flops=4.0 * r * m * k * d,
    )
    keeper = Keeper(r, ties="last") if runs[0].val is not None else None  # LP++'s code: >=, the last best
    if keeper is not None:
        fv, yv, sizes = _stacked_val([run.val for run in runs], text_hat, device)

    def after_step(i: int, params: dict[str, torch.Tensor]) -> None:
        _alpha_step(alpha, grad_sum, lr_alpha, i + 1, cfg)
        if keeper is not None:
            state = {**params, "alpha": alpha.detach()}
            keeper.observe(i + 1, _val_top1(fv, yv, sizes, state), state)
        if progress is not None:
            progress(i + 1)

    last = {**train_stack(stack, cfg.epochs, after_step), "alpha": alpha.detach()}
    state = keeper.state if keeper is not None else last
    w, b, a = (state[n].cpu() for n in ("weight", "bias", "alpha"))
    th = text_hat.cpu()
    return [
        LppFit(
            w[j],
            b[j],
            a[j],
            th.clone(),
            lr_w=p.lr_w,
            lr_alpha=p.lr_alpha,
            epoch=int(keeper.at[j]) if keeper is not None else cfg.epochs,
            val_top1=keeper.curves[j] if keeper is not None else [],
        )
        for j, p in enumerate(prepared)
    ]


def _stacked_val(vals, text_hat: torch.Tensor, device: str):
    """([f, f . t^] (R, M, D + K) normalised, y (R, M), sizes (R,)): each run's val, zero-padded to
    the largest with label -1 (never a prediction)."""
    m, (k, d) = max(len(y) for _, y in vals), text_hat.shape
    x = torch.zeros(len(vals), m, d + k, device=device)
    y = torch.full((len(vals), m), -1, dtype=torch.long, device=device)
    for j, (feats, labels) in enumerate(vals):
        f = F.normalize(feats.to(device, torch.float32), dim=-1)
        x[j, : len(labels)] = torch.cat([f, f @ text_hat.t()], dim=1)
        y[j, : len(labels)] = labels.to(device, torch.long)
    return x, y, torch.tensor([len(labels) for _, labels in vals], dtype=torch.float64)


def _val_top1(x, y, sizes, state: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each run's val top-1 % (R,): 100 * correct / M, as the one-run loop computed it."""
    with torch.no_grad():
        k = state["alpha"].shape[-1]
        z = torch.baddbmm(state["bias"][:, None, :], x[..., :-k], state["weight"].transpose(1, 2))
        z = z + state["alpha"][:, None, :] * x[..., -k:]
        return 100.0 * z.argmax(-1).eq(y).sum(1).cpu().double() / sizes.clamp(min=1)


def train_lpp(
    views: torch.Tensor,
    labels: torch.Tensor,
    per_template: torch.Tensor,
    cfg: LppConfig,
    *,
    gen: torch.Generator,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> LppFit:
    """LP++ alone (a stack of one) on raw views (N, V, D), labels (N,), raw text (T, K, D). With
    ``val`` (raw feats, labels) every epoch is scored and the LAST best one is kept (ties: the
    later epoch); else the last. See :func:`train_lpps`."""
    return train_lpps([LppRun(views, labels, gen, val)], per_template, cfg, device, progress)[0]


# ---------------------------------------------------------------- the method


def payload(ctx: FitContext) -> dict[str, Any]:
    cfg, data = ctx.config, ctx.data
    select = (cfg.select == "val" or ctx.official) and ctx.has_val
    return {
        "epochs": cfg.epochs,
        "momentum": cfg.momentum,
        "alpha_every": cfg.alpha_every,
        "quirk": cfg.quirk,
        "alpha_update": ALPHA_UPDATES[cfg.quirk],
        "views": cfg.views,
        "views_used": ctx.views,
        "train_features": (
            f"{'one of' if cfg.views == 'one' else 'all'} {data.aug_views} cached views per image, L2-normalised"
            if ctx.views == "aug"
            else "the clean view, L2-normalised"
        ),
        "text": f"normalised ensemble of {data.per_template.shape[0]} template(s)",
        "step_sizes": "lr_w = 4M / lambda_max(F^T F), lr_alpha = M / (4 max_k sum_i (f_i . t_k)^2)",
        "select": "last best val epoch" if select else "last epoch",
    }


def train(ctx: FitContext, plans: list[RunPlan]) -> list[Trained]:
    """Every seed of this shot count in one call: the runs train stacked (:func:`train_lpps`)."""
    cfg, data = ctx.config, ctx.data
    start, runs, vals = time.perf_counter(), [], []
    for plan in plans:
        _, views, labels = ctx.train_views(plan.split)  # views (N, V, D) raw
        if ctx.official and ctx.has_full_val and ctx.shots > VAL_SHOTS_CAP:  # the few-shot val: min(K, 4) per class
            (val, val_indices), val_set = ctx.val_per_class(plan.split, ctx.shots), "per-class"  # LP++: K per class
        else:
            val, val_set, val_indices = ctx.val_features(plan.split), "fewshot", None
        select = val is not None and (cfg.select == "val" or ctx.official)
        runs.append(LppRun(views, labels, torch.Generator().manual_seed(plan.seed), val if select else None))
        vals.append((val, val_set, val_indices))
    fits = train_lpps(runs, data.per_template, cfg, ctx.device, ctx.tick)
    seconds = (time.perf_counter() - start) / max(1, len(plans))
    return [
        _trained(ctx, plan, fit, run.val is not None, *val, seconds)
        for plan, fit, run, val in zip(plans, fits, runs, vals, strict=True)
    ]


def _trained(ctx: FitContext, plan: RunPlan, fit: LppFit, select: bool, val, val_set, val_indices, seconds) -> Trained:
    cfg, data = ctx.config, ctx.data
    predict = _predictor(fit.weight, fit.bias, fit.alpha, fit.text_hat)
    val_metrics = classification_metrics(predict(val[0]), val[1], data.num_classes) if val else None
    chosen = {"epoch": fit.epoch}
    if select:
        selection = {
            "on": f"{ctx.shots} val images per class" if val_set == "per-class" else ctx.selection_source,
            "candidates": {"epochs": cfg.epochs},
            "val_top1": [round(x, 4) for x in fit.val_top1],  # index i: after epoch i + 1
            "rule": "the last epoch with the best val top-1 (>=, as LP++'s code)",
            "chosen": chosen,
        }
    else:
        why = "--lpp-select last: val is only reported" if val else "no val split"
        selection = {"on": "none", "candidates": [dict(chosen)], "chosen": chosen, "reason": f"{why}: last epoch"}
    steps = {"lr_w": fit.lr_w, "lr_alpha": fit.lr_alpha}
    config = {**payload(ctx), "chosen": chosen, "step_sizes_used": steps, "classifier": "W, b + alpha * text"}
    tensors = {"weight": fit.weight, "bias": fit.bias, "alpha": fit.alpha, "text_hat": fit.text_hat}
    meta = {
        "method_config": {**chosen, "quirk": cfg.quirk, **steps},
        "classnames": data.classnames,
        "logit_scale": data.logit_scale,  # unused by LP++'s logits (no scale), kept for the file format
        "logits": "normalize(f) @ weight.T + bias + alpha * (normalize(f) @ text_hat.T)",
    }
    return Trained(plan, predict, selection, val_metrics, config, (tensors, meta), seconds, val_set, val_indices)


def _predictor(weight, bias, alpha, text_hat):
    return lambda feats: lpp_logits(feats, weight, bias, alpha, text_hat).cpu()


def from_artifact(tensors: dict, meta: dict, class_weights: torch.Tensor, logit_scale: float, device: str):
    parts = [tensors[k].to(device) for k in ("weight", "bias", "alpha", "text_hat")]
    return lambda feats: lpp_logits(feats.to(device), *parts).cpu()


def differences(ctx: FitContext) -> list[str]:
    cfg, data = ctx.config, ctx.data
    diffs = ["CoOp few-shot splits (LP++: its own random.sample splits; the paper averages 10 tasks, seeds 1-10)"]
    diffs += _selection_differences(ctx)
    diffs += view_differences(ctx, "LP++", "one random crop per image", 10)
    if ctx.views == "aug":
        v = data.aug_views
        diffs.append(
            f"one of {v} cached views per image, drawn once per run (LP++: one fresh random crop per image)"
            if cfg.views == "one"
            else f"all {v} cached views per image in the full batch (LP++: one view per image)"
        )
        scale = data.aug_scale
        if scale is not None and scale != LPP_SCALE:
            diffs.append(f"views cropped with scale {scale} (LP++: {LPP_SCALE})")
    diffs.append("fp32 training (LP++: fp16 on GPU)")
    if not cfg.quirk:
        diffs.append(
            "alpha stepped with the current epoch's gradient "
            "(LP++ code: gradient accumulated over all epochs, never zeroed; --lpp-quirk true reproduces it)"
        )
    diffs += _template_differences(data)
    official = LppConfig()
    for key, name in (("epochs", "epochs"), ("alpha_every", "alpha step every"), ("momentum", "momentum")):
        if getattr(cfg, key) != getattr(official, key):
            diffs.append(f"{name} {getattr(cfg, key):g} (LP++: {getattr(official, key):g})")
    return diffs


def _selection_differences(ctx: FitContext) -> list[str]:
    k, source = ctx.shots, ctx.selection_source
    paper = f"the last best epoch on a {k}-shot val; ImageNet: {k} extra train images per class, training transform"
    if source == "none":
        return [f"the last epoch, no val (LP++: {paper})"]
    if ctx.official and ctx.has_full_val:  # K per class from the val split (min(K, 4) = K when K <= 4)
        return []
    if ctx.config.select == "last" and not ctx.official:
        return [f"the last epoch, val only reported (LP++: {paper})"]
    if source == "holdout":
        return [f"best epoch on {min(k, 4)} held-out train images per class, clean view (LP++: {paper})"]
    if k > 4:  # our few-shot val has min(K, 4) images per class
        return [f"best epoch on the few-shot val split, 4 images per class (LP++: {k} per class)"]
    return []


def _template_differences(data: FitData) -> list[str]:
    t, spec = data.per_template.shape[0], data.attrs.get("templates_spec", "default")
    if data.dataset == "imagenet":
        if sorted(data.templates) != sorted(IMAGENET7):  # a mean: the order is irrelevant
            return [f"text ensemble of {t} template(s) ({spec}) (LP++ on ImageNet: the 7-template ensemble)"]
    elif spec != "default" or t != 1:
        return [f"text ensemble of {t} template(s) ({spec}) (LP++: the dataset's single template, as Tip-Adapter)"]
    return []


register_method(
    Method(
        name="lp++",
        summary="linear probe blended with the text classifier, data-driven step sizes "
        "(Huang et al. 2024, arXiv 2404.02285)",
        config=LppConfig,
        payload=payload,
        train=train,
        differences=differences,
        from_artifact=from_artifact,
        new_classes=NewClassRule(
            "zero-shot CLIP with the new classes' text weights: LP++'s visual prototypes, biases and blend "
            "weights are all per base class",
            zero_shot_on_new,
        ),
        judges_templates=True,
        epoch_note="chooses its epoch by --lpp-select (val: the last best val epoch, as LP++'s code)",
        paper_classifier="ensemble",
    )
)
