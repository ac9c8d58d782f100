"""Projected time of the whole coop11 grid (11 datasets x shots 1/2/4/8/16 x 3 seeds) per method
on one CPU thread, from the 16-shot 397-class per-run costs measured by benchmarks/baselines.py
(AMD EPYC, 2026-12-03), scaled by how each method's cost grows with N = classes x shots and K.
Run: python3 benchmarks/grid_projection.py (no torch needed). The figures are inputs: remeasure
with baselines.py on your machine and edit them."""

K = {
    "imagenet": 1000,
    "caltech101": 100,
    "oxford_pets": 37,
    "stanford_cars": 196,
    "oxford_flowers": 102,
    "food101": 101,
    "fgvc_aircraft": 100,
    "sun397": 397,
    "dtd": 47,
    "eurosat": 10,
    "ucf101": 101,
}
SHOTS, SEEDS = (1, 2, 4, 8, 16), 3
REF_N, REF_K = 397 * 16, 397


def total(cost):  # cost(k, shots) seconds per run
    return sum(SEEDS * cost(k, s) for k in K.values() for s in SHOTS)


# N K D methods (SGD epochs fixed, full batch, Adam epochs): cost ~ t397 * (N K) / (N0 K0), floor = 10-class run
def nk(t397, floor):
    return lambda k, s: max(floor, t397 * (k * s * k) / (REF_N * REF_K))


def taskres(t397, floor):  # 100 epochs below 8 shots, 200 from 8 (t397 measured at 16 shots)
    return lambda k, s: max(floor, t397 * (k * s * k) / (REF_N * REF_K) * (0.5 if s < 8 else 1))


def xmodal(t397, floor):  # fixed iterations: cost ~ K
    return lambda k, s: max(floor, t397 * k / REF_K)


rows = {
    "zs-lp (78 s)": nk(78.3, 0.35),
    "clap (79 s)": nk(79.0, 0.34),
    "lp++ (67 s)": nk(66.7, 0.20),
    "taskres (71 s)": taskres(71.1, 1.65),
    "cross-modal (~409 s)": xmodal(409, 47.2),
}
for name, cost in rows.items():
    print(f"{name:24s} {total(cost) / 3600:6.2f} h")


# GDA: covariance over M = V N views (D x D) + pinv: ~ t397 * N / N0 + pinv floor
def g(k, s):
    return max(0.18, 6.07 * (k * s) / REF_N)


print(f"{'gda (6.1 s)':24s} {total(g) / 3600:6.2f} h")


# ProKeR with --proker-views 1 (M = N): Cholesky path ~ grid x M^3; 20 x 10 grid at M = 6352: ~15 min (1 thread)
def p(k, s):
    return max(16.9, 900 * (k * s / REF_N) ** 3)


print(
    f"{'proker views=1 (~900 s)':24s} {total(p) / 3600:6.2f} h"
    f"   (ImageNet 16-shot alone: {p(1000, 16) / 3600:.1f} h per run)"
)
lp = nk(76.1, 1.76)


def tipf(k, s):
    return max(1.42, 225.7 * ((k * s) / REF_N) ** 2)


def tip(k, s):
    return max(0.01, 6.33 * ((k * s) / REF_N) * (k / REF_K))


for name, c in (("linear-probe (76 s)", lp), ("tip-adapter (6.3 s)", tip), ("tip-adapter-f (~226 s)", tipf)):
    print(f"{name:24s} {total(c) / 3600:6.2f} h")
