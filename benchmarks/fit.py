"""How fast is CLIP-Adapter training on cached features?

Run: .venv/bin/python benchmarks/fit.py [--quick] [--device cpu|cuda]

Synthetic features (D = 1024, RN50's width), 16 shots, visual adapter,
the CoOp protocol (batch 32, drop_last). Prints:

(a) one 16-shot run for 10, 397 and 1000 classes: measured on a few
    epochs, scaled to the protocol's 200 epochs;
(b) per-run time when 12 runs (3 seeds x 4 alphas) train together in one
    batched call, against the one-by-one time of (a);
(c) achieved GFLOP/s against a plain 2048^3 fp32 matmul measured in the same
    process, with FLOPs counted two ways: those the step executes, and the
    usual model count (3 x the forward, as if the frozen input also took
    a gradient); and the kernel floor: the step's GEMMs and its SGD update
    alone on the same shapes, timed in the same process, i.e. the most the
    step could reach with zero elementwise and Python cost;
(d) the projected time of the whole coop11 grid (11 datasets x shots
    1/2/4/8/16 x 3 seeds, one alpha) from the measured step rates.

Timings are the minimum over repeats, which hides interference from other
processes on a shared machine but not a permanently busy one.
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import torch

from cacheclip.fit.adapters import AdapterConfig
from cacheclip.fit.train import (
    RunSpec,
    TrainConfig,
    batch_plan,
    default_epochs,
    train_runs,
)

D, REDUCTION, SHOTS, VIEWS = 1024, 4, 16, 2
CLASSES = (10, 397, 1000)
# coop11: dataset -> (classes, train split size); ImageNet's train split is 1.28M.
COOP11 = {
    "imagenet": (1000, 1281167),
    "caltech101": (100, 4128),
    "oxford_pets": (37, 2944),
    "stanford_cars": (196, 6509),
    "oxford_flowers": (102, 4093),
    "food101": (101, 50500),
    "fgvc_aircraft": (100, 3334),
    "sun397": (397, 15880),
    "dtd": (47, 2820),
    "eurosat": (10, 13500),
    "ucf101": (101, 7639),
}
GRID_SHOTS, GRID_SEEDS = (1, 2, 4, 8, 16), 3
DEVICE = "cpu"  # --device


def step_flops(classes: int, batch: int = 32, dim: int = D, reduction: int = REDUCTION) -> int:
    """FLOPs of one step of one run: batch * (10 D H + 4 D K).

    Adapter: 2 forward GEMMs + 3 backward GEMMs (dW2, dh, dW1; no input
    gradient is needed), 2 D H each. Logits: the forward GEMM and the one
    backward GEMM (dL/df*; the text weights are fixed), 2 D K each.
    """
    hidden = dim // reduction
    return batch * (10 * dim * hidden + 4 * dim * classes)


def model_flops(classes: int, batch: int = 32, dim: int = D, reduction: int = REDUCTION) -> int:
    """The usual model count, 3 x the forward (2 D H + 2 H D adapter, 2 D K logits) per sample,
    i.e. also an input gradient at each GEMM. ~3.1 MFLOP per sample at D = 1024 for the adapter."""
    hidden = dim // reduction
    return batch * 3 * (4 * dim * hidden + 2 * dim * classes)


def kernel_floor(classes: int, runs: int, reps: int, steps: int = 20) -> float:
    """Seconds per step of the step's 7 GEMMs and fused SGD update alone, ``runs`` stacked.

    The GEMMs a step must run (bmm / matmul at the step's shapes, forward and backward) and
    torch's one-pass SGD on w1 and w2, for ``steps`` steps on the same weights and a fresh
    batch each step; no elementwise ops, no autograd, no Python logic.
    """
    h = D // REDUCTION
    w1, w2 = torch.randn(runs, D, h, device=DEVICE) * 0.01, torch.randn(runs, h, D, device=DEVICE) * 0.01
    m1, m2, g1, g2 = (torch.zeros_like(w) for w in (w1, w2, w1, w2))
    vs = torch.randn(classes, D, device=DEVICE)
    vs_t = vs.t().contiguous()
    xs = torch.randn(steps, runs, 32, D, device=DEVICE)
    opts = {
        "weight_decay": 5e-4,
        "momentum": 0.9,
        "lr": 1e-3,
        "dampening": 0.0,
        "nesterov": False,
        "maximize": False,
        "is_first_step": False,
    }

    def one_step(x):
        hid = torch.bmm(x, w1)
        a = torch.bmm(hid, w2)
        z = torch.matmul(a, vs_t)
        da = torch.matmul(z, vs)
        dh = torch.bmm(da, w2.transpose(1, 2))
        torch.bmm(x.transpose(1, 2), dh, out=g1)
        torch.bmm(hid.transpose(1, 2), da, out=g2)
        torch._fused_sgd_([w1, w2], [g1, g2], [m1, m2], **opts)

    def all_steps():
        for x in xs:
            one_step(x)

    all_steps()
    return min(_timed(all_steps) for _ in range(reps)) / steps


def matmul_gflops(reps: int) -> float:
    a, b = torch.randn(2048, 2048, device=DEVICE), torch.randn(2048, 2048, device=DEVICE)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * 2048**3 / best / 1e9


def _timed(fn) -> float:
    _sync()
    start = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - start


def _sync() -> None:
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def _runs(classes: int, seeds: int, alphas: tuple[float, ...]) -> tuple[list[RunSpec], torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    n = classes * SHOTS
    views = torch.randn(n, VIEWS, D, generator=gen)  # shared by all runs: only the draws differ
    labels = torch.arange(classes).repeat_interleave(SHOTS)
    weights = torch.randn(classes, D, generator=gen)
    runs = [RunSpec(seed, AdapterConfig(alpha=a), views, labels) for seed in range(1, seeds + 1) for a in alphas]
    return runs, weights


def time_per_step(classes: int, seeds: int, alphas: tuple[float, ...], min_steps: int, reps: int) -> float:
    """Seconds per optimiser step of one train_runs call (all its runs), min over reps.

    Whole epochs through the public train_runs (init, view draws, shuffles
    included): enough epochs for min_steps steps, at least one.
    """
    runs, weights = _runs(classes, seeds, alphas)
    steps_per_epoch = batch_plan(len(runs[0].labels), 32)[1]
    epochs = max(1, math.ceil(min_steps / steps_per_epoch))
    cfg = TrainConfig()
    best = min(_timed(lambda: train_runs(runs, weights, 100.0, cfg, epochs=epochs, device=DEVICE)) for _ in range(reps))
    return best / (epochs * steps_per_epoch)


def grid_seconds(step_time) -> tuple[float, int]:
    """Total seconds and runs of the coop11 grid given step_time(classes) per run-step."""
    total, runs = 0.0, 0
    for name, (classes, train_size) in COOP11.items():
        for shots in GRID_SHOTS:
            n = min(classes * shots, train_size)
            steps = default_epochs(shots, name) * batch_plan(n, 32)[1]
            total += GRID_SEEDS * steps * step_time(classes)
            runs += GRID_SEEDS
    return total, runs


def _interpolate(points: dict[int, float]):
    """Per-step time as a piecewise-linear function of the class count."""
    ks = sorted(points)

    def at(k: int) -> float:
        lo = max([x for x in ks if x <= k], default=ks[0])
        hi = min([x for x in ks if x >= k], default=ks[-1])
        if lo == hi:
            return points[lo]
        return points[lo] + (points[hi] - points[lo]) * (k - lo) / (hi - lo)

    return at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    min_steps, reps = (60, 2) if args.quick else (400, 3)
    alphas = (0.1, 0.2, 0.4, 0.6)

    where = (
        torch.cuda.get_device_name(DEVICE)
        if DEVICE.startswith("cuda")
        else f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    print(f"cacheclip fit benchmark: torch {torch.__version__}, {DEVICE}: {where}")
    print(
        f"synthetic features D={D}, r={REDUCTION}, {SHOTS} shots, {VIEWS} views, batch 32, "
        f"visual adapter (official block)"
    )
    print("FLOPs per step per run = 32 * (10*D*H + 4*D*K), H = D/r (5 adapter GEMMs fwd+bwd, 2 logit GEMMs fwd+bwd)\n")
    time_per_step(10, 1, (0.2,), 20, 1)  # warm-up: thread pool, allocator
    peak = matmul_gflops(reps + 2)
    print(
        f"reference fp32 matmul 2048^3: {peak:.0f} GFLOP/s (TF32 "
        f"{'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'} on CUDA)\n"
    )

    single, batched = {}, {}
    header = (
        f"{'classes':>7} {'steps':>6} {'runs':>4} | {'per run, 200 ep':>15} {'GFLOP/s':>7} {'ratio':>5} "
        f"{'3x fwd count':>12} | {'floor ratio':>11} {'of floor':>8} | {'matmul':>6}"
    )
    print(header)
    print("-" * len(header))
    for k in CLASSES:
        peak = row_peak = max(matmul_gflops(reps), peak)  # the best the machine has shown so far
        single[k] = time_per_step(k, 1, (0.2,), min_steps, reps)
        batched[k] = time_per_step(k, 3, alphas, min_steps, reps) / 12
        steps = 200 * batch_plan(k * SHOTS, 32)[1]
        for runs, per_step in ((1, single[k]), (12, batched[k])):
            floor = kernel_floor(k, runs, reps) / runs
            gflops = step_flops(k) / per_step / 1e9
            print(
                f"{k:>7} {steps:>6} {runs:>4} | {steps * per_step:>14.1f}s {gflops:>7.0f} {gflops / row_peak:>5.2f} "
                f"{model_flops(k) / per_step / 1e9 / row_peak:>12.2f} | "
                f"{step_flops(k) / floor / 1e9 / row_peak:>11.2f} {floor / per_step:>8.2f} | {row_peak:>6.0f}"
            )
        print(f"{'':>7} {'':>6} {'':>4} | batched per run: {single[k] / batched[k]:.2f}x faster than one by one")
    print(f"""
runs: 1 = one run alone; 12 = 3 seeds x 4 alphas in one train_runs call (time per run).
Timed whole epochs, >= {min_steps} steps (init included), best of {reps},
scaled to 200 epochs. ratio = executed GFLOP/s / the best 2048^3 matmul GFLOP/s so far (matmul);
3x fwd count = the same with the usual model count (3 x forward); floor ratio = the ratio of the
step's GEMMs + SGD update alone (kernel_floor); of floor = floor time / step time.
""")
    peak_after = matmul_gflops(reps + 2)
    print(f"reference matmul again after the runs: {peak_after:.0f} GFLOP/s (a large change means a busy machine)\n")

    one, runs = grid_seconds(_interpolate(single))
    many, _ = grid_seconds(_interpolate(batched))
    print(f"coop11 grid projection: 11 datasets x shots {GRID_SHOTS} x {GRID_SEEDS} seeds = {runs} runs per alpha,")
    print("CoOp epochs, N = min(classes * shots, train split); per-step rates interpolated over the class count:")
    print(f"  1 alpha,  one run at a time         : {one / 60:6.1f} min")
    print(f"  4 alphas, one run at a time         : {4 * one / 60:6.1f} min")
    print(f"  4 alphas, 12 runs (3 seeds x 4 alphas) per batched call: {4 * many / 60:6.1f} min")


if __name__ == "__main__":
    main()
