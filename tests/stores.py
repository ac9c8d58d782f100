"""Synthetic feature stores for the fit tests (``cacheclip.testing``, public) and spies on their reads."""

from __future__ import annotations

from cacheclip.features import store as st
from cacheclip.testing import REF, D, K, V, clustered, write_store  # noqa: F401  (the tests import them from here)


def store_reads(monkeypatch, method: str, fit) -> list[tuple[str, bool, object]]:
    """Run ``fit()`` with the store's reads spied on: (split, read while ``method`` trained, indices)."""
    import dataclasses

    from cacheclip.fit import stage
    from cacheclip.fit.methods import get_method

    reads, training = [], [False]
    real_read, real = st.FeatureStore.read, get_method(method)

    def spy_read(self, split, indices=None, *, aug=False):
        reads.append((split, training[0], indices))
        return real_read(self, split, indices, aug=aug)

    def spy_train(ctx, plans):
        training[0] = True
        try:
            return real.train(ctx, plans)
        finally:
            training[0] = False

    spy = dataclasses.replace(real, train=spy_train)
    monkeypatch.setattr(st.FeatureStore, "read", spy_read)
    monkeypatch.setattr(stage, "get_method", lambda name: spy if name == method else get_method(name))
    fit()
    return reads


def reads_while_training(monkeypatch, method: str, fit) -> list[tuple[str, bool]]:
    """Run ``fit()`` with the store's reads spied on: (split, read while ``method`` trained)."""
    return [(split, training) for split, training, _ in store_reads(monkeypatch, method, fit)]
