"""The stacked trainer: a run trained in a stack is the run trained alone by torch.optim, whatever
its neighbours; a step is the same number of torch operations for 1 and for many runs."""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch
import torch.nn.functional as F
from dispatch import CountOps

from cacheclip.fit import trainer as tr

D, K, N, B = 16, 5, 24, 6


def _loss(params, x, y):
    z = torch.bmm(F.normalize(x, dim=-1), params["w"].transpose(1, 2)) + params["b"][:, None]
    return tr.run_cross_entropy(z, y)


def _data(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, D, generator=g), torch.randint(K, (N,), generator=g)


def _rows(seed):
    """A run's own batch stream: (S, B) blocks of a fresh permutation each, from its generator."""
    g = torch.Generator().manual_seed(seed)
    while True:
        yield torch.randperm(N, generator=g)[: (N // B) * B].view(-1, B)


def _stack(seeds, lrs, wds, recipe, fused=True):
    data = [_data(s) for s in seeds]
    init_g = [torch.Generator().manual_seed(10 + s) for s in seeds]
    return tr.Stack(
        params={
            "w": torch.stack([torch.randn(K, D, generator=g) for g in init_g]),
            "b": torch.stack([torch.randn(K, generator=g) for g in init_g]),
        },
        loss=_loss,
        recipe=recipe,
        lrs=lrs,
        weight_decays=wds,
        schedule=lambda i, peak: peak * (1.0 - i / 40),
        samples=tr.Samples(data, list(range(len(seeds)))),
        blocks=tr.stack_blocks([_rows(s) for s in seeds]),
        fused=fused,
    )


def _alone(seed, lr, wd, recipe, steps):
    """The reference: one run, autograd and torch.optim (not fused), the same draws."""
    x, y = _data(seed)
    g = torch.Generator().manual_seed(10 + seed)
    w = torch.randn(K, D, generator=g).requires_grad_(True)
    b = torch.randn(K, generator=g).requires_grad_(True)
    opt = recipe.build([{"params": [w, b], "lr": lr, "weight_decay": wd}], fused=False)
    rows, block = _rows(seed), None
    for i in range(steps):
        if i % (N // B) == 0:
            block = next(rows)
        idx = block[i % (N // B)]
        loss = _loss({"w": w[None], "b": b[None]}, x[idx][None], y[idx][None]).sum()
        opt.zero_grad()
        loss.backward()
        opt.param_groups[0]["lr"] = lr * (1.0 - i / 40)
        opt.step()
    return w.detach(), b.detach()


RECIPES = [tr.Recipe("sgd", momentum=0.9), tr.Recipe("adam", betas=(0.8, 0.99)), tr.Recipe("adamw", eps=1e-6)]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r.kind)
@pytest.mark.parametrize("fused", [True, False])
def test_each_stacked_run_is_the_run_trained_alone_by_torch_optim(recipe, fused):
    seeds, lrs, wds = [1, 2, 3, 4, 5], [0.1, 0.1, 0.05, 0.05, 0.02], [0.0, 0.0, 1e-2, 1e-2, 1e-3]
    got = tr.train_stack(_stack(seeds, lrs, wds, recipe, fused), steps=13)
    for r, (seed, lr, wd) in enumerate(zip(seeds, lrs, wds, strict=True)):
        w, b = _alone(seed, lr, wd, recipe, steps=13)
        assert torch.allclose(got["w"][r], w, rtol=0, atol=2e-5) and torch.allclose(got["b"][r], b, rtol=0, atol=2e-5)


def test_a_run_does_not_depend_on_its_neighbours():
    recipe = tr.Recipe("adamw")
    lone = tr.train_stack(_stack([3], [0.05], [1e-2], recipe), steps=9)["w"][0]
    crowd = tr.train_stack(_stack([7, 3, 9], [0.1, 0.05, 0.02], [0.0, 1e-2, 1e-3], recipe), steps=9)["w"][1]
    assert torch.allclose(lone, crowd, rtol=0, atol=1e-6)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r.kind)
def test_operations_per_step_do_not_grow_with_the_runs(recipe):
    """Dispatched operations over 4 steps (one block drawn before): the same for 2, 12 and 24 runs of
    one (lr, weight decay); one run may take fewer (autograd skips a layout copy when the stacked
    dimension has size 1), never more. Groups of (lr, weight decay) add a fixed cost per group."""

    def ops(runs, groups):
        per = runs // groups
        lrs = [0.1 / (1 + r // per) for r in range(runs)]
        stack = _stack(list(range(runs)), lrs, [1e-3] * runs, recipe)
        stack.blocks = iter([next(stack.blocks)])  # one block of 4 steps, drawn before counting
        with CountOps() as counter:
            tr.train_stack(stack, steps=4)
        return counter.count

    one, many = ops(1, 1), ops(12, 1)
    assert one <= ops(2, 1) == many == ops(24, 1)
    assert ops(12, 3) > many  # groups cost a concatenation and their own updates, independent of R
    assert ops(12, 3) == ops(24, 3)


def test_hyper_groups_need_adjacent_equal_settings():
    assert tr.hyper_groups([1, 1, 2, 2, 2], [0, 0, 0, 0, 0]) == [range(2), range(2, 5)]
    assert tr.hyper_groups([1, 1, 1], [0, 1, 1]) == [range(1), range(1, 3)]
    with pytest.raises(ValueError, match="not adjacent"):
        tr.hyper_groups([1, 2, 1], [0, 0, 0])


def test_keeper_keeps_the_first_or_the_last_best():
    params = {"w": torch.zeros(2, 3)}
    first, last = tr.Keeper(2, "first"), tr.Keeper(2, "last")
    for step, scores in enumerate([[1.0, 5.0], [3.0, 5.0], [3.0, 4.0]]):
        state = {"w": params["w"] + step}
        first.observe(step, torch.tensor(scores), state)
        last.observe(step, torch.tensor(scores), state)
    assert first.at.tolist() == [1, 0] and last.at.tolist() == [2, 1]
    assert first.state["w"][:, 0].tolist() == [1.0, 0.0] and last.state["w"][:, 0].tolist() == [2.0, 1.0]


def test_stack_chunks_keep_the_state_in_budget(monkeypatch):
    monkeypatch.setattr(tr, "_cores", lambda: 1)
    assert tr.stack_chunks(36, 1 << 10) == [range(36)]
    chunks = tr.stack_chunks(10, tr.CPU_STACK_BYTES // 3)
    assert chunks == [range(3), range(3, 6), range(6, 8), range(8, 10)]
    assert tr.stack_chunks(10, tr.CPU_STACK_BYTES * 4) == [range(i, i + 1) for i in range(10)]
    assert tr.stack_chunks(10, tr.CPU_STACK_BYTES * 4, "cuda") == [range(10)]
    monkeypatch.setattr(tr, "_cores", lambda: 2)  # a stack per core, trained at once, when the steps are large
    assert tr.stack_chunks(36, 1 << 10, step_flops=tr.PARALLEL_FLOPS / 18) == [range(18), range(18, 36)]
    assert tr.stack_chunks(36, 1 << 10, step_flops=tr.PARALLEL_FLOPS / 20) == [range(36)]
    assert tr.stack_chunks(1, 1, step_flops=1e12) == [range(1)]
    assert tr.stack_chunks(3, 1 << 10, step_flops=tr.MANY_THREADS_FLOPS) == [range(1), range(1, 2), range(2, 3)]


def test_padding_rows_are_left_out_of_their_runs_loss():
    x, y = _data(0)
    samples = tr.Samples([(x, y), (x[:10], y[:10])], [0, 1])
    rows = torch.tensor([[3, 4, 5], [1, 2, -1]])  # run 1's batch is one row short
    xb, yb = samples.batch(rows)
    assert torch.equal(xb[0], x[[3, 4, 5]]) and torch.equal(xb[1, :2], x[[1, 2]]) and yb[1, 2] == -1
    z = torch.randn(2, 3, K)
    want = torch.stack([F.cross_entropy(z[0], yb[0]), F.cross_entropy(z[1, :2], yb[1, :2])])
    assert torch.allclose(tr.run_cross_entropy(z, yb), want)


def test_stacks_trained_at_once_equal_stacks_trained_one_after_another(monkeypatch):
    """run_stacks trains independent stacks on the cores at once; each stack's result is the one it
    gets alone, the results come back in run order and progress sums every stack's steps."""
    recipe = tr.Recipe("adamw")
    seeds = [5, 6, 7, 8, 9]

    def train(idx, tick):
        stack = _stack([seeds[r] for r in idx], [0.05] * len(idx), [1e-2] * len(idx), recipe)
        ticks = (lambda i, params: tick(i + 1)) if tick is not None else None
        return list(tr.train_stack(stack, steps=8, after_step=ticks)["w"])

    seen = []
    monkeypatch.setattr(tr, "_cores", lambda: 2)
    together = tr.run_stacks([[3, 1], [0], [4, 2]], train, 5, 8, progress=lambda d, t: seen.append((d, t)))
    monkeypatch.setattr(tr, "PARALLEL_STACKS", False)
    apart = tr.run_stacks([[3, 1], [0], [4, 2]], train, 5, 8)
    alone = [train([r], None)[0] for r in range(5)]
    for a, b, c in zip(together, apart, alone, strict=True):
        assert torch.equal(a, b) and torch.allclose(a, c, rtol=0, atol=1e-6)
    assert seen[-1] == (40, 40) and all(t == 40 for _, t in seen) and len(seen) == 3 * 8


def test_long_steps_give_the_stacks_left_over_every_core(monkeypatch):
    """From MANY_THREADS_FLOPS a run is a stack of its own; 3 such stacks on 2 cores: two at once on
    one thread each, then the third alone on both (no core idles), with the results of the others."""
    monkeypatch.setattr(tr, "_cores", lambda: 2)
    assert tr.stack_chunks(3, 1 << 10, step_flops=tr.MANY_THREADS_FLOPS) == [range(1), range(1, 2), range(2, 3)]
    recipe, seeds, used = tr.Recipe("sgd", momentum=0.9), [5, 6, 7], {}

    def train(idx, tick):
        stack = _stack([seeds[r] for r in idx], [0.05] * len(idx), [0.0] * len(idx), recipe)
        stack = dataclasses.replace(stack, step_flops=tr.MANY_THREADS_FLOPS)
        main = threading.current_thread() is threading.main_thread()

        def note(i, params):  # the threads torch computes this stack's steps with
            used[idx[0]] = (main, torch.get_num_threads())

        return list(tr.train_stack(stack, steps=4, after_step=note)["w"])

    out = tr.run_stacks([[0], [1], [2]], train, 3, 4, step_flops=tr.MANY_THREADS_FLOPS)
    assert used == {0: (False, 1), 1: (False, 1), 2: (True, 2)}  # two at once on a thread each, then both
    alone = [train([r], None)[0] for r in range(3)]
    assert all(torch.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(out, alone, strict=True))
