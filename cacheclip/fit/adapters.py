"""CLIP-Adapter math: the residual adapter block, the residual blend, cosine logits.

Pure ``torch.nn`` and tensor code: no files, no printing, no global RNG.

Shapes: image features ``(N, D)`` (raw CLIP output, not normalised), class
weights ``(K, D)`` (one text embedding per class), logits ``(N, K)``.

The method (Gao et al. 2021, arXiv 2110.04544)::

    A(x)  = ReLU(ReLU(x @ w1) @ w2)     block "official" (the released code)
    A(x)  = ReLU(x @ w1) @ w2           block "paper"    (the paper's equation)
    f*    = alpha * A_v(f) + (1 - alpha) * f          visual adapter
    W*    = beta  * A_t(W) + (1 - beta)  * W          text adapter
    logits = s * normalize(f*) @ normalize(W*).T

Parameter layout (the ``state_dict`` of :class:`ClipAdapterHead`)::

    visual.w1  (D, D/r)   # (in, out): y = x @ w1, i.e. nn.Linear.weight.T
    visual.w2  (D/r, D)
    text.w1    (D, D/r)   # only for kind "text" / "both"
    text.w2    (D/r, D)

No biases (the official code uses ``bias=False``). ``alpha``/``beta`` are not
parameters: they live in :class:`AdapterConfig`, which travels with a state.

Initialisation reproduces ``nn.Linear``'s default (kaiming-uniform with
a=sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in))) drawn from an explicit
``torch.Generator``: each matrix is drawn in nn.Linear's (out, in) layout and
stored transposed, in the order visual.w1, visual.w2, text.w1, text.w2 (only
those the kind needs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cacheclip.errors import ConfigError

KINDS = ("visual", "text", "both")
BLOCKS = ("official", "paper")


@dataclass(frozen=True)
class AdapterConfig:
    """Which adapters to train and how to mix them in."""

    kind: str = "visual"  # visual | text | both
    alpha: float = 0.2  # visual residual ratio: f* = alpha * A(f) + (1 - alpha) * f
    beta: float = 0.2  # text residual ratio: W* = beta * A(W) + (1 - beta) * W
    reduction: int = 4  # hidden width D / reduction
    block: str = "official"  # official (ReLU after both layers) | paper (no trailing ReLU)

    @property
    def visual(self) -> bool:
        return self.kind in ("visual", "both")

    @property
    def text(self) -> bool:
        return self.kind in ("text", "both")

    def validate(self) -> None:
        """Raise ConfigError for values that cannot work (dim checks happen at build)."""
        if self.kind not in KINDS:
            raise ConfigError(f"unknown adapter kind {self.kind!r}", f"use one of: {', '.join(KINDS)}")
        if self.block not in BLOCKS:
            raise ConfigError(f"unknown adapter block {self.block!r}", f"use one of: {', '.join(BLOCKS)}")
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {value!r}", f"pick {name} between 0 and 1")
        if isinstance(self.reduction, bool) or not isinstance(self.reduction, int) or self.reduction < 1:
            raise ConfigError(f"reduction must be a positive integer, got {self.reduction!r}", "the paper uses 4")

    def hidden_dim(self, dim: int) -> int:
        """D / reduction; ConfigError when the reduction does not divide D."""
        self.validate()
        if dim % self.reduction:
            raise ConfigError(
                f"reduction {self.reduction} does not divide the feature dimension {dim}",
                "pick a reduction that divides it (the paper uses 4)",
            )
        return dim // self.reduction


def linear_init(fan_in: int, fan_out: int, generator: torch.Generator) -> torch.Tensor:
    """nn.Linear's default weight init, returned in (in, out) layout: (fan_in, fan_out)."""
    bound = 1.0 / math.sqrt(fan_in)
    weight = torch.empty(fan_out, fan_in).uniform_(-bound, bound, generator=generator)
    return weight.t().contiguous()


class ResidualAdapter(nn.Module):
    """One adapter block A: D -> D/r -> D, bias-free. forward(x (..., D)) -> A(x) (..., D)."""

    def __init__(self, dim: int, hidden: int, block: str, generator: torch.Generator) -> None:
        super().__init__()
        if block not in BLOCKS:
            raise ConfigError(f"unknown adapter block {block!r}", f"use one of: {', '.join(BLOCKS)}")
        self.block = block
        self.w1 = nn.Parameter(linear_init(dim, hidden, generator))  # (D, H)
        self.w2 = nn.Parameter(linear_init(hidden, dim, generator))  # (H, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(x @ self.w1) @ self.w2
        return torch.relu(out) if self.block == "official" else out


def blend(x: torch.Tensor, adapted: torch.Tensor, ratio: float) -> torch.Tensor:
    """Residual mix ``ratio * adapted + (1 - ratio) * x``; ratio 0 returns x's values exactly."""
    return ratio * adapted + (1.0 - ratio) * x


def logits(image_feats: torch.Tensor, class_weights: torch.Tensor, scale: float) -> torch.Tensor:
    """Cosine logits: (N, D), (K, D) -> (N, K) = scale * normalize(f) @ normalize(W).T."""
    f = F.normalize(image_feats, dim=-1)
    w = F.normalize(class_weights, dim=-1)
    return scale * (f @ w.t())


def zero_shot_logits(image_feats: torch.Tensor, class_weights: torch.Tensor, scale: float) -> torch.Tensor:
    """Plain CLIP zero-shot logits (N, K); the same code path as every adapted head."""
    return logits(image_feats, class_weights, scale)


class ClipAdapterHead(nn.Module):
    """The adapters of one run. forward(image_feats (N, D), class_weights (K, D), scale) -> (N, K)."""

    def __init__(self, config: AdapterConfig, dim: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        hidden = config.hidden_dim(dim)  # validates the config
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        self.config = config
        self.dim = dim
        self.visual = ResidualAdapter(dim, hidden, config.block, generator) if config.visual else None
        self.text = ResidualAdapter(dim, hidden, config.block, generator) if config.text else None

    def image_embeddings(self, image_feats: torch.Tensor) -> torch.Tensor:
        """f* (N, D): the visual blend, or the features unchanged without a visual adapter."""
        if self.visual is None:
            return image_feats
        return blend(image_feats, self.visual(image_feats), self.config.alpha)

    def class_embeddings(self, class_weights: torch.Tensor) -> torch.Tensor:
        """W* (K, D): the text blend, or the weights unchanged without a text adapter."""
        if self.text is None:
            return class_weights
        return blend(class_weights, self.text(class_weights), self.config.beta)

    def forward(self, image_feats: torch.Tensor, class_weights: torch.Tensor, scale: float) -> torch.Tensor:
        return logits(self.image_embeddings(image_feats), self.class_embeddings(class_weights), scale)
