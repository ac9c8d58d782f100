"""Few-shot index sampling, bit-for-bit the CoOp protocol (Dassl ``generate_fewshot_dataset``).

CoOp seeds Python's global ``random`` with the run seed, then draws the few-shot
train set and, with the same stream, the few-shot val set of min(K, 4) shots.
Here the generator is an explicit ``random.Random(seed)``: the same stream.
All functions return indices into the split's item list, never items, so the
result can be stored as data and checked against a feature store.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

VAL_SHOTS_CAP = 4  # CoOp's few-shot val has min(K, 4) shots per class


def _groups(labels: Sequence[int], skip: frozenset[int] = frozenset()) -> list[list[int]]:
    """Indices grouped by label: labels in order of first appearance, indices in list order."""
    groups: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        if i not in skip:
            groups.setdefault(label, []).append(i)
    return list(groups.values())


def _sample_groups(groups: list[list[int]], shots: int, rng: random.Random) -> list[int]:
    out: list[int] = []
    for group in groups:
        out.extend(rng.sample(group, shots) if len(group) >= shots else group)
    return out


def sample_fewshot(labels: Sequence[int], shots: int, rng: random.Random) -> list[int]:
    """Indices of a ``shots``-per-class subset of a split whose item labels are ``labels``.

    For each label (in order of first appearance): ``rng.sample(group, shots)`` when the
    group has at least ``shots`` items, else the whole group in list order, with no
    draw. Indices come in that order (not sorted). ``shots < 1`` returns all indices.
    """
    if shots < 1:
        return list(range(len(labels)))
    return _sample_groups(_groups(labels), shots, rng)


@dataclass(frozen=True)
class FewShotSplit:
    shots: int  # K, shots per class asked for
    seed: int  # the run seed (CoOp uses 1, 2, 3)
    train: tuple[int, ...]  # indices into the train split, in sampling order
    val: tuple[int, ...]  # indices into the val split (min(K, 4) per class); empty without val


def sample_run(train_labels: Sequence[int], val_labels: Sequence[int], shots: int, seed: int) -> FewShotSplit:
    """The few-shot train and val subsets of one CoOp run (shots, seed).

    One ``random.Random(seed)`` draws train first, then val with min(shots, 4) shots.
    An empty ``val_labels`` (ImageNet) gives an empty val and makes no draws.
    """
    rng = random.Random(seed)
    train = sample_fewshot(train_labels, shots, rng)
    val = sample_fewshot(val_labels, min(shots, VAL_SHOTS_CAP), rng) if len(val_labels) else []
    return FewShotSplit(shots=shots, seed=seed, train=tuple(train), val=tuple(val))


def needed_train_indices(
    train_labels: Sequence[int],
    val_labels: Sequence[int],
    shots: Sequence[int],
    seeds: Sequence[int],
    *,
    holdout: bool = False,
) -> list[int]:
    """Sorted union of the train indices of every run (K, seed) in ``shots`` x ``seeds``.

    ``val_labels`` does not change the train draws (val is drawn after train).
    With ``holdout=True`` and no val split, the train indices that
    ``sample_run_with_holdout`` uses as val are included too.
    """
    needed: set[int] = set()
    for k in shots:
        for seed in seeds:
            if holdout and not len(val_labels):
                run = sample_run_with_holdout(train_labels, k, seed)
                needed.update(run.val)
            else:
                run = sample_run(train_labels, val_labels, k, seed)
            needed.update(run.train)
    return sorted(needed)


def holdout_val(train_labels: Sequence[int], exclude: Sequence[int], shots: int, rng: random.Random) -> list[int]:
    """A val set for datasets without one (ImageNet): min(shots, 4) per class drawn from
    the train items not in ``exclude`` (usually the run's few-shot train indices).

    Same grouping rule as ``sample_fewshot``; indices are into the train split.
    """
    skip = frozenset(exclude)
    k = min(shots, VAL_SHOTS_CAP)
    if k < 1:
        return [i for i in range(len(train_labels)) if i not in skip]
    return _sample_groups(_groups(train_labels, skip), k, rng)


def sample_run_with_holdout(train_labels: Sequence[int], shots: int, seed: int) -> FewShotSplit:
    """Like ``sample_run`` for a dataset without val, but ``val`` is ``holdout_val`` drawn
    with the same generator right after train (where CoOp would draw val).

    Here ``val`` holds indices into the TRAIN split, disjoint from ``train``.
    """
    rng = random.Random(seed)
    train = sample_fewshot(train_labels, shots, rng)
    val = holdout_val(train_labels, train, shots, rng)
    return FewShotSplit(shots=shots, seed=seed, train=tuple(train), val=tuple(val))
