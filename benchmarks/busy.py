"""A fit alone and beside one busy process, per method: does it collapse when the machine is busy?

Times ``method.train`` for one shot count (3 seeds, 16 shots, the method's defaults at a shortened
length, as benchmarks/grid_projection.py) on synthetic features, first on a quiet machine, then
while another process spins on one core, each in a fresh process with torch's default threads
(all cores) so that the trainer's own thread choice is what is measured. ``--threads N`` forces N
instead (e.g. 2, to see the collapse the thread choice avoids).

    .venv/bin/python benchmarks/busy.py --classes 10,397
    .venv/bin/python benchmarks/busy.py --methods cross-modal --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from baselines import SKIP, cpu_name, fit_context, one_core, resolved_length, synthetic, train_all

from cacheclip.datasets.fewshot import sample_run
from cacheclip.fit.methods import RunPlan, builtin_methods, get_method

SPIN = "import time\nend = time.time() + 3600\nwhile time.time() < end: pass\n"


def one(method: str, classes: int, divide: int) -> float:
    store, data = synthetic(classes, with_val=True)
    m = get_method(method)
    plans = [RunPlan(s, sample_run(data.train_labels, data.val_labels, 16, s), "busy", Path("-")) for s in (1, 2, 3)]

    def ctx_for(config):
        return fit_context(store, data, config, 16, m)

    config = m.config()
    length = resolved_length(m.payload(ctx_for(config)))
    if length is not None:
        config = dataclasses.replace(config, **{length[0]: max(1, length[1] // divide)})
    start = time.perf_counter()
    train_all(m, ctx_for(config), plans, "stacked")
    return time.perf_counter() - start


def timed_child(method: str, classes: int, divide: int, threads: int) -> float:
    cmd = [sys.executable, __file__, "--one", method, str(classes), "--divide", str(divide), "--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=",".join(m for m in builtin_methods() if m not in SKIP + ("proker",)))
    parser.add_argument("--classes", default="10,397")
    parser.add_argument("--divide", type=int, default=20, help="train 1/divide of each method's length")
    parser.add_argument("--threads", type=int, default=0, help="force torch's threads (0: the trainer chooses)")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        one_core(args.threads)
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.divide)))
        return
    print(f"{cpu_name()}, torch {torch.__version__}, threads: {args.threads or 'chosen by the trainer'}")
    print("| classes | method | quiet s | beside a busy process s | ratio |\n|---|---|---|---|---|")
    for classes in (int(c) for c in args.classes.split(",")):
        for method in args.methods.split(","):
            quiet = timed_child(method, classes, args.divide, args.threads)
            spinner = subprocess.Popen([sys.executable, "-c", SPIN])
            try:
                busy = timed_child(method, classes, args.divide, args.threads)
            finally:
                spinner.kill()
            print(f"| {classes} | {method} | {quiet:.2f} | {busy:.2f} | {busy / quiet:.2f} |", flush=True)


if __name__ == "__main__":
    main()
