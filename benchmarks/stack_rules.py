"""The trainer's rules for placing stacks on a CPU's cores, compared in one process, interleaved.

For each method: one shot count's 3 seeds (every grid configuration) on synthetic features of
``--classes`` classes (benchmarks/baselines.py's), ``--epochs`` epochs, under three rules, each
repeated ``--repeats`` times in turn after a warm-up run:

- ``parallel``: every stack at once on the cores, one thread each (the rule before 59761d0);
- ``leftover-wide``: from 256 MFLOP a step, whole rounds of the cores at once, the stacks left over
  after them on every core (the rule now, ``trainer.MANY_THREADS_FLOPS``);
- ``one-at-a-time``: every stack after the other on every core.

    .venv/bin/python benchmarks/stack_rules.py --classes 397 --methods zs-lp,clap,lp++,taskres

Prints seconds per repeat for each rule, and the CPU. Only ratios on a quiet machine mean anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path

from baselines import SEEDS, SHOTS, cpu_name, fit_context, resolved_length, sample_run, synthetic, train_all

from cacheclip.fit import trainer
from cacheclip.fit.methods import RunPlan, get_method

RULES = {  # rule -> (PARALLEL_STACKS, MANY_THREADS_FLOPS)
    "parallel": (True, math.inf),
    "leftover-wide": (True, 256e6),
    "one-at-a-time": (False, 0.0),
}


def timed(method: str, store, data, epochs: int, rule: str) -> float:
    trainer.PARALLEL_STACKS, trainer.MANY_THREADS_FLOPS = RULES[rule]
    m = get_method(method)
    plans = [RunPlan(s, sample_run(data.train_labels, data.val_labels, SHOTS, s), "bench", Path("-")) for s in SEEDS]
    config = m.config()
    length = resolved_length(m.payload(fit_context(store, data, config, SHOTS, m)))
    if length is not None:
        config = dataclasses.replace(config, **{length[0]: epochs})
    start = time.perf_counter()
    train_all(m, fit_context(store, data, config, SHOTS, m), plans, "stacked")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default="zs-lp,clap,lp++,taskres")
    parser.add_argument("--classes", type=int, default=397)
    parser.add_argument("--epochs", type=int, default=6, help="epochs (or iterations) of each timed fit")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    store, data = synthetic(args.classes, True)
    print(f"{cpu_name()}, {args.classes} classes, {args.epochs} epochs, {len(SEEDS)} seeds", flush=True)
    before = (trainer.PARALLEL_STACKS, trainer.MANY_THREADS_FLOPS)
    for method in args.methods.split(","):
        timed(method, store, data, args.epochs, "parallel")  # warm-up: the process's one-time costs
        seconds = {rule: [] for rule in RULES}
        for _ in range(args.repeats):
            for rule in RULES:
                seconds[rule].append(timed(method, store, data, args.epochs, rule))
        cells = "  ".join(f"{rule} {' '.join(f'{s:.2f}' for s in values)}" for rule, values in seconds.items())
        print(f"{method:14s} {cells}", flush=True)
    trainer.PARALLEL_STACKS, trainer.MANY_THREADS_FLOPS = before


if __name__ == "__main__":
    main()
