"""ProKeR's solves measured at each size: the rates behind its solver choice (``proker.EIGH_COST``) and
behind ``grid_projection.py``'s ProKeR figures.

For each M, on an RBF kernel of M normalised random vectors (beta 2, lambda 0.05, as K_SS / lambda + I):
one float64 Cholesky factorisation, its two triangular solves with K right-hand sides, one float64
eigendecomposition (``--eigh-max`` and below) and the (M, M) @ (M, K) product each eigen-swept lambda
costs; the float32 Cholesky and solves beside them. Prints seconds and eigh / Cholesky, the number of
lambdas from which one eigh per beta pays.

    .venv/bin/python benchmarks/proker_solvers.py                        # M = 1000 .. 8000, K = 397
    .venv/bin/python benchmarks/proker_solvers.py --sizes 2000,4000 --threads 1
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from baselines import cpu_name


def best_of(fn, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def system(m: int, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    """K_SS / lambda + I (M, M) of M random unit vectors (D = 256), beta = 2, lambda = 0.05."""
    x = F.normalize(torch.randn(m, 256, generator=torch.Generator().manual_seed(seed)), dim=-1).double()
    a = (x @ x.t()).sub_(1.0).mul_(2.0).exp_().div_(0.05)
    a.diagonal().add_(1.0)
    return a.to(dtype)


def solver_seconds(m: int, k: int, eigh: bool, repeats: int = 2) -> dict[str, float]:
    """Seconds of each solve at (M, K) on this process's threads; ``eigh`` False leaves it out."""
    out = {}
    for dtype, tag in ((torch.float64, ""), (torch.float32, "32")):
        a, rhs = system(m, dtype), torch.randn(m, k, dtype=dtype)
        factor = torch.linalg.cholesky(a)
        out["cholesky" + tag] = best_of(lambda a=a: torch.linalg.cholesky_ex(a.mT), repeats)
        out["solves" + tag] = best_of(
            lambda f=factor, r=rhs: torch.linalg.solve_triangular(
                f.mT, torch.linalg.solve_triangular(f, r, upper=False), upper=True
            ),
            repeats,
        )
        out["product" + tag] = best_of(lambda a=a, r=rhs: a @ r, repeats)
        if eigh and dtype == torch.float64:
            out["eigh"] = best_of(lambda a=a: torch.linalg.eigh(a.mT), 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,2000,4000,6000,8000")
    parser.add_argument("--classes", type=int, default=397, help="K, the right-hand sides")
    parser.add_argument("--eigh-max", type=int, default=8000, help="largest M whose eigh is timed")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default 0: torch's, as fit runs)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, K = {args.classes}")
    system(500).cholesky()  # LAPACK's one-time costs
    print("| M | Cholesky | 2 solves | eigh | eigh / Cholesky | product | float32 Cholesky | float32 solves |")
    print("|---|---|---|---|---|---|---|---|")
    for m in map(int, args.sizes.split(",")):
        s = solver_seconds(m, args.classes, m <= args.eigh_max)
        eigh = f"{s['eigh']:.2f}" if "eigh" in s else "-"
        ratio = f"{s['eigh'] / s['cholesky']:.1f}" if "eigh" in s else "-"
        print(
            f"| {m} | {s['cholesky']:.3f} | {s['solves']:.3f} | {eigh} | {ratio} | {s['product']:.3f} "
            f"| {s['cholesky32']:.3f} | {s['solves32']:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
