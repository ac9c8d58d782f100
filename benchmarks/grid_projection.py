"""Projected time of the whole coop11 grid (11 datasets x shots 1/2/4/8/16 x 3 seeds) per method,
from rates measured here: no hand-entered figures.

For each distinct class count of the 11 CoOp datasets (ImageNet 1000; 100 stands for Caltech101,
Flowers102, Food101, Aircraft and UCF101, counted five times) and each shot count, the method's
``train`` runs one shot count's three seeds the way ``fit`` does (every seed x grid configuration
stacked) on synthetic features of that size (benchmarks/baselines.py's, 10 views, a 4-shot val;
ImageNet's as ``--no-val holdout`` draws it). A method that trains for ``epochs`` or ``iters`` is timed at
two short lengths, L1 = L / ``--divide`` and 2 L1, and projected to its full length L as
t(L) = t1 + (t2 - t1) (L - L1) / L1 (its fixed costs counted once); a training-free method is timed
in full. ProKeR (``--methods proker``) is projected per dataset from its real grid, class count and
support size with solve rates measured here (``proker_solvers.py``): see ``proker_grid``.

    .venv/bin/python benchmarks/grid_projection.py                     # every method, as fit runs
    .venv/bin/python benchmarks/grid_projection.py --methods cross-modal,taskres --threads 1
    .venv/bin/python benchmarks/grid_projection.py --mode alone        # one run at a time, as before

Prints, per method, the projected hours of the grid and its largest point, and the CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path

import torch
from baselines import SKIP, cpu_name, fit_context, one_core, resolved_length, synthetic, train_all
from proker_solvers import best_of, solver_seconds

from cacheclip.datasets.fewshot import sample_run
from cacheclip.fit.methods import RunPlan, builtin_methods, get_method
from cacheclip.fit.methods import proker as pk

COOP11 = {  # classes -> how many of the 11 datasets have (about) that many
    1000: 1,  # imagenet
    100: 5,  # caltech101 100, oxford_flowers 102, food101 101, fgvc_aircraft 100, ucf101 101
    37: 1,  # oxford_pets
    196: 1,  # stanford_cars
    397: 1,  # sun397
    47: 1,  # dtd
    10: 1,  # eurosat
}
SHOTS, SEEDS = (1, 2, 4, 8, 16), (1, 2, 3)
COOP11_CLASSES = {  # ProKeR's grids go by dataset name
    "imagenet": 1000, "caltech101": 100, "oxford_flowers": 102, "food101": 101, "fgvc_aircraft": 100,
    "ucf101": 101, "oxford_pets": 37, "stanford_cars": 196, "sun397": 397, "dtd": 47, "eurosat": 10,
}  # fmt: skip


def timed(m, ctx_for, config, plans, mode) -> float:
    start = time.perf_counter()
    train_all(m, ctx_for(config), plans, mode)
    return time.perf_counter() - start


def project(method: str, classes: int, shots: int, divide: int, mode: str) -> tuple[float, str]:
    """Seconds of one shot count (3 seeds) of ``method`` at this size, and how it was obtained. Every
    size has a 4-shot val: ImageNet's grids need ``--no-val holdout`` (the cross-modal probe refuses
    a grid without one), which gives it one."""
    store, data = synthetic(classes, with_val=True, shots=shots)
    m = get_method(method)
    plans = [RunPlan(s, sample_run(data.train_labels, data.val_labels, shots, s), "grid", Path("-")) for s in SEEDS]

    def ctx_for(config):
        return fit_context(store, data, config, shots, m)

    config = m.config()
    length = resolved_length(m.payload(ctx_for(config)))
    if length is None:
        return timed(m, ctx_for, config, plans, mode), "full"
    name, full = length
    short = max(1, full // divide)
    t1 = timed(m, ctx_for, dataclasses.replace(config, **{name: short}), plans, mode)
    t2 = timed(m, ctx_for, dataclasses.replace(config, **{name: 2 * short}), plans, mode)
    return t2 + (t2 - t1) * (full - 2 * short) / short, f"{name} {short}, {2 * short} of {full}"


class SolveRates:
    """ProKeR's float64 solves timed at a few sizes here and interpolated to any (M, K) along their
    operation counts (Cholesky M^3, solves and products M^2 K, the kernel rows x M x D): log-log between
    the two measured sizes around M, along the last two beyond the largest."""

    def __init__(self, sizes=(1000, 2000, 4000, 8000), k: int = 397, d: int = 1024):
        self.k, self.sizes = k, sizes
        self.at = {m: solver_seconds(m, k, eigh=False) for m in sizes}
        for m in sizes:
            x = torch.randn(m, d, dtype=torch.float64)
            self.at[m]["kernel"] = best_of(lambda x=x: pk.kernel(x, x, 2.0), 2) / m**2  # per (row, column)

    def _at(self, what: str, m: int, power: int) -> float:
        """Seconds of ``what`` at M, from the rate per M^power at the measured sizes around M."""
        i = min(max(1, sum(s < m for s in self.sizes)), len(self.sizes) - 1)
        (m0, m1), rates = self.sizes[i - 1 : i + 1], [self.at[s][what] / s**power for s in self.sizes[i - 1 : i + 1]]
        if m <= m0:
            return rates[0] * m**power
        share = min(1.0, math.log(m / m0) / math.log(m1 / m0))  # beyond the largest: its rate
        return rates[0] ** (1 - share) * rates[1] ** share * m**power

    def cholesky(self, m: int) -> float:
        return self._at("cholesky", m, 3)

    def per_rhs(self, what: str, m: int, k: int) -> float:  # "solves" or "product": M^2 K
        return self._at(what, m, 2) * k / self.k

    def kernel(self, rows: int, m: int) -> float:
        return self._at("kernel", m, 0) * rows * m

    def run(self, m: int, k: int, betas: int, lambdas: int, n_val: int) -> float:
        """Seconds of one run: per beta its kernels, then an eigh + a product per lambda, or a Cholesky +
        solves per lambda (``proker.eigh_pays``), and each lambda's val scores."""
        if pk.eigh_pays(m, lambdas):
            solve = self.cholesky(m) * pk.eigh_cost(m) + (lambdas + 1) * self.per_rhs("product", m, k)
        else:
            solve = lambdas * (self.cholesky(m) + self.per_rhs("solves", m, k))
        score = lambdas * self.per_rhs("product", m, k) * n_val / m
        return betas * (self.kernel(m, m) + self.kernel(n_val, m) + solve + score)


def check_model(rates: SolveRates) -> None:
    """The model against ProKeR's real ``train`` timed here (3 seeds, generic grid, 1 view)."""
    for classes, shots in ((100, 16), (397, 4)):
        store, data = synthetic(classes, with_val=True, shots=shots)
        m = get_method("proker")
        plans = [RunPlan(s, sample_run(data.train_labels, data.val_labels, shots, s), "grid", Path("-")) for s in SEEDS]
        ctx = fit_context(store, data, dataclasses.replace(m.config(), views=1), shots, m)
        betas, lambdas = pk.candidate_grid(ctx)
        start = time.perf_counter()
        m.train(ctx, plans)
        measured = time.perf_counter() - start
        model = 3 * rates.run(classes * shots, classes, len(betas), len(lambdas), len(plans[0].split.val))
        print(f"  check: {classes} classes {shots} shots, 1 view: train {measured:.1f} s, model {model:.1f} s")


def proker_grid(rates: SolveRates, views: int | None, imagenet_val: bool) -> None:
    """The coop11 grid of ProKeR at each dataset's official grid and size, from ``SolveRates``: support
    M = classes x shots x views (official views: 10, ImageNet 1), val min(shots, 4) per class; ImageNet
    without val takes ProKeR's fixed values (one solve) unless ``imagenet_val`` (a hold-out val, its
    10 x 10 grid). Points the memory guard would refuse on this machine are named, not counted."""
    have = pk.available_bytes()
    total, worst = 0.0, (0.0, "")
    for name, classes in COOP11_CLASSES.items():
        for shots in SHOTS:
            v = (1 if name == "imagenet" else pk.PROKER_VIEWS) if views is None else max(views, 1)
            m, n_val = classes * shots * v, classes * min(shots, 4)
            if name == "imagenet" and not imagenet_val:
                grid, n_val = (1, 1), 0
            else:
                grid = tuple(spec[2] for spec in pk.PROKER_GRID_SPECS[name])
            need = pk.memory_bytes(m, classes, 1024, n_val, grid[1])
            if have is not None and need > pk.HEADROOM * have:
                print(f"  {name} {shots} shots: M = {m} needs {need / 1e9:.0f} GB, refused here", flush=True)
                continue
            seconds = 3 * rates.run(m, classes, *grid, n_val)
            total += seconds
            worst = max(worst, (seconds, f"{name} {shots} shots (M = {m}, {grid[0]} x {grid[1]})"))
    which = "official views (ImageNet 1)" if views is None else f"{max(views, 1)} view(s)"
    imagenet = "ImageNet hold-out val, its grid" if imagenet_val else "ImageNet fixed values"
    print(f"proker ({which}, {imagenet}) {total / 3600:7.2f} h   largest point: {worst[0] / 60:6.1f} min at {worst[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=",".join(m for m in builtin_methods() if m not in SKIP))
    parser.add_argument("--divide", type=int, default=50, help="time 1/divide and 2/divide of each length")
    parser.add_argument("--mode", default="stacked", choices=("stacked", "alone"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default 0: torch's, as fit runs)")
    parser.add_argument("--proker-views", default="1,official", help="ProKeR support views per image to project")
    parser.add_argument("--classes", default=",".join(map(str, COOP11)), help="only these class counts")
    args = parser.parse_args()
    if args.threads:
        one_core(args.threads)
    print(f"{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, mode {args.mode}")
    for method in args.methods.split(","):
        if method == "proker":
            rates = SolveRates()
            check_model(rates)
            for views in args.proker_views.split(","):
                for imagenet_val in (False, True):
                    proker_grid(rates, None if views == "official" else int(views), imagenet_val)
            continue
        project(method, 10, 1, args.divide, args.mode)  # the process's one-time costs, not counted
        total, worst = 0.0, (0.0, "")
        for classes, count in ((int(c), COOP11[int(c)]) for c in args.classes.split(",")):
            for shots in SHOTS:
                try:
                    seconds, how = project(method, classes, shots, args.divide, args.mode)
                except Exception as e:  # e.g. ProKeR's memory guard: name it, count nothing
                    print(f"  {method} {classes} classes {shots} shots: {type(e).__name__}: {e}", flush=True)
                    continue
                total += count * seconds
                worst = max(worst, (seconds, f"{classes} classes {shots} shots ({how})"))
        print(f"{method:14s} {total / 3600:7.2f} h   largest point: {worst[0] / 60:6.1f} min at {worst[1]}", flush=True)


if __name__ == "__main__":
    main()
