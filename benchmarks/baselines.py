"""Seconds, GFLOP/s and peak memory per run of every registered method on synthetic CLIP-like
features (16 shots, D = 1024, 10 cached views), the runs of a shot count stacked and one at a time.

Times ``method.train`` for one shot count's three seeds (1, 2, 3) through the real ``FitContext``
over an in-memory store: training plus selection on val, no file I/O, no test evaluation.
``stacked`` is ``fit``'s way (every seed x grid configuration in the trainer's stacks);
``alone`` trains one (seed, configuration) after another (the trainer's stacks of one run, one
seed per call); ``before`` runs the code of another checkout (``--before DIR``, e.g. a git worktree
of the commit before the stacked trainer) one seed per call, in the same benchmark run.
10, 100 and 397 classes have a 4-shot val (the selection grids are searched); 1000 classes has
none, like ImageNet (fixed hyperparameters), unless ``--val-at-1000``. Each (method, classes,
mode) runs in its own process, so its peak memory (RSS above the process after the data was
built) is its own.

GFLOP/s counts the matrix products the run executes (torch's FlopCounterMode over a second run of
the measured length), divided by the seconds; ``vs mm`` divides that by a
2048^3 float32 matmul timed in the same process with the same threads.

    .venv/bin/python benchmarks/baselines.py                    # every method but zero-shot
    .venv/bin/python benchmarks/baselines.py --methods gda,proker --classes 397
    .venv/bin/python benchmarks/baselines.py --full             # every epoch measured everywhere
    .venv/bin/python benchmarks/baselines.py --threads 1        # one torch thread (and stacks one at a time)

A method with an ``epochs`` or ``iters`` setting is timed at two short lengths, L1 = 1/40 of its
length L and 2 L1 (after a discarded run that pays the process's one-time costs), and projected as
t2 + (t2 - t1) (L - 2 L1) / L1, its fixed costs counted once (marked ~); FLOPs the same way;
``--full`` times the whole length. The table also
gives each method's top-1 on a synthetic test split (10 per class) beside zero-shot's (seed 1; after
2 L1 when shortened: a check that it runs, not of its accuracy), and the CPU it ran on.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from cacheclip.datasets.fewshot import sample_run
from cacheclip.fit import methods as registry
from cacheclip.fit.methods import FitContext, FitData, RunPlan, get_method
from cacheclip.fit.methods.base import zero_shot_predictor
from cacheclip.fit.metrics import top1

SHOTS, DIM, VIEWS, VAL_SHOTS, TEST_SHOTS, TEMPLATES = 16, 1024, 10, 4, 10, 7
SEEDS = (1, 2, 3)
SKIP = ("zero-shot",)  # nothing to time
LENGTHS = ("epochs", "iters")  # the settings that set how long a trained method trains


class MemoryStore:
    """The part of FeatureStore that FitContext uses, over arrays."""

    path = Path("memory.h5")

    def __init__(self, splits: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]]):
        self.splits = splits

    def read(self, split, indices=None, *, aug=False):
        feats, labels, views = self.splits[split]
        idx = np.arange(len(labels)) if indices is None else np.asarray(indices)
        return feats[idx], labels[idx], views[idx] if aug and views is not None else None


# the built-in methods (an installed plugin is not ours to time); --before code may predate the name
BUILTIN = getattr(registry, "builtin_methods", registry.list_methods)()


def synthetic(classes: int, with_val: bool, seed: int = 0, shots: int = SHOTS) -> tuple[MemoryStore, FitData]:
    """Clusters around a shared direction (cosines high, as CLIP's), raw norms varied, 10
    augmented views per train image; text weights = centres + noise (7 templates). At 397
    classes zero-shot gets about 50% and a nearest-class-mean of 16 shots about 64%."""
    rng = np.random.default_rng(seed)
    common = rng.standard_normal(DIM, dtype=np.float32)
    centers = common + 0.7 * rng.standard_normal((classes, DIM), dtype=np.float32)

    def draw(n: int):
        labels = np.repeat(np.arange(classes), n)
        feats = centers[labels] + 3.9 * rng.standard_normal((len(labels), DIM), dtype=np.float32)
        return feats * rng.uniform(0.5, 2, (len(labels), 1)).astype(np.float32), labels

    train, train_labels = draw(shots)
    views = train[:, None] + 1.5 * rng.standard_normal((len(train), VIEWS, DIM), dtype=np.float32)
    val, val_labels = draw(VAL_SHOTS) if with_val else (np.zeros((0, DIM), np.float32), np.zeros(0, np.int64))
    test, test_labels = draw(TEST_SHOTS)
    per_template = centers + 1.1 * rng.standard_normal((TEMPLATES, classes, DIM), dtype=np.float32)
    text = torch.nn.functional.normalize(torch.from_numpy(per_template), dim=-1).mean(0)
    store = MemoryStore(
        {"train": (train, train_labels, views), "val": (val, val_labels, None), "test": (test, test_labels, None)}
    )
    data = FitData(
        dataset=f"synthetic{classes}",
        store=store.path,
        attrs={"aug_scale": "[0.08, 1.0]", "templates_spec": "imagenet7"},
        classnames=[f"c{k}" for k in range(classes)],
        class_weights=torch.nn.functional.normalize(text, dim=-1),
        classifier=f"ensemble of {TEMPLATES} templates",
        per_template=torch.from_numpy(per_template),
        templates=[f"template {t} of a {{}}." for t in range(TEMPLATES)],
        logit_scale=100.0,
        train_labels=train_labels.tolist(),
        val_labels=val_labels.tolist(),
        train_paths=[f"t{i}" for i in range(len(train_labels))],
        val_paths=[f"v{i}" for i in range(len(val_labels))],
        aug_views=VIEWS,
    )
    return store, data


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def resolved_length(payload: dict) -> tuple[str, int] | None:
    """(setting, value) of the first ``epochs`` or ``iters`` in a method's resolved settings."""
    for key, value in payload.items():
        if key in LENGTHS and isinstance(value, int):
            return key, value
        if isinstance(value, dict) and (found := resolved_length(value)) is not None:
            return found
    return None


def train_all(m, ctx: FitContext, plans: list[RunPlan], mode: str):
    """``method.train`` as fit calls it (stacked); one seed per call in stacks of one run (alone);
    one seed per call of the code at ``--before`` (before)."""
    if mode == "stacked":
        return m.train(ctx, plans)
    if mode == "alone":
        from cacheclip.fit import trainer

        trainer.CPU_STACK_BYTES, trainer.PARALLEL_STACKS = 0, False  # every stack one run, one after another
    return [t for plan in plans for t in m.train(ctx, [plan])]


def fit_context(store, data, config, shots: int, m) -> FitContext:
    """The method's view of a shot count (``method=`` where this version of FitContext takes it)."""
    extra = {"method": m} if "method" in inspect.signature(FitContext).parameters else {}
    return FitContext(store, data, config, shots, selection="val" if data.val_labels else "none", **extra)


def one_core(threads: int) -> None:
    """torch's threads; with 1, the trainer's stacks also train one after another (one core)."""
    torch.set_num_threads(threads)
    if threads == 1:
        try:
            from cacheclip.fit import trainer

            trainer.PARALLEL_STACKS = False
        except ImportError:  # --before code older than the trainer
            pass


def matmul_gflops() -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * 2048**3 / best / 1e9


def measure(method: str, classes: int, with_val: bool, full: bool, mode: str) -> dict:
    """One shot count (3 seeds) of ``method`` (default settings; shorter when long, see the module doc)."""
    store, data = synthetic(classes, with_val)
    base_rss = peak_rss_mb()
    m = get_method(method)
    plans = [RunPlan(s, sample_run(data.train_labels, data.val_labels, SHOTS, s), "bench", Path("-")) for s in SEEDS]

    def context(config):
        return fit_context(store, data, config, SHOTS, m)

    length = resolved_length(m.payload(context(m.config())))
    config, note = m.config(), ""
    if length is None or full:
        seconds, trained = timed(m, context(config), plans, mode)
        flops = count_flops(m, context, config, plans, mode)
    else:  # two short lengths, the time per step from their difference: fixed costs counted once
        name, value = length
        short = max(1, value // 40)
        configs = [dataclasses.replace(config, **{name: n}) for n in (short, 2 * short)]
        timed(m, context(configs[0]), plans, mode)  # one-time costs of the process, not counted
        (t1, _), (t2, trained) = (timed(m, context(c), plans, mode) for c in configs)
        f1, f2 = (count_flops(m, context, c, plans, mode) for c in configs)
        seconds = t2 + (t2 - t1) * (value - 2 * short) / short
        flops = f2 + (f2 - f1) * (value - 2 * short) / short
        note = f"~ ({short} and {2 * short} of {value} {name} measured, extrapolated)"
    seconds, flops = seconds / len(plans), flops / len(plans)
    feats, labels, _ = store.splits["test"]
    return {
        "method": method,
        "classes": classes,
        "mode": mode,
        "train": len(data.train_labels),
        "val": len(data.val_labels),
        "seconds": seconds,
        "gflops": flops / seconds / 1e9,
        "vs_mm": flops / seconds / 1e9 / matmul_gflops(),
        "peak_mb": peak_rss_mb() - base_rss,
        "chosen": trained[0].selection.get("chosen"),
        "top1": top1(trained[0].predict(torch.from_numpy(feats)), torch.from_numpy(labels)),
        "zero_shot": top1(zero_shot_predictor(data)(torch.from_numpy(feats)), torch.from_numpy(labels)),
        "note": note,
    }


def timed(m, ctx: FitContext, plans: list[RunPlan], mode: str) -> tuple[float, list]:
    start = time.perf_counter()
    trained = train_all(m, ctx, plans, mode)
    return time.perf_counter() - start, trained


def count_flops(m, context, config, plans, mode) -> float:
    """Matrix-product FLOPs of the measured run (the same length: a shorter one would scale its
    fixed costs, e.g. CLAP's lambdas, with it), its stacks one after another (the counter sees only
    the operations of its own thread)."""
    try:
        from cacheclip.fit import trainer

        trainer.PARALLEL_STACKS = False
    except ImportError:  # --before code older than the trainer
        pass
    with FlopCounterMode(display=False) as counter:
        train_all(m, context(config), plans, mode)
    return counter.get_total_flops()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=",".join(m for m in BUILTIN if m not in SKIP))
    parser.add_argument("--classes", default="10,100,397,1000", help="comma list of class counts")
    parser.add_argument(
        "--modes", default="stacked,alone", help="stacked (fit's way), alone (one run at a time), before"
    )
    parser.add_argument(
        "--before", metavar="DIR", help="a checkout of the code to compare (mode before), e.g. a git worktree"
    )
    parser.add_argument("--full", action="store_true", help="measure every epoch at every size")
    parser.add_argument("--val-at-1000", action="store_true", help="give 1000 classes a 4-shot val too")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default 0: torch's, as fit runs)")
    parser.add_argument("--one", nargs=3, metavar=("METHOD", "CLASSES", "MODE"), help=argparse.SUPPRESS)  # child
    args = parser.parse_args()
    if args.threads:
        one_core(args.threads)
    if args.one:
        classes = int(args.one[1])
        print(json.dumps(measure(args.one[0], classes, classes < 1000 or args.val_at_1000, args.full, args.one[2])))
        return
    print(
        f"{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, {SHOTS} shots, D={DIM}, "
        f"{VIEWS} aug views, {TEMPLATES} templates, seeds {SEEDS}; each measurement in its own process"
    )
    rows = []
    for classes in (int(c) for c in args.classes.split(",")):
        for method in args.methods.split(","):
            for mode in args.modes.split(","):
                cmd = [sys.executable, __file__, "--one", method, str(classes), mode, "--threads", str(args.threads)]
                cmd += ["--full"] * args.full + ["--val-at-1000"] * args.val_at_1000
                env = {**os.environ, "PYTHONPATH": args.before} if mode == "before" else None
                done = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if done.returncode:
                    print(
                        f"  {classes:5d} classes  {method:14s} {mode:7s} FAILED: "
                        f"{done.stderr.strip().splitlines()[-1:]}"
                    )
                    continue
                row = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(
                    f"  {classes:5d} classes  {method:14s} {mode:7s} {row['seconds']:8.2f} s/run  "
                    f"{row['gflops']:6.1f} GFLOP/s ({row['vs_mm']:.2f} of mm)  {row['peak_mb']:7.0f} MB  {row['note']}",
                    flush=True,
                )
    print(
        "\n| classes | method | mode | s / run | GFLOP/s | vs mm | peak MB | chosen (seed 1) "
        "| test top-1 (zero-shot) | note |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['classes']} | {r['method']} | {r['mode']} | {r['seconds']:.2f} | {r['gflops']:.1f} | "
            f"{r['vs_mm']:.2f} | "
            f"{r['peak_mb']:.0f} | {json.dumps(r['chosen'])} | {r['top1']:.1f} ({r['zero_shot']:.1f}) | {r['note']} |"
        )


if __name__ == "__main__":
    main()
