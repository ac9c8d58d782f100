"""Adapter math: shapes, the alpha = 0 identity, init, config validation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cacheclip.errors import ConfigError
from cacheclip.fit.adapters import AdapterConfig, ClipAdapterHead, ResidualAdapter, blend, logits, zero_shot_logits


def _data(n=7, k=5, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * 3, torch.randn(k, d, generator=g)  # (N, D), (K, D)


@pytest.mark.parametrize("kind", ["visual", "text", "both"])
@pytest.mark.parametrize("block", ["official", "paper"])
def test_zero_ratio_gives_exact_zero_shot_logits(kind, block):
    feats, weights = _data()
    head = ClipAdapterHead(AdapterConfig(kind=kind, alpha=0.0, beta=0.0, block=block), 64, torch.Generator())
    with torch.no_grad():
        out = head(feats, weights, 100.0)
    assert torch.equal(out, zero_shot_logits(feats, weights, 100.0))


def test_nonzero_ratio_changes_logits():
    feats, weights = _data()
    head = ClipAdapterHead(AdapterConfig(kind="both", alpha=0.5, beta=0.5), 64, torch.Generator())
    with torch.no_grad():
        assert not torch.allclose(head(feats, weights, 100.0), zero_shot_logits(feats, weights, 100.0))


def test_logits_are_scaled_cosines():
    feats, weights = _data()
    out = logits(feats, weights, 100.0)
    cos = nn.functional.cosine_similarity(feats[:, None], weights[None], dim=-1)
    assert torch.allclose(out, 100.0 * cos, atol=1e-4)


def test_blend_is_the_residual_mix():
    x, a = torch.randn(3, 8), torch.randn(3, 8)
    assert torch.allclose(blend(x, a, 0.2), 0.2 * a + 0.8 * x)
    assert torch.equal(blend(x, a, 1.0), a)


@pytest.mark.parametrize("dim", [512, 768, 1024])
@pytest.mark.parametrize("kind", ["visual", "text", "both"])
def test_shapes(dim, kind):
    head = ClipAdapterHead(AdapterConfig(kind=kind), dim, torch.Generator().manual_seed(1))
    names = {"visual": ["visual.w1", "visual.w2"], "text": ["text.w1", "text.w2"]}
    expected = {n for part in ("visual", "text") if kind in (part, "both") for n in names[part]}
    state = head.state_dict()
    assert set(state) == expected
    for name, t in state.items():
        assert t.shape == ((dim, dim // 4) if name.endswith("w1") else (dim // 4, dim))
    feats, weights = torch.randn(6, dim), torch.randn(3, dim)
    with torch.no_grad():
        assert head(feats, weights, 100.0).shape == (6, 3)


def test_official_block_is_nonnegative_paper_block_is_not():
    x = torch.randn(50, 64)
    official = ResidualAdapter(64, 16, "official", torch.Generator().manual_seed(0))
    paper = ResidualAdapter(64, 16, "paper", torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (official(x) >= 0).all()
        assert (paper(x) < 0).any()
        assert torch.equal(official(x), torch.relu(paper(x)))


def test_init_matches_nn_linear_default():
    torch.manual_seed(3)
    lin1 = nn.Linear(64, 16, bias=False)
    lin2 = nn.Linear(16, 64, bias=False)
    adapter = ResidualAdapter(64, 16, "official", torch.Generator().manual_seed(3))
    assert torch.allclose(adapter.w1.detach(), lin1.weight.detach().t(), rtol=0, atol=1e-7)
    assert torch.allclose(adapter.w2.detach(), lin2.weight.detach().t(), rtol=0, atol=1e-7)


def test_init_is_seeded_by_the_generator_not_global_rng():
    cfg = AdapterConfig(kind="both")
    torch.manual_seed(0)
    a = ClipAdapterHead(cfg, 64, torch.Generator().manual_seed(5)).state_dict()
    torch.manual_seed(1)
    b = ClipAdapterHead(cfg, 64, torch.Generator().manual_seed(5)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"alpha": 1.5},
        {"alpha": -0.1},
        {"beta": 2.0},
        {"alpha": float("nan")},
        {"kind": "image"},
        {"block": "linear"},
        {"reduction": 0},
        {"reduction": 2.5},
    ],
)
def test_bad_adapter_config_raises(kwargs):
    with pytest.raises(ConfigError):
        AdapterConfig(**kwargs).validate()


def test_reduction_must_divide_dim():
    with pytest.raises(ConfigError, match="does not divide"):
        ClipAdapterHead(AdapterConfig(reduction=3), 64, torch.Generator())
