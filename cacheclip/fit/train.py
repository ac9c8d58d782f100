"""Train CLIP-Adapter on cached features, many runs at once.

Tensors in, state dicts out: this module never sees a store, a split or a
file. ``train_runs`` stacks the weights of R runs into ``(R, D, H)`` tensors
and trains them together with batched matmuls, by autograd and torch.optim.SGD
(fused where it exists; no DataLoader: each step's inputs are one
``index_select`` from the cached views per distinct views tensor).
A hand-written forward/backward with torch's private fused SGD kernel was
1.36-1.47x faster for one run but only 1.14-1.24x for 12 runs batched
(benchmarks/fit.py, same process, AMD EPYC, 2 threads): below the 1.3x that
would pay for its complexity, so autograd it is.
The result equals training each run alone up to float rounding
(tests/test_train.py checks both this and the gradients against a per-run model).

Cost model (CPU, D = 1024, batch 32): a step is bound as much by moving the
weights (w1, w2, their momentum and gradients: ~12 MB per run per step,
which does not fit a 2 MB L2) as by its ~85 MFLOP, so batching runs helps
mostly by sharing the per-op overhead; benchmarks/fit.py measures it.
Memory: beyond the views, one (R, B, D) step input and the (S, R, B) row numbers.

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

import torch
import torch.nn.functional as F

from cacheclip.errors import ConfigError
from cacheclip.fit.adapters import AdapterConfig, ClipAdapterHead, logits

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


def lr_per_epoch(cfg: TrainConfig, epochs: int) -> list[float]:
    """The learning rate each epoch trains with; ``len == epochs``.

    Dassl (CoOp's trainer) wraps ``CosineAnnealingLR(T_max=epochs)`` in a
    ``ConstantWarmupScheduler`` (WARMUP_RECOUNT=True) and steps it once at
    the end of every epoch. Tracing the two schedulers gives, with
    W = warmup_epochs and T = epochs::

        epoch e < W  : warmup_lr
        epoch e >= W : lr * (1 + cos(pi * (e - W) / T)) / 2

    The cosine restarts its count after the warm-up but keeps T = epochs,
    so epoch W trains at the full lr and the last epoch (e = T - 1) at
    ``lr * (1 + cos(pi * (T - 1 - W) / T)) / 2``: the cosine never reaches
    zero. E.g. T = 5, W = 1: [1e-5, 2e-3, 1.809e-3, 1.309e-3, 6.91e-4].
    """
    w = cfg.warmup_epochs
    return [
        cfg.warmup_lr if e < w else cfg.lr * (1.0 + math.cos(math.pi * (e - w) / epochs)) / 2.0 for e in range(epochs)
    ]


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


class StackedTrainer:
    """R runs' weights as (R, ., .) tensors, one step for all of them by autograd and
    torch.optim.SGD (fused where this torch has it). The loss is the sum over runs of each run's
    batch-mean cross-entropy, so each run gets its own gradient, exactly as if trained alone."""

    def __init__(self, runs, gens, class_weights, logit_scale, cfg, device):
        config = runs[0].adapter
        d, r = class_weights.shape[1], len(runs)
        self.official, self.visual, self.text = config.block == "official", config.visual, config.text
        states = [ClipAdapterHead(run.adapter, d, g).state_dict() for run, g in zip(runs, gens, strict=True)]
        self.params = {  # (R, in, out), drawn per run from its own generator
            name: torch.stack([state[name] for state in states]).to(device).requires_grad_(True) for name in states[0]
        }
        self.alpha = torch.tensor([run.adapter.alpha for run in runs], device=device).view(r, 1, 1)
        self.beta = torch.tensor([run.adapter.beta for run in runs], device=device).view(r, 1, 1)
        self.scale = float(logit_scale)
        self.cw = class_weights.to(device=device, dtype=torch.float32)  # (K, D) raw
        settings = {"lr": cfg.lr, "momentum": cfg.momentum, "weight_decay": cfg.weight_decay}
        try:  # the fused one-pass update where this torch and device have it
            self.opt = torch.optim.SGD(list(self.params.values()), fused=True, **settings)
        except (RuntimeError, TypeError):
            self.opt = torch.optim.SGD(list(self.params.values()), **settings)

    def _adapt(self, x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
        out = torch.matmul(torch.matmul(x, w1).relu(), w2)
        return out.relu() if self.official else out

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Every run's logits (R, B, K) for its own inputs x (R, B, D) float32."""
        p = self.params
        f = torch.lerp(x, self._adapt(x, p["visual.w1"], p["visual.w2"]), self.alpha) if self.visual else x
        w = torch.lerp(self.cw, self._adapt(self.cw, p["text.w1"], p["text.w2"]), self.beta) if self.text else self.cw
        return self.scale * torch.matmul(F.normalize(f, dim=-1), F.normalize(w, dim=-1).transpose(-1, -2))

    def correct(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Right top-1 answers per run (R,) on x (R, M, D), y (R, M) (padding rows labelled -1)."""
        with torch.no_grad():
            return self.logits(x).argmax(dim=-1).eq(y).sum(dim=1)

    def step(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> None:
        """One SGD step on x (R, B, D) float32, y (R, B) int64."""
        z = self.logits(x)  # (R, B, K)
        loss = F.cross_entropy(z.flatten(0, 1), y.flatten(), reduction="none").view_as(y).mean(1).sum()
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def states(self) -> list[dict[str, torch.Tensor]]:
        r = next(iter(self.params.values())).shape[0]
        return [{k: w[i].detach().cpu().clone() for k, w in self.params.items()} for i in range(r)]


class BestEpoch:
    """Per run of a stack, the weights of the FIRST epoch with the highest val score: a later
    epoch replaces the kept one only when strictly better (CoOp's best-val checkpoint rule).
    Shared by every method trained by epochs (R = 1 for a single run)."""

    def __init__(self, runs: int):
        self.best = torch.full((runs,), -math.inf, dtype=torch.float64)
        self.epoch = torch.zeros(runs, dtype=torch.long)
        self.curves: list[list[float]] = [[] for _ in range(runs)]
        self.state: dict[str, torch.Tensor] = {}

    def observe(self, epoch: int, scores: torch.Tensor, state: dict[str, torch.Tensor]) -> None:
        """After ``epoch`` (1-based): scores (R,) (val top-1 %), state name -> (R, ...) weights."""
        scores = scores.detach().to("cpu", torch.float64)
        better = scores > self.best
        for r, score in enumerate(scores.tolist()):
            self.curves[r].append(round(score, 4))
        if not self.state:
            self.state = {k: w.detach().clone() for k, w in state.items()}
        elif bool(better.any()):
            for k, w in state.items():
                rows = better.nonzero().squeeze(1).to(w.device)
                self.state[k][rows] = w.detach()[rows]
        self.best = torch.where(better, scores, self.best)
        self.epoch[better] = epoch

    def record(self, r: int = 0) -> dict:
        """Run r's choice for its result's selection: the epoch kept and every epoch's val top-1."""
        return {"rule": "best-val", "chosen": int(self.epoch[r]), "val_top1": self.curves[r]}


def top1_percent(preds: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 % of logits (M, K) against labels (M,): the score ``BestEpoch`` compares."""
    return 100.0 * float(preds.argmax(dim=-1).eq(labels.to(preds.device)).sum()) / max(1, len(labels))


def last_epoch_record(epochs: int, reason: str = "") -> dict:
    """The selection record of a run that keeps its last epoch (``--epoch last``, or no val)."""
    return {"rule": "last", "chosen": epochs, **({"reason": reason} if reason else {})}


def _epoch_order(labels, v, gens, cfg, plan, rows, y) -> None:
    """Fill rows (S, R, B) with each run's shuffled epoch as row numbers into its (N * V, D)
    views, and y (S, R, B) with the matching labels (all on CPU: small)."""
    batch, steps = plan
    n = labels[0].shape[0]
    for r, gen in enumerate(gens):
        draw = torch.randint(v, (n,), generator=gen) if v > 1 and cfg.views == "aug" else None
        perm = torch.randperm(n, generator=gen)[: steps * batch]
        rows[:, r] = (perm * v + (draw[perm] if draw is not None else 0)).view(steps, batch)
        y[:, r] = labels[r][perm].view(steps, batch)


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
        tick = None
        if progress is not None:

            def tick(epoch: int, _: int, offset: int = g * epochs) -> None:
                progress(offset + epoch, len(groups) * epochs)

        group = [runs[i] for i in members]
        group_vals = None if vals is None else [vals[i] for i in members]
        trained, kept = _train_group(group, class_weights, logit_scale, cfg, epochs, device, tick, group_vals)
        for i, state, record in zip(members, trained, kept, strict=True):
            states[i], records[i] = state, record
    return states, records


def _stack_vals(vals, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x (R, M, D) float32, y (R, M), sizes (R,)): each run's val, zero-padded to the largest with
    labels -1 (never an argmax) so one batched forward scores every run."""
    m = max(len(v[1]) for v in vals)
    d = vals[0][0].shape[1]
    x = torch.zeros(len(vals), m, d, device=device)
    y = torch.full((len(vals), m), -1, dtype=torch.int64, device=device)
    for r, (feats, labels) in enumerate(vals):
        x[r, : len(labels)] = feats.to(device=device, dtype=torch.float32)
        y[r, : len(labels)] = labels.to(device=device, dtype=torch.int64)
    return x, y, torch.tensor([max(1, len(v[1])) for v in vals], dtype=torch.float64)


def _train_group(runs, class_weights, logit_scale, cfg, epochs, device, progress, vals=None):
    """train_runs for runs of one shape: one stacked trainer, one pass (with ``vals``: the
    first best val epoch kept per run, else the last epoch).

    Each step gathers its (R, B, D) input straight from the runs' cached views, one
    ``index_select`` per distinct views tensor (runs that share one, e.g. the alphas of a
    seed, are trained side by side for that), so no epoch-sized copy is ever held.
    """
    n, v, d = runs[0].views.shape
    sharing: dict[int, list[int]] = {}  # id of a views tensor -> the runs that use it
    for i, run in enumerate(runs):
        sharing.setdefault(id(run.views), []).append(i)
    order = [i for members in sharing.values() for i in members]
    sources = []  # (views (N * V, D) on the device, first run, end run) per distinct views tensor
    for members in sharing.values():
        start = sources[-1][2] if sources else 0
        sources.append((runs[members[0]].views.to(device).reshape(n * v, d), start, start + len(members)))
    runs = [runs[i] for i in order]
    keeper = scored = None
    if vals is not None:
        keeper, scored = BestEpoch(len(runs)), _stack_vals([vals[i] for i in order], device)
    gens = [torch.Generator().manual_seed(run.seed) for run in runs]  # CPU: same draws on any device
    trainer = StackedTrainer(runs, gens, class_weights, logit_scale, cfg, device)  # init draws first
    plan = batch_plan(n, cfg.batch_size)
    labels = [run.labels.to(dtype=torch.int64) for run in runs]
    rows = torch.empty(plan[1], len(runs), plan[0], dtype=torch.int64)  # (S, R, B)
    y = torch.empty(plan[1], len(runs), plan[0], dtype=torch.int64)
    x = torch.empty(len(runs), plan[0], d, device=device)  # this step's input, refilled each step
    for epoch, lr in enumerate(lr_per_epoch(cfg, epochs)):
        _epoch_order(labels, v, gens, cfg, plan, rows, y)
        rows_dev, y_dev = rows.to(device), y.to(device)
        for i in range(plan[1]):
            for views, r0, r1 in sources:
                _gather(views, rows_dev[i, r0:r1].reshape(-1), x[r0:r1].view(-1, d))
            trainer.step(x, y_dev[i], lr)
        if keeper is not None:
            val_x, val_y, sizes = scored
            keeper.observe(epoch + 1, 100.0 * trainer.correct(val_x, val_y).cpu().double() / sizes, trainer.params)
        if progress is not None:
            progress(epoch + 1, epochs)
    if keeper is not None:
        trainer.params = keeper.state
    states: list[dict[str, torch.Tensor]] = [{} for _ in runs]
    records: list[dict] = [last_epoch_record(epochs) for _ in runs]
    for r, (state, i) in enumerate(zip(trainer.states(), order, strict=False)):  # back to the caller's order
        states[i] = state
        if keeper is not None:
            records[i] = keeper.record(r)
    return states, records


def _gather(source: torch.Tensor, index: torch.Tensor, out: torch.Tensor) -> None:
    """out = source[index], cast to out's dtype (the views may be stored as float16)."""
    if source.dtype == out.dtype:
        torch.index_select(source, 0, index, out=out)
    else:
        out.copy_(source.index_select(0, index))


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
