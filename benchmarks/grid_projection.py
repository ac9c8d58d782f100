"""Projected time of the whole coop11 grid (11 datasets x shots 1/2/4/8/16 x 3 seeds) per method,
from rates measured here: no hand-entered figures.

For each distinct class count of the 11 CoOp datasets (ImageNet 1000; 100 stands for Caltech101,
Flowers102, Food101, Aircraft and UCF101, counted five times) and each shot count, the method's
``train`` runs one shot count's three seeds the way ``fit`` does (every seed x grid configuration
stacked) on synthetic features of that size (benchmarks/baselines.py's, 10 views, a 4-shot val;
ImageNet's as ``--no-val holdout`` draws it). A method that trains for ``epochs`` or ``iters`` is timed at
two short lengths, L1 = L / ``--divide`` and 2 L1, and projected to its full length L as
t(L) = t1 + (t2 - t1) (L - L1) / L1 (its fixed costs counted once); a training-free method is timed
in full. ProKeR is timed in full up to ``--proker-max`` train images and beyond that projected
with the M^3 of its kernel solves from the largest size measured.

    .venv/bin/python benchmarks/grid_projection.py                     # every method, as fit runs
    .venv/bin/python benchmarks/grid_projection.py --methods cross-modal,taskres --threads 1
    .venv/bin/python benchmarks/grid_projection.py --mode alone        # one run at a time, as before

Prints, per method, the projected hours of the grid and its largest point, and the CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch
from baselines import SKIP, cpu_name, fit_context, one_core, resolved_length, synthetic, train_all

from cacheclip.datasets.fewshot import sample_run
from cacheclip.fit.methods import RunPlan, builtin_methods, get_method

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


def timed(m, ctx_for, config, plans, mode) -> float:
    start = time.perf_counter()
    train_all(m, ctx_for(config), plans, mode)
    return time.perf_counter() - start


def project(method: str, classes: int, shots: int, divide: int, mode: str, proker_max: int) -> tuple[float, str]:
    """Seconds of one shot count (3 seeds) of ``method`` at this size, and how it was obtained. Every
    size has a 4-shot val: ImageNet's grids need ``--no-val holdout`` (the cross-modal probe refuses
    a grid without one), which gives it one."""
    store, data = synthetic(classes, with_val=True, shots=shots)
    m = get_method(method)
    plans = [RunPlan(s, sample_run(data.train_labels, data.val_labels, shots, s), "grid", Path("-")) for s in SEEDS]

    def ctx_for(config):
        return fit_context(store, data, config, shots, m)

    config = m.config()
    if method == "proker" and len(data.train_labels) > proker_max:
        return -1.0, "projected"
    length = resolved_length(m.payload(ctx_for(config)))
    if length is None:
        return timed(m, ctx_for, config, plans, mode), "full"
    name, full = length
    short = max(1, full // divide)
    t1 = timed(m, ctx_for, dataclasses.replace(config, **{name: short}), plans, mode)
    t2 = timed(m, ctx_for, dataclasses.replace(config, **{name: 2 * short}), plans, mode)
    return t2 + (t2 - t1) * (full - 2 * short) / short, f"{name} {short}, {2 * short} of {full}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=",".join(m for m in builtin_methods() if m not in SKIP))
    parser.add_argument("--divide", type=int, default=50, help="time 1/divide and 2/divide of each length")
    parser.add_argument("--mode", default="stacked", choices=("stacked", "alone"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default 0: torch's, as fit runs)")
    parser.add_argument("--proker-max", type=int, default=3200, help="largest ProKeR train set timed in full")
    parser.add_argument("--classes", default=",".join(map(str, COOP11)), help="only these class counts")
    args = parser.parse_args()
    if args.threads:
        one_core(args.threads)
    print(f"{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, mode {args.mode}")
    for method in args.methods.split(","):
        project(method, 10, 1, args.divide, args.mode, args.proker_max)  # the process's one-time costs, not counted
        total, worst, measured = 0.0, (0.0, ""), {}
        for classes, count in ((int(c), COOP11[int(c)]) for c in args.classes.split(",")):
            for shots in SHOTS:
                try:
                    seconds, how = project(method, classes, shots, args.divide, args.mode, args.proker_max)
                except Exception as e:  # e.g. ProKeR's memory guard: name it, count nothing
                    print(f"  {method} {classes} classes {shots} shots: {type(e).__name__}: {e}", flush=True)
                    continue
                if seconds < 0:  # ProKeR beyond what is timed: M^3 from the largest size measured
                    n0, t0 = max(measured.items())
                    seconds, how = t0 * (classes * shots / n0) ** 3, f"M^3 from {n0} images"
                else:
                    measured[classes * shots] = seconds
                total += count * seconds
                worst = max(worst, (seconds, f"{classes} classes {shots} shots ({how})"))
        print(f"{method:14s} {total / 3600:7.2f} h   largest point: {worst[0] / 60:6.1f} min at {worst[1]}", flush=True)


if __name__ == "__main__":
    main()
