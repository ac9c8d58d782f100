"""One trainer for every gradient-trained method: R runs stacked on a leading dimension.

A method states, for R runs of one shot count (every seed x grid configuration that trains
the same number of steps with the same batch size):

* its parameters, a dict name -> (R, ...) tensor, each run's slice drawn from its own generator;
* its loss: ``loss(params, x (R, B, D), y (R, B)) -> (R,)``, each run's batch-mean loss
  (the trainer sums them, so each run gets exactly the gradient it would get alone);
* its optimiser: an :class:`Recipe` (torch.optim's SGD, Adam or AdamW) with a learning rate
  per run and step and a weight decay per run;
* its batches: per run a stream of row numbers into that run's own sample table
  (:class:`Samples`), drawn from the run's own generator, so a run's batches do not
  depend on which runs share the stack;
* when it scores val (``train_stack``'s ``after_step``/``every``) and which of those states it
  keeps (:class:`Keeper`).

Every step is a fixed number of torch operations whatever R is: one gather, the method's
batched forward, one backward, and torch.optim's update (fused where torch has it) once per
distinct (lr, weight decay) of the stack, on its rows (:class:`StackedParams`): a grid's size,
never one per run. ``tests/test_trainer.py`` checks a stacked run against the same run
trained alone, and counts the dispatched operations for 1 and for many runs.
A per-run lr written in public torch ops instead measured 3-8x slower than the fused update
(its eight passes over the state against one; AMD EPYC, K = 397 and 1000, D = 1024).

Stack size on a CPU (:func:`stack_chunks`): a step streams each run's parameters, gradients
and optimiser state through memory. One run's state at K = 397, D = 1024 (W, its gradient,
Adam's two moments: 6.5 MB) stays in the L3 cache step after step; 36 runs' (230 MB) do not,
and every step then pays main-memory bandwidth on all of it. Stacking pays where the per-op
overhead binds (small K) and costs where the bandwidth does, so runs are stacked up to a state
budget (:data:`CPU_STACK_BYTES`), and a run whose step is long enough for two threads per product
is a stack of its own. Independent stacks train at once on the cores, one thread each
(:func:`run_stacks`); with long steps the few left over after whole rounds of the cores train
after them on every core.
On a GPU every run of a group goes in one stack. docs/benchmarks.md has the measurements.
"""

from __future__ import annotations

import copy
import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch.optim.adam import adam
from torch.optim.adamw import adamw
from torch.optim.sgd import sgd

from cacheclip.errors import ConfigError

OPTIMIZERS = ("sgd", "adam", "adamw")
CPU_STACK_BYTES = 24 << 20  # parameters + gradients + optimiser state of one CPU stack (see stack_chunks)
# a step's largest product from which a run trains as a stack of its own, and the runs that do not
# fill a round of the cores train after the others on every core (run_stacks, threads_for). 3 runs
# of ZS-LP at 397 classes (416 MFLOP a step) on 2 cores: 2 + 1 stacks at once 5.3 s, one run each
# at once then the third on both threads 3.7 s (CLAP 9.2 -> 7.6 s, LP++ 7.0 -> 6.0 s, TaskRes
# 4.4 -> 4.7 s; 6 epochs, 3 interleaved repeats, AMD EPYC, 2026-12-07)
MANY_THREADS_FLOPS = 256e6
PARALLEL_STACKS = True  # independent stacks train at once on a CPU's cores (run_stacks); off: one after another
# a step's products from which a stack is split to train on every core: below, its operations are
# so short that two threads contend for the interpreter more than they compute (TaskRes at 10
# classes: 0.29-0.32 s one stack, 0.39-0.55 s two at once)
PARALLEL_FLOPS = 32e6
T = TypeVar("T")
_LOCAL = threading.local()


# ---------------------------------------------------------------- the optimiser


@dataclass(frozen=True)
class Recipe:
    """An optimiser as torch.optim builds it: SGD (momentum, no dampening, no Nesterov, L2 decay),
    Adam (L2 decay added to the gradient) or AdamW (decoupled decay)."""

    kind: str  # sgd | adam | adamw
    momentum: float = 0.0  # sgd
    betas: tuple[float, float] = (0.9, 0.999)  # adam, adamw
    eps: float = 1e-8  # adam, adamw

    def __post_init__(self) -> None:
        if self.kind not in OPTIMIZERS:
            raise ConfigError(f"unknown optimiser {self.kind!r}", f"use one of: {', '.join(OPTIMIZERS)}")

    def build(self, groups: list[dict], fused: bool = True) -> torch.optim.Optimizer:
        """torch.optim's optimiser over param groups ({"params", "lr", "weight_decay"}), fused where
        this torch and device have it: the reference a stack's update is tested against."""
        if self.kind == "sgd":
            cls, settings = torch.optim.SGD, {"momentum": self.momentum}
        else:
            cls = torch.optim.Adam if self.kind == "adam" else torch.optim.AdamW
            settings = {"betas": tuple(self.betas), "eps": self.eps}
        if fused:
            try:
                return cls(groups, fused=True, **settings)
            except (RuntimeError, TypeError, ValueError):  # no fused kernel for this torch or device
                pass
        return cls(groups, **settings)

    def new_state(self, params: Sequence[torch.Tensor]) -> dict[str, list]:
        """The optimiser state of these tensors, as torch.optim starts it."""
        if self.kind == "sgd":
            return {"momentum": [None] * len(params)}  # created from the first gradient
        zeros = [torch.zeros_like(p) for p in params]
        return {
            "m": zeros,
            "v": [torch.zeros_like(p) for p in params],
            "step": [torch.zeros((), dtype=torch.float32, device=p.device) for p in params],
        }

    def update(self, params, grads, state: dict[str, list], lr: float, weight_decay: float, fused: bool) -> None:
        """torch.optim's own update (its public functional form, the one its optimisers call) of
        ``params`` in place: what ``build(...)``'s optimiser would do with one group at this lr."""
        kw = {"fused": fused, "foreach": False, "maximize": False, "lr": lr, "weight_decay": weight_decay}
        if self.kind == "sgd":
            sgd(params, grads, state["momentum"], momentum=self.momentum, dampening=0.0, nesterov=False, **kw)
            return
        step = adam if self.kind == "adam" else adamw
        b1, b2 = self.betas
        step(
            params,
            grads,
            state["m"],
            state["v"],
            [],
            state["step"],
            amsgrad=False,
            beta1=b1,
            beta2=b2,
            eps=self.eps,
            **kw,
        )

    def fused_on(self, like: torch.Tensor) -> bool:
        """Whether torch has this optimiser's fused kernel for ``like``'s device and dtype."""
        key = (self.kind, like.device.type, like.dtype)
        if key not in _FUSED:
            probe = torch.zeros(1, dtype=like.dtype, device=like.device)
            try:
                self.update([probe], [torch.ones_like(probe)], self.new_state([probe]), 0.0, 0.0, fused=True)
                _FUSED[key] = True
            except (RuntimeError, NotImplementedError, TypeError, ValueError):
                _FUSED[key] = False
        return _FUSED[key]


_FUSED: dict[tuple, bool] = {}


def hyper_groups(lrs: Sequence[float], weight_decays: Sequence[float]) -> list[range]:
    """Runs with equal (lr, weight decay) as consecutive ranges, in run order; equal pairs must be
    adjacent (list runs configuration-major, seed-minor)."""
    pairs = list(zip(lrs, weight_decays, strict=True))
    groups: list[range] = []
    for r, pair in enumerate(pairs):
        if groups and pairs[groups[-1].start] == pair:
            groups[-1] = range(groups[-1].start, r + 1)
        elif pair in pairs[:r]:
            raise ValueError(f"runs with lr, weight decay {pair} are not adjacent: order runs by configuration")
        else:
            groups.append(range(r, r + 1))
    return groups


class StackedParams:
    """R runs' parameters as one (R, ...) leaf per name, updated by torch.optim's own update (its
    public functional form, fused where torch has it) once per (lr, weight decay) group on that
    group's rows, which are views: torch.optim takes one lr per group, so a step makes as many
    updates as the stack has distinct hyperparameters (a grid's size), never one per run.
    One leaf per group instead, concatenated for the loss, spent 40% of a cross-modal step on the
    concatenation and on copying the gradients back apart (K = 100, 18 runs, 6 groups)."""

    def __init__(self, init: dict[str, torch.Tensor], recipe: Recipe, lrs, weight_decays, fused: bool = True):
        self.recipe, self.groups = recipe, hyper_groups(lrs, weight_decays)
        self.peaks = [float(lrs[g.start]) for g in self.groups]
        self.decays = [float(weight_decays[g.start]) for g in self.groups]
        self.leaves = {name: t.detach().clone().requires_grad_(True) for name, t in init.items()}
        self.fused = fused and all(recipe.fused_on(leaf) for leaf in self.leaves.values())
        self.state = [recipe.new_state(self._rows(g)) for g in self.groups]

    def _rows(self, g: range) -> list[torch.Tensor]:
        return [leaf.detach()[g.start : g.stop] for leaf in self.leaves.values()]

    def full(self) -> dict[str, torch.Tensor]:
        """name -> (R, ...) in run order (the leaves the loss reads)."""
        return self.leaves

    def step(self, loss: torch.Tensor, lr: Callable[[float], float]) -> None:
        """Backpropagate ``loss`` and update each group at ``lr(its peak lr)``."""
        for leaf in self.leaves.values():
            leaf.grad = None
        loss.backward()
        with torch.no_grad():
            for g, state, peak, decay in zip(self.groups, self.state, self.peaks, self.decays, strict=True):
                grads = [leaf.grad[g.start : g.stop] for leaf in self.leaves.values()]
                self.recipe.update(self._rows(g), grads, state, lr(peak), decay, self.fused)

    def detached(self) -> dict[str, torch.Tensor]:
        return {n: t.detach() for n, t in self.leaves.items()}


# ---------------------------------------------------------------- the samples


class Samples:
    """Every run's sample table, concatenated: features (rows, D) and labels (rows,), with each
    run's first row. A step's batch is one gather: ``batch(rows (R, B))`` with rows local to each
    run's table. Runs that share a table (the grid entries of one seed) share its rows."""

    def __init__(self, tables: Sequence[tuple[torch.Tensor, torch.Tensor]], owner: Sequence[int], device: str = "cpu"):
        feats = [t[0].reshape(-1, t[0].shape[-1]) for t in tables]
        self.x = torch.cat(feats).to(device) if len(feats) > 1 else feats[0].to(device)
        self.y = torch.cat([t[1].reshape(-1) for t in tables]).to(device=device, dtype=torch.long)
        self.starts = torch.tensor([0] + [f.shape[0] for f in feats]).cumsum(0)[:-1].to(device)
        self.offset = self.starts[torch.as_tensor(list(owner), device=device)].view(-1, 1)  # (R, 1)
        self._out: torch.Tensor | None = None  # the step input, refilled each step

    @classmethod
    def of_views(
        cls,
        views: Sequence[torch.Tensor],
        labels: Sequence[torch.Tensor],
        device: str = "cpu",
        extra: tuple[torch.Tensor, torch.Tensor] | None = None,
        dtype: torch.dtype | None = None,
    ) -> Samples:
        """One table per distinct views tensor (N, V, D) of the runs (runs that share one, e.g. the
        configurations of a seed, share its rows): row i V + j is image i's view j; ``extra`` rows
        (x (E, D), y (E,)) follow in every table (cross-modal's text samples), in ``dtype`` if given."""
        tables, owner, index = [], [], {}
        for v, y in zip(views, labels, strict=True):
            if id(v) not in index:
                index[id(v)] = len(tables)
                x = v.reshape(-1, v.shape[-1]) if dtype is None else v.reshape(-1, v.shape[-1]).to(dtype)
                rows = y.to(torch.long).repeat_interleave(v.shape[1])
                tables.append((x, rows) if extra is None else (torch.cat([x, extra[0]]), torch.cat([rows, extra[1]])))
            owner.append(index[id(v)])
        return cls(tables, owner, device)

    def subset(self, runs: Sequence[int]) -> Samples:
        """The same tables for a stack of some of the runs (their indices, in the stack's order)."""
        part = copy.copy(self)
        part.offset, part._out = self.offset[torch.as_tensor(list(runs), device=self.offset.device)], None
        return part

    def batch(self, rows: torch.Tensor, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """(x (R, B, D) in dtype, y (R, B)) for rows (R, B) into each run's own table. A row -1 pads a
        run's short batch: its label is -1, which :func:`run_cross_entropy` leaves out. x is valid
        until the next call (its buffer is reused)."""
        flat = (rows.clamp(min=0) + self.offset).reshape(-1)
        if self.x.dtype == dtype:  # into the last step's buffer: a fresh one costs page faults each step
            if self._out is None or self._out.shape[0] != flat.numel():
                self._out = self.x.new_empty(flat.numel(), self.x.shape[1])
            x = torch.index_select(self.x, 0, flat, out=self._out)
        else:
            x = self.x.index_select(0, flat).to(dtype)
        y = torch.where(rows < 0, -1, self.y.index_select(0, flat).view(rows.shape))
        return x.view(*rows.shape, -1), y


def run_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each run's mean cross-entropy (R,) over the real rows of its batch: logits (R, B, K), labels
    (R, B) with -1 on padding rows."""
    loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none", ignore_index=-1)
    return loss.view_as(labels).sum(dim=1) / (labels >= 0).sum(dim=1).clamp(min=1)


def epoch_rows(
    n: int, v: int, per_step: int, steps: int, generator: torch.Generator, draw_views: bool = True
) -> Iterator[torch.Tensor]:
    """A run's epochs as Dassl draws them, one (steps, per_step) block of rows i V + j (image i, view
    j) of its table per epoch: ``randint(V, (N,))`` (not drawn when V = 1 or not ``draw_views``: view
    0 then), then ``randperm(N)``, the images past ``steps * per_step`` dropped."""
    while True:
        view = torch.randint(v, (n,), generator=generator) if v > 1 and draw_views else None
        perm = torch.randperm(n, generator=generator)[: steps * per_step]
        yield (perm * v + (view[perm] if view is not None else 0)).view(steps, per_step)


def stack_blocks(streams: Sequence[Iterator[torch.Tensor]], device: str = "cpu") -> Iterator[torch.Tensor]:
    """Endless (S, R, B) blocks of steps from each run's stream of (S, B) blocks (same S and B)."""
    while True:
        yield torch.stack([next(s) for s in streams], dim=1).to(device)


# ---------------------------------------------------------------- the loop


@dataclass
class Stack:
    """R runs of one method ready to train together (run order: configuration-major, seed-minor)."""

    params: dict[str, torch.Tensor]  # name -> (R, ...) initial values, each run's drawn from its generator
    loss: Callable[[dict[str, torch.Tensor], torch.Tensor, torch.Tensor], torch.Tensor]  # (params, x, y) -> (R,)
    recipe: Recipe
    lrs: Sequence[float]  # (R,) each run's peak learning rate
    weight_decays: Sequence[float]  # (R,)
    schedule: Callable[[int, float], float]  # (step, peak lr) -> this step's lr
    samples: Samples
    blocks: Iterator[torch.Tensor]  # (S, R, B) row numbers, block after block
    dtype: torch.dtype = torch.float32  # the features' compute dtype
    fused: bool = True  # torch.optim's fused kernels where they exist (tests compare with the plain ones)
    step_flops: float = 0.0  # FLOPs of a step's largest product, to choose the threads (0: leave them)


def train_stack(
    stack: Stack,
    steps: int,
    after_step: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
    every: Callable[[int], bool] | None = None,
) -> dict[str, torch.Tensor]:
    """Train ``steps`` steps; ``after_step(i, params)`` runs after step i's update (0-based) with
    the (R, ...) parameters, e.g. to score val at a checkpoint: after every step, or only where
    ``every(i)`` holds (gathering a stack's groups into one tensor is a copy). Returns the final
    (R, ...) parameters."""
    params = StackedParams(stack.params, stack.recipe, stack.lrs, stack.weight_decays, stack.fused)
    block, used = None, 0
    chosen = threads_for(stack.step_flops) if stack.step_flops and not getattr(_LOCAL, "parallel", False) else None
    with threads(chosen or torch.get_num_threads()):
        for i in range(steps):
            if block is None or used == block.shape[0]:
                block, used = next(stack.blocks), 0
            x, y = stack.samples.batch(block[used], stack.dtype)
            used += 1
            params.step(stack.loss(params.full(), x, y).sum(), lambda peak, i=i: stack.schedule(i, peak))
            if after_step is not None and (every is None or every(i)):
                after_step(i, params.detached())
    return params.detached()


def stack_vals(
    vals: Sequence[tuple[torch.Tensor, torch.Tensor]], dtype: torch.dtype, device: str, normalize: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x (R, M, D), y (R, M), sizes (R,) float64): each run's val (features (M_r, D), labels), zero-padded
    to the largest with label -1 (never an argmax), so one batched forward scores every run; features
    L2-normalised when ``normalize``."""
    m, d = max(len(labels) for _, labels in vals), vals[0][0].shape[1]
    x = torch.zeros(len(vals), m, d, dtype=dtype, device=device)
    y = torch.full((len(vals), m), -1, dtype=torch.long, device=device)
    for r, (feats, labels) in enumerate(vals):
        f = feats.to(device=device, dtype=dtype)
        x[r, : len(labels)] = F.normalize(f, dim=-1) if normalize else f
        y[r, : len(labels)] = labels.to(device=device, dtype=torch.long)
    return x, y, torch.tensor([max(1, len(labels)) for _, labels in vals], dtype=torch.float64)


class Keeper:
    """Per run, the parameters at the checkpoint with the best val score: ``ties="first"`` keeps the
    earliest of equal scores (a later one must be strictly better: CoOp's best-val checkpoint, the
    cross-modal probe's early stopping), ``"last"`` the latest (LP++'s code)."""

    def __init__(self, runs: int, ties: str = "first"):
        self.ties = ties
        self.best = torch.full((runs,), -math.inf, dtype=torch.float64)
        self.at = torch.zeros(runs, dtype=torch.long)
        self.curves: list[list[float]] = [[] for _ in range(runs)]
        self.state: dict[str, torch.Tensor] = {}

    def observe(self, at: int, scores: torch.Tensor, params: dict[str, torch.Tensor]) -> None:
        """scores (R,) at checkpoint ``at`` (an epoch or iteration number), params name -> (R, ...)."""
        scores = scores.detach().to("cpu", torch.float64)
        better = scores > self.best if self.ties == "first" else scores >= self.best
        for r, score in enumerate(scores.tolist()):
            self.curves[r].append(round(score, 4))
        if not self.state:
            self.state = {k: w.detach().clone() for k, w in params.items()}
        elif bool(better.any()):
            rows = better.nonzero().squeeze(1)
            for k, w in params.items():
                self.state[k][rows.to(w.device)] = w.detach()[rows.to(w.device)]
        self.best = torch.where(better, scores, self.best)
        self.at[better] = at

    def record(self, r: int = 0) -> dict:
        """Run r's choice for its result's selection: the checkpoint kept and every checkpoint's score."""
        return {"rule": "best-val", "chosen": int(self.at[r]), "val_top1": self.curves[r]}


# ---------------------------------------------------------------- schedules


def warmup_cosine(epoch: int, epochs: int, lr: float, warmup_epochs: int, warmup_lr: float) -> float:
    """Dassl's schedule (CoOp, CLIP-Adapter, CLAP, TaskRes): ``CosineAnnealingLR(T_max=epochs)``
    inside a ``ConstantWarmupScheduler`` (WARMUP_RECOUNT=True), stepped per epoch. Traced::

        epoch e < W  : warmup_lr
        epoch e >= W : lr * (1 + cos(pi * (e - W) / T)) / 2

    The cosine restarts its count after the warm-up but keeps T = epochs, so epoch W trains at the
    full lr and the last epoch at ``lr * (1 + cos(pi * (T - 1 - W) / T)) / 2``: it never reaches 0."""
    if epoch < warmup_epochs:
        return warmup_lr
    return lr * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / epochs)) / 2.0


# ---------------------------------------------------------------- stacks and threads


def stack_chunks(runs: int, state_bytes: int, device: str = "cpu", step_flops: float = 0.0) -> list[range]:
    """Consecutive runs that train in one stack: all of them on a GPU; on a CPU as many as keep
    their parameters, gradients and optimiser state within :data:`CPU_STACK_BYTES` (at least one),
    and, when each run's step does ``step_flops`` enough for a core's share to reach
    :data:`PARALLEL_FLOPS`, at least one stack per core (:func:`run_stacks` trains them at once), in
    chunks as even as that allows. A run whose step reaches :data:`MANY_THREADS_FLOPS` is a stack of
    its own: its products are long enough that stacking saves nothing, and ``run_stacks`` can then
    give every core work (3 runs on 2 cores: two at once, then the third on both threads)."""
    if str(device).startswith("cuda") or runs <= 1:
        return [range(runs)]
    count = math.ceil(runs / max(1, CPU_STACK_BYTES // max(1, state_bytes)))
    cores = _cores()
    if step_flops >= MANY_THREADS_FLOPS:  # products long enough for both threads: a run per stack
        count = runs
    elif PARALLEL_STACKS and step_flops * runs / cores >= PARALLEL_FLOPS:
        count = max(count, min(runs, cores))
    sizes = [runs // count + (i < runs % count) for i in range(count)]
    starts = [sum(sizes[:i]) for i in range(count)]
    return [range(s, s + n) for s, n in zip(starts, sizes, strict=True)]


def run_stacks(
    stacks: Sequence[Sequence[int]],
    train: Callable[[Sequence[int], Callable[[int], None] | None], Sequence[T]],
    runs: int,
    length: int,
    progress: Callable[[int, int], None] | None = None,
    device: str = "cpu",
    step_flops: float = 0.0,
) -> list[T]:
    """Train independent stacks (each a list of run indices) with ``train(indices, tick)`` and
    return the runs' results in run order. ``tick(k)`` reports k of ``length`` steps (epochs,
    iterations) done in that stack; ``progress(done, total)`` gets run-steps over every stack.

    On a CPU with several cores, as many stacks train at once as there are cores, each on one
    thread (:data:`PARALLEL_STACKS`): independent stacks keep both cores busy without the per-op
    wait of a second thread inside small products, which stalls outright when another process
    holds a core. When a run's step reaches :data:`MANY_THREADS_FLOPS` (``step_flops``), the stacks
    left over after whole rounds of the cores (fewer than the cores) train after the others, one
    after another on every core. Each stack's result is the same whichever thread trains it."""
    out: list[T | None] = [None] * runs
    lock, done = threading.Lock(), [0] * len(stacks)
    total = length * sum(len(s) for s in stacks)

    def one(k: int) -> Sequence[T]:
        def tick(steps: int) -> None:
            with lock:
                done[k] = steps * len(stacks[k])
                progress(sum(done), total)

        return train(stacks[k], None if progress is None else tick)

    cores = _cores()
    # long steps: the stacks that fill whole rounds of the cores train at once, the rest (fewer than
    # the cores) one after another on every core, rather than leave a core idle (3 runs on 2 cores)
    together = len(stacks) if step_flops < MANY_THREADS_FLOPS else len(stacks) - len(stacks) % cores
    results: list[Sequence[T]] = []
    if PARALLEL_STACKS and together > 1 and cores > 1 and not str(device).startswith("cuda"):
        with threads(1), ThreadPoolExecutor(min(cores, together)) as pool:
            results = list(pool.map(partial(_in_parallel, one), range(together)))
    results += [one(k) for k in range(len(results), len(stacks))]
    for stack, trained in zip(stacks, results, strict=True):
        for r, result in zip(stack, trained, strict=True):
            out[r] = result
    return out  # type: ignore[return-value]


def run_apart(
    count: int,
    work: Callable[[int], T],
    progress: Callable[[int, int], None] | None = None,
    device: str = "cpu",
) -> list[T]:
    """``work(i)`` for i in range(count), each on one torch thread, as many at once as there are cores
    (:func:`run_stacks`, a stack of one each): the same numbers whether or not others run beside it,
    and no two-thread products to stall when another process holds a core. ``progress(done, count)``."""

    def one(indices: Sequence[int], tick: Callable[[int], None] | None) -> list[T]:
        out = []
        for i in indices:
            with threads(1):
                out.append(work(i))
            if tick is not None:
                tick(1)
        return out

    return run_stacks([[i] for i in range(count)], one, count, 1, progress, device)


def _in_parallel(fn: Callable[[int], Sequence[T]], k: int) -> Sequence[T]:
    _LOCAL.parallel = True  # train_stack leaves torch's (process-wide) thread count alone
    try:
        return fn(k)
    finally:
        _LOCAL.parallel = False


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_for(flops_per_op: float) -> int:
    """Torch CPU threads for a stack trained on its own (not beside others) whose largest product
    per step does ``flops_per_op`` FLOPs: every core this process may use from
    :data:`MANY_THREADS_FLOPS`, else one. On short products a second thread's wake-up costs as much
    as it saves, and when another process holds a core each parallel operation waits for it."""
    return _cores() if flops_per_op >= MANY_THREADS_FLOPS else 1


@contextmanager
def threads(n: int) -> Iterator[None]:
    """Run a block with torch's CPU threads set to n, restoring the previous count after."""
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != before:
            torch.set_num_threads(before)
