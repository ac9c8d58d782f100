"""The cross-modal probe's floor: the matrix products it executes per iteration, and what they cost at
the matmul rate of this process.

Counts (torch's FlopCounterMode) one shot count's products, every seed x configuration stacked as
``fit`` trains them, at 100 and 200 iterations: the difference is 100 iterations with one val
evaluation, the probe's own ratio. Prints the products per iteration and per shot count (12,800
iterations) and a 2048^3 float32 matmul's rate on 1 thread and on every core, in the same process.

    .venv/bin/python benchmarks/cross_modal_floor.py --classes 100,1000
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch
from baselines import cpu_name, fit_context, matmul_gflops, synthetic
from torch.utils.flop_counter import FlopCounterMode

from cacheclip.datasets.fewshot import sample_run
from cacheclip.fit import trainer
from cacheclip.fit.methods import RunPlan, get_method


def products(classes: int, shots: int, iters: int) -> float:
    store, data = synthetic(classes, with_val=True, shots=shots)
    m = get_method("cross-modal")
    splits = [(s, sample_run(data.train_labels, data.val_labels, shots, s)) for s in (1, 2, 3)]
    plans = [RunPlan(seed, split, "floor", Path("-")) for seed, split in splits]
    config = dataclasses.replace(m.config(), iters=iters)
    trainer.PARALLEL_STACKS = False  # the counter follows this thread only
    try:
        with FlopCounterMode(display=False) as counter:
            m.train(fit_context(store, data, config, shots, m), plans)
    finally:
        trainer.PARALLEL_STACKS = True
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", default="100,1000")
    parser.add_argument("--shots", type=int, default=16)
    args = parser.parse_args()
    cores = torch.get_num_threads()
    torch.set_num_threads(1)
    one = matmul_gflops()
    torch.set_num_threads(cores)
    every = matmul_gflops()
    print(f"{cpu_name()}, torch {torch.__version__}: 2048^3 matmul {one:.0f} GFLOP/s on 1 thread,", end=" ")
    print(f"{every:.0f} on {cores}")
    for classes in map(int, args.classes.split(",")):
        per_iter = (products(classes, args.shots, 200) - products(classes, args.shots, 100)) / 100
        shot_count = per_iter * get_method("cross-modal").config().iters
        print(
            f"{classes} classes, {args.shots} shots: {per_iter / 1e9:.2f} GFLOP per iteration (36 runs, val included), "
            f"{shot_count / 1e12:.1f} TFLOP per shot count: {shot_count / every / 1e9 / 60:.1f} min at the matmul rate"
        )


if __name__ == "__main__":
    main()
