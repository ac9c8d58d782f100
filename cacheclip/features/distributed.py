"""Sharded extraction across processes with torch.distributed (launched by torchrun).

Every rank plans the same work from the same store, encodes every
``world``-th item of it into its own part files, and rank 0 alone holds the
writer lock, encodes the text and commits. Parts are merged by item index,
so the store is the one a single process would write.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from cacheclip.errors import CacheClipError

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


SINGLE = Dist()


def from_env(device: str) -> Dist:
    """The process group torchrun set up (WORLD_SIZE > 1), or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    import torch.distributed as td

    if not td.is_initialized():  # gloo on GPUs too: the only collectives are a few CPU integers
        td.init_process_group(backend="gloo")  # (features travel through part files)
    return Dist(td.get_rank(), td.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def rank_device(device: str, dist: Dist) -> str:
    """Under torchrun each rank takes its own GPU: cuda -> cuda:LOCAL_RANK."""
    return f"cuda:{dist.local_rank}" if dist.active and device == "cuda" else device


def shard(items: Sequence[T], dist: Dist) -> list[T]:
    """This rank's share: every world-th item, starting at its rank."""
    return list(items[dist.rank :: dist.world])


def on_main(dist: Dist, fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on rank 0 only; every rank returns once it is done, and raises if it failed."""
    result, error = None, None
    if dist.is_main:
        try:
            result = fn()
        except Exception as e:  # shared below, so no rank waits for a rank that gave up
            error = e
    all_succeeded(error, dist)
    return result


def sum_over_ranks(value: int, dist: Dist) -> int:
    if not dist.active:
        return value
    import torch.distributed as td

    t = torch.tensor([value], dtype=torch.int64)
    td.all_reduce(t)
    return int(t.item())


def all_succeeded(error: BaseException | None, dist: Dist) -> None:
    """A barrier that carries failure: re-raise this rank's error, or fail every rank when
    any other failed, so no rank waits forever at a later collective."""
    failed = sum_over_ranks(int(error is not None), dist)
    if error is not None:
        raise error
    if failed:
        raise CacheClipError(
            f"{failed} other extraction process(es) failed",
            "see their error above; fix it and rerun the same command to resume",
        )
