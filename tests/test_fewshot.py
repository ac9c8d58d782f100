"""Few-shot sampling must match CoOp/Dassl draw for draw (REFERENCE.md section 4)."""

from __future__ import annotations

import random

from cacheclip.datasets.fewshot import (
    FewShotSplit,
    holdout_val,
    needed_train_indices,
    sample_fewshot,
    sample_run,
    sample_run_with_holdout,
)

# Labels deliberately unsorted: first appearance is 2, 0, 1 (not 0, 1, 2).
TRAIN = [2, 0, 2, 1, 0, 2, 2, 1, 0, 0, 2]
VAL = [1, 2, 0, 1, 2, 0, 0, 2]


def test_sample_run_by_hand():
    # Groups in order of first appearance, indices in list order, written out by hand.
    train_groups = [[0, 2, 5, 6, 10], [1, 4, 8, 9], [3, 7]]  # labels 2, 0, 1
    val_groups = [[0, 3], [1, 4, 7], [2, 5, 6]]  # labels 1, 2, 0
    for seed in (1, 2, 3):
        rng = random.Random(seed)
        want_train = rng.sample(train_groups[0], 2) + rng.sample(train_groups[1], 2) + rng.sample(train_groups[2], 2)
        want_val = rng.sample(val_groups[0], 2) + rng.sample(val_groups[1], 2) + rng.sample(val_groups[2], 2)
        run = sample_run(TRAIN, VAL, 2, seed)
        assert run == FewShotSplit(shots=2, seed=seed, train=tuple(want_train), val=tuple(want_val))

    # The expectations above can tell the wrong rules apart (checked for seed 1):
    rng = random.Random(1)
    sorted_order = (
        rng.sample(train_groups[1], 2) + rng.sample(train_groups[2], 2) + rng.sample(train_groups[0], 2)
    )  # labels 0, 1, 2
    assert list(sample_run(TRAIN, VAL, 2, 1).train) != sorted_order
    fresh = random.Random(1)
    fresh_val = [x for g in val_groups for x in fresh.sample(g, 2)]  # val from a new generator
    assert list(sample_run(TRAIN, VAL, 2, 1).val) != fresh_val


def test_small_group_takes_all_without_a_draw():
    # 3 shots: label 1 has only 2 items -> both, in list order, and no draw is spent.
    rng = random.Random(7)
    want = rng.sample([0, 2, 5, 6, 10], 3) + rng.sample([1, 4, 8, 9], 3) + [3, 7]
    want_val = [0, 3] + rng.sample([1, 4, 7], 3) + rng.sample([2, 5, 6], 3)  # val: min(3, 4) shots
    run = sample_run(TRAIN, VAL, 3, 7)
    assert list(run.train) == want and list(run.val) == want_val


def test_val_shots_capped_at_four():
    train = [i % 3 for i in range(30)]
    val = [i % 3 for i in range(24)]
    run = sample_run(train, val, 8, 1)
    assert len(run.train) == 24 and len(run.val) == 12
    assert all(sum(val[i] == c for i in run.val) == 4 for c in range(3))


def test_all_shots_and_no_val():
    assert sample_fewshot(TRAIN, 0, random.Random(0)) == list(range(len(TRAIN)))
    run = sample_run(TRAIN, VAL, -1, 1)
    assert run.train == tuple(range(len(TRAIN))) and run.val == tuple(range(len(VAL)))
    run = sample_run(TRAIN, [], 2, 5)
    assert run.val == () and list(run.train) == sample_fewshot(TRAIN, 2, random.Random(5))


def test_needed_train_indices():
    shots, seeds = [1, 2, 4], [1, 2, 3]
    union = set()
    for k in shots:
        for s in seeds:
            union |= set(sample_run(TRAIN, VAL, k, s).train)
    got = needed_train_indices(TRAIN, VAL, shots, seeds)
    assert got == sorted(union) and len(got) == len(set(got))
    assert needed_train_indices(TRAIN, VAL, [0], [1]) == list(range(len(TRAIN)))


def test_holdout_val():
    labels = [i % 4 for i in range(40)]  # 10 per class
    run = sample_run(labels, [], 2, 1)
    held = holdout_val(labels, run.train, 8, random.Random(9))  # min(8, 4) = 4 per class
    assert not set(held) & set(run.train)
    assert all(sum(labels[i] == c for i in held) == 4 for c in range(4))
    # Fewer items left than shots: all that remain (2 per class), in list order.
    run = sample_run(labels, [], 8, 1)
    small = holdout_val(labels, run.train, 4, random.Random(0))
    for c in range(4):
        rest = [i for i in range(40) if labels[i] == c and i not in run.train]
        assert len(rest) == 2 and [i for i in small if labels[i] == c] == rest


def test_sample_run_with_holdout():
    labels = [i % 4 for i in range(40)]
    run = sample_run_with_holdout(labels, 2, 3)
    rng = random.Random(3)
    train = sample_fewshot(labels, 2, rng)
    assert list(run.train) == train and list(run.val) == holdout_val(labels, train, 2, rng)
    assert not set(run.val) & set(run.train) and len(run.val) == 8
    needed = needed_train_indices(labels, [], [2], [3], holdout=True)
    assert needed == sorted(set(run.train) | set(run.val))
    assert needed_train_indices(labels, [], [2], [3]) == sorted(run.train)
