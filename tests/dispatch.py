"""Counting the torch operations a piece of code dispatches (what a GPU would launch, one kernel
or more each): the trainer's tests check that a step's count does not grow with the stacked runs."""

from __future__ import annotations

from torch.utils._python_dispatch import TorchDispatchMode


class CountOps(TorchDispatchMode):
    """``with CountOps() as counter: ...`` then ``counter.count``: the aten operations dispatched."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))
