"""Train CLIP-Adapter on cached features, many runs at once.

Tensors in, state dicts out: this module never sees a store, a split or a
file. ``train_runs`` stacks the weights of R runs into ``(R, D, H)`` tensors
and trains them together on the stacked trainer (:mod:`cacheclip.fit.trainer`:
batched matmuls, autograd, torch.optim.SGD fused where it exists, each step's
inputs one gather from the cached views).
A hand-written forward/backward with torch's private fused SGD kernel was
1.36-1.47x faster for one run but only 1.14-1.24x for 12 runs batched
(benchmarks/fit.py, same process, AMD EPYC, 2 threads): below the 1.3x that
would pay for its complexity, so autograd it is.
The result equals training each run alone up to float rounding
(tests/test_train.py checks both this and the gradients against a per-run model).

Cost model (CPU, D = 1024, batch 32): a step is bound as much by moving the
weights (w1, w2, their momentum and gradients: ~6 MB per run per step)
as by its ~85 MFLOP, so batching runs helps mostly by sharing the per-op
overhead, up to the trainer's cache budget per stack; benchmarks/fit.py measures it.
Memory: beyond the views, each stack's distinct views once more (one table) and one
(R, B, D) step input.

Protocol (CoOp / Dassl configs that CLIP-Adapter plugs into):

* SGD, momentum 0.9, weight decay 5e-4 on all adapter weights, no Nesterov,
  no dampening; cross-entropy averaged over the batch.
* Learning rate per epoch: see :func:`lr_per_epoch`.
* Batches: each epoch a fresh permutation of the N images; ``N // batch``
  full batches (the remainder is dropped) when N >= batch, else one batch of
  all N images (Dassl's ``drop_last = len(data) >= batch_size``).
* Views: each epoch, per image, one of its V cached views drawn uniformly
  (``views="aug"``); ``views="clean"`` (or V = 1) always uses view 0.
* The returned model is the last epoch's; ``train_runs_best_val`` instead keeps, per run, the
  first epoch with the best val top-1 (CoOp's release configs: best-val model), scored after
  every epoch on the stacked weights, with no retraining (see :class:`BestEpoch`).

Randomness: each run owns ``torch.Generator().manual_seed(seed)`` (CPU).
Order of draws: the initial weights (visual.w1, visual.w2, text.w1, text.w2,
as in :mod:`cacheclip.adapters`), then per epoch ``randint(V, (N,))`` for
the views (skipped when V = 1 or views="clean") followed by ``randperm(N)``.
Same seed and inputs give bitwise-identical states on the same device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from cacheclip.errors import ConfigError
from cacheclip.fit.adapters import AdapterConfig, ClipAdapterHead, logits
from cacheclip.fit.trainer import (
    Keeper,
    Recipe,
    Samples,
    Stack,
    epoch_rows,
    run_cross_entropy,
    run_stacks,
    stack_blocks,
    stack_chunks,
    stack_vals,
    train_stack,
    warmup_cosine,
)

VIEW_MODES = ("aug", "clean")


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser and schedule; the defaults are CoOp's RN50 settings."""

    epochs: int | None = None  # None -> default_epochs(shots, dataset)
    lr: float = 0.002  # peak learning rate (first epoch after warm-up)
    batch_size: int = 32  # images per step
    weight_decay: float = 5e-4  # L2 on all adapter weights, SGD-style
    momentum: float = 0.9  # SGD momentum (no Nesterov, no dampening)
    warmup_epochs: int = 1  # epochs at the constant warm-up lr
    warmup_lr: float = 1e-5  # lr during warm-up
    views: str = "aug"  # aug (a random cached view per image per epoch) | clean (view 0 always)

    def validate(self) -> None:
        """Raise ConfigError for values that cannot work."""
        if self.epochs is not None and (not isinstance(self.epochs, int) or self.epochs < 1):
            raise ConfigError(f"epochs must be a positive integer, got {self.epochs!r}", "or leave it unset")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {self.batch_size!r}", "CoOp uses 32")
        if not isinstance(self.warmup_epochs, int) or self.warmup_epochs < 0:
            raise ConfigError(f"warmup_epochs must be >= 0, got {self.warmup_epochs!r}", "CoOp uses 1")
        checks = [
            ("lr", self.lr, 0.0, False),
            ("warmup_lr", self.warmup_lr, 0.0, True),
            ("weight_decay", self.weight_decay, 0.0, True),
        ]
        for name, value, low, inclusive in checks:
            if not math.isfinite(value) or value < low or (value == low and not inclusive):
                raise ConfigError(f"{name} must be {'>=' if inclusive else '>'} {low}, got {value!r}", "")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum!r}", "CoOp uses 0.9")
        if self.views not in VIEW_MODES:
            raise ConfigError(f"unknown views mode {self.views!r}", f"use one of: {', '.join(VIEW_MODES)}")


def default_epochs(shots: int, dataset: str) -> int:
    """CoOp's epochs: ImageNet 50; else 1 shot 50, 2-4 shots 100, 8+ shots 200.

    Shot counts CoOp never ran (5-7) get 100, the value of the nearest
    smaller configuration.
    """
    if not isinstance(shots, int) or shots < 1:
        raise ConfigError(f"shots must be a positive integer, got {shots!r}", "CoOp uses 1, 2, 4, 8, 16")
    if dataset == "imagenet" or shots == 1:
        return 50
    return 100 if shots < 8 else 200


def resolve_epochs(cfg: TrainConfig, shots: int, dataset: str) -> int:
    """``cfg.epochs`` when set, else :func:`default_epochs`."""
    return cfg.epochs if cfg.epochs is not None else default_epochs(shots, dataset)


def epoch_lr(cfg: TrainConfig, epochs: int, epoch: int) -> float:
    """The learning rate epoch ``epoch`` (0-based) trains with: Dassl (CoOp's trainer) wraps
    ``CosineAnnealingLR(T_max=epochs)`` in a ``ConstantWarmupScheduler`` (WARMUP_RECOUNT=True),
    stepped once per epoch; see :func:`cacheclip.fit.trainer.warmup_cosine`."""
    return warmup_cosine(epoch, epochs, cfg.lr, cfg.warmup_epochs, cfg.warmup_lr)


def lr_per_epoch(cfg: TrainConfig, epochs: int) -> list[float]:
    """Every epoch's learning rate (``len == epochs``), e.g. T = 5, W = 1:
    [1e-5, 2e-3, 1.809e-3, 1.309e-3, 6.91e-4]. Training computes each epoch's as it starts."""
    return [epoch_lr(cfg, epochs, e) for e in range(epochs)]


def batch_plan(num_images: int, batch_size: int) -> tuple[int, int]:
    """(images per step, steps per epoch) under Dassl's drop_last rule."""
    if num_images < 1:
        raise ConfigError("no training images", "sample at least one shot per class")
    if num_images >= batch_size:
        return batch_size, num_images // batch_size
    return num_images, 1


@dataclass
class RunSpec:
    """One training run: its seed, adapter settings and few-shot features."""

    seed: int
    adapter: AdapterConfig
    views: torch.Tensor  # (N, V, D) float training features (V cached views per image)
    labels: torch.Tensor  # (N,) int64 class indices


def group_runs(runs: Sequence[RunSpec]) -> list[list[int]]:
    """Indices of runs that train together in one batched pass, groups in order of first appearance."""
    groups: dict[tuple, list[int]] = {}
    for i, run in enumerate(runs):
        a = run.adapter
        key = (tuple(run.views.shape), a.kind, a.reduction, a.block, str(run.views.device))
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def _check_runs(runs: Sequence[RunSpec], class_weights: torch.Tensor) -> None:
    if not runs:
        raise ConfigError("no runs to train", "pass at least one RunSpec")
    if class_weights.dim() != 2:
        raise ConfigError(f"class weights must be (K, D), got shape {tuple(class_weights.shape)}", "")
    k, d = class_weights.shape
    for run in runs:
        run.adapter.validate()
        if run.views.dim() != 3 or run.views.shape[2] != d:
            raise ConfigError(
                f"views must be (N, V, D) with D = {d} (the class weights' dim), got {tuple(run.views.shape)}",
                "use class weights from the same model as the features",
            )
        if tuple(run.labels.shape) != (run.views.shape[0],):
            raise ConfigError(f"{run.views.shape[0]} images but labels of shape {tuple(run.labels.shape)}", "")
        if run.labels.numel() and not (0 <= int(run.labels.min()) and int(run.labels.max()) < k):
            raise ConfigError(f"labels must lie in [0, {k})", "check the class weights match the dataset")


@dataclass(frozen=True)
class AdapterShape:
    """What the runs of one stack share (kind, block) and their ratios, as (R, 1, 1) tensors."""

    visual: bool
    text: bool
    official: bool
    alpha: torch.Tensor
    beta: torch.Tensor

    @classmethod
    def of(cls, runs: Sequence[RunSpec], device: str) -> AdapterShape:
        a, r = runs[0].adapter, len(runs)
        alpha, beta = ([getattr(run.adapter, k) for run in runs] for k in ("alpha", "beta"))
        as_col = [torch.tensor(x, device=device, dtype=torch.float32).view(r, 1, 1) for x in (alpha, beta)]
        return cls(a.visual, a.text, a.block == "official", *as_col)


def adapter_logits(
    params: dict[str, torch.Tensor], x: torch.Tensor, class_weights: torch.Tensor, scale: float, shape: AdapterShape
) -> torch.Tensor:
    """Every run's logits (R, B, K) for its own inputs x (R, B, D) float32: the CLIP-Adapter head of
    :mod:`cacheclip.fit.adapters` with each run's weights (R, in, out) and ratios (R, 1, 1)."""

    def adapt(z: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
        out = torch.matmul(torch.matmul(z, w1).relu(), w2)
        return out.relu() if shape.official else out

    p, cw = params, class_weights
    f = torch.lerp(x, adapt(x, p["visual.w1"], p["visual.w2"]), shape.alpha) if shape.visual else x
    w = torch.lerp(cw, adapt(cw, p["text.w1"], p["text.w2"]), shape.beta) if shape.text else cw
    return scale * torch.matmul(F.normalize(f, dim=-1), F.normalize(w, dim=-1).transpose(-1, -2))


BestEpoch = Keeper  # per run, the first epoch with the best val score (CoOp's best-val checkpoint)


def top1_percent(preds: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 % of logits (M, K) against labels (M,): the score ``BestEpoch`` compares."""
    return 100.0 * float(preds.argmax(dim=-1).eq(labels.to(preds.device)).sum()) / max(1, len(labels))


def last_epoch_record(epochs: int, reason: str = "") -> dict:
    """The selection record of a run that keeps its last epoch (``--epoch last``, or no val)."""
    return {"rule": "last", "chosen": epochs, **({"reason": reason} if reason else {})}


def train_runs(
    runs: Sequence[RunSpec],
    class_weights: torch.Tensor,
    logit_scale: float,
    cfg: TrainConfig,
    epochs: int,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Train every run for ``epochs`` epochs; one CPU state dict per run, in input order.

    Runs that share N, V, D and adapter kind/reduction/block (see
    :func:`group_runs`) train together in one batched pass; they may differ
    in seed, alpha, beta, features and labels. Other runs form further
    groups, trained one group after another. class_weights (K, D), logit
    scale s. Views may be any float dtype (cast to float32 per epoch),
    labels int. ``progress(done, total)`` counts epochs over all groups.
    """
    return _train_all(runs, None, class_weights, logit_scale, cfg, epochs, device, progress)[0]


def train_runs_best_val(
    runs: Sequence[RunSpec],
    vals: Sequence[tuple[torch.Tensor, torch.Tensor]],
    class_weights: torch.Tensor,
    logit_scale: float,
    cfg: TrainConfig,
    epochs: int,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[dict[str, torch.Tensor]], list[dict]]:
    """As :func:`train_runs`, but each run keeps the first epoch with its best top-1 on its own
    val (features (M, D), labels (M,)), scored on the stacked weights after every epoch. The
    training itself (every random draw and step) is exactly :func:`train_runs`'.
    Returns (states, per run {"rule", "chosen" epoch (1-based), "val_top1" per epoch})."""
    if len(vals) != len(runs):
        raise ConfigError(f"{len(runs)} runs but {len(vals)} val sets", "give one val set per run")
    return _train_all(runs, vals, class_weights, logit_scale, cfg, epochs, device, progress)


def _train_all(runs, vals, class_weights, logit_scale, cfg, epochs, device, progress):
    cfg.validate()
    if not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs must be a positive integer, got {epochs!r}", "")
    _check_runs(runs, class_weights)
    groups = group_runs(runs)
    states: list[dict[str, torch.Tensor]] = [{} for _ in runs]
    records: list[dict] = [last_epoch_record(epochs) for _ in runs]
    for g, members in enumerate(groups):
        tick = None if progress is None else partial(_group_progress, progress, g, len(groups), epochs)
        group = [runs[i] for i in members]
        group_vals = None if vals is None else [vals[i] for i in members]
        trained, kept = _train_group(group, class_weights, logit_scale, cfg, epochs, device, tick, group_vals)
        for i, state, record in zip(members, trained, kept, strict=True):
            states[i], records[i] = state, record
    return states, records


def _train_group(runs, class_weights, logit_scale, cfg, epochs, device, progress, vals=None):
    """train_runs for runs of one shape, in stacks of the trainer (:mod:`cacheclip.fit.trainer`) as
    large as the CPU's cache budget allows (one on a GPU). With ``vals``, each run keeps its first
    best val epoch, else its last. Returns (states, records) in the runs' order."""
    d = runs[0].views.shape[2]
    a = runs[0].adapter
    state_bytes = 3 * 4 * 2 * d * a.hidden_dim(d) * (int(a.visual) + int(a.text))  # weights, gradients, momentum
    samples = Samples.of_views([run.views for run in runs], [run.labels for run in runs], device)  # once

    def train(chunk: Sequence[int], tick) -> list[tuple[dict, dict]]:
        members, part = [runs[i] for i in chunk], None if vals is None else [vals[i] for i in chunk]
        states, records = _train_stack(
            members, samples.subset(chunk), class_weights, logit_scale, cfg, epochs, device, tick, part
        )
        return list(zip(states, records, strict=True))

    flops = 6.0 * batch_plan(runs[0].views.shape[0], cfg.batch_size)[0] * d * max(a.hidden_dim(d), len(class_weights))
    stacks = [list(chunk) for chunk in stack_chunks(len(runs), state_bytes, device, flops)]
    pairs = run_stacks(stacks, train, len(runs), epochs, progress, device, flops)
    return [state for state, _ in pairs], [record for _, record in pairs]


def _group_progress(progress, group: int, groups: int, epochs: int, done: int, total: int) -> None:
    """A group's run-epochs as epochs over every group (the bar moves by epochs, not by runs)."""
    progress(group * epochs + done * epochs // total, groups * epochs)


def _train_stack(runs, samples, class_weights, logit_scale, cfg, epochs, device, progress, vals):
    n, v, d = runs[0].views.shape
    gens = [torch.Generator().manual_seed(run.seed) for run in runs]  # CPU: same draws on any device
    heads = [ClipAdapterHead(run.adapter, d, g).state_dict() for run, g in zip(runs, gens, strict=True)]  # first
    batch, steps = batch_plan(n, cfg.batch_size)
    shape, cw, scale = AdapterShape.of(runs, device), class_weights.to(device, torch.float32), float(logit_scale)
    aug = cfg.views == "aug"
    stack = Stack(
        params={name: torch.stack([head[name] for head in heads]).to(device) for name in heads[0]},
        loss=lambda params, x, y: run_cross_entropy(adapter_logits(params, x, cw, scale, shape), y),
        recipe=Recipe("sgd", momentum=cfg.momentum),
        lrs=[cfg.lr] * len(runs),
        weight_decays=[cfg.weight_decay] * len(runs),
        schedule=lambda i, _peak: epoch_lr(cfg, epochs, i // steps),
        samples=samples,
        blocks=stack_blocks([epoch_rows(n, v, batch, steps, g, draw_views=aug) for g in gens], device),
        step_flops=2.0 * len(runs) * batch * d * max(d // 4, cw.shape[0]),
    )
    keeper = Keeper(len(runs)) if vals is not None else None
    scored = stack_vals(vals, torch.float32, device) if vals is not None else None

    def after_step(i: int, params: dict[str, torch.Tensor]) -> None:
        if (i + 1) % steps:
            return
        if keeper is not None:
            x, y, sizes = scored
            right = adapter_logits(params, x, cw, scale, shape).argmax(-1).eq(y).sum(1)
            keeper.observe((i + 1) // steps, 100.0 * right.cpu().double() / sizes, params)
        if progress is not None:
            progress((i + 1) // steps)

    final = train_stack(stack, epochs * steps, after_step)
    kept = keeper.state if keeper is not None else final
    states = [{k: w[r].detach().cpu().clone() for k, w in kept.items()} for r in range(len(runs))]
    records = [keeper.record(r) if keeper is not None else last_epoch_record(epochs) for r in range(len(runs))]
    return states, records


def predict(
    state: dict[str, torch.Tensor],
    adapter: AdapterConfig,
    features: torch.Tensor,
    class_weights: torch.Tensor,
    logit_scale: float,
    device: str = "cpu",
    batch_size: int = 8192,
) -> torch.Tensor:
    """Logits (M, K) on CPU for features (M, D) under a trained state."""
    head = ClipAdapterHead(adapter, features.shape[1])
    try:
        head.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(
            f"adapter state does not fit {adapter}: {exc}".splitlines()[0],
            "predict with the AdapterConfig the state was trained with",
        ) from exc
    head.to(device).eval()
    with torch.no_grad():
        weights = head.class_embeddings(class_weights.to(device=device, dtype=torch.float32))
        chunks = [
            logits(head.image_embeddings(chunk.to(device=device, dtype=torch.float32)), weights, logit_scale).cpu()
            for chunk in features.split(batch_size)
        ]
    if not chunks:
        return torch.empty(0, class_weights.shape[0])
    return torch.cat(chunks)
