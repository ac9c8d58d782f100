"""Image transforms for extraction: the model's clean view and seeded augmented views.

Each augmented view's randomness comes from (seed, image path, view index)
alone, so a view is the same whether the extraction resumed, was sharded or
ran in another worker order (REFERENCE section 7).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from cacheclip.common import COOP_CROP_SCALE
from cacheclip.features.preprocess import view_generator  # one seeding for both protocols

COOP_SCALE = COOP_CROP_SCALE  # Dassl/CoOp random_resized_crop (the default)
TIP_SCALE = (0.5, 1.0)  # Tip-Adapter's cache augmentation
RATIO = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class AugmentConfig:
    views: int = 10  # augmented views per train image (0: clean view only)
    scale: tuple[float, float] = COOP_SCALE  # RandomResizedCrop area range
    ratio: tuple[float, float] = RATIO  # RandomResizedCrop aspect range
    seed: int = 0  # with the image path and view index, fixes every view

    def attrs(self) -> dict[str, Any]:
        return {
            "aug_views": self.views,
            "aug_scale": list(self.scale),
            "aug_ratio": [round(r, 6) for r in self.ratio],
            "aug_seed": self.seed,
        }


def crop_box(width: int, height: int, cfg: AugmentConfig, g: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a RandomResizedCrop, torchvision's algorithm with our generator."""
    area = width * height
    log_lo, log_hi = math.log(cfg.ratio[0]), math.log(cfg.ratio[1])
    for _ in range(10):
        u = torch.rand(4, generator=g).tolist()
        target = area * (cfg.scale[0] + u[0] * (cfg.scale[1] - cfg.scale[0]))
        aspect = math.exp(log_lo + u[1] * (log_hi - log_lo))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(u[2] * (height - h + 1)), int(u[3] * (width - w + 1)), h, w
    # fallback: the largest centred crop within the ratio range
    in_ratio = width / height
    if in_ratio < cfg.ratio[0]:
        w, h = width, int(round(width / cfg.ratio[0]))
    elif in_ratio > cfg.ratio[1]:
        h, w = height, int(round(height * cfg.ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class AugmentedViews:
    """PIL image -> (V, 3, S, S): RandomResizedCrop + horizontal flip + normalisation."""

    def __init__(self, cfg: AugmentConfig, preprocess: dict[str, Any]):
        size = preprocess["size"]
        self.size = list(size) if isinstance(size, (list, tuple)) else [size, size]
        self.mean, self.std = preprocess["mean"], preprocess["std"]
        self.interpolation = InterpolationMode(preprocess.get("interpolation", "bicubic"))
        self.cfg = cfg

    def __call__(self, image, path: str) -> torch.Tensor:
        views = []
        for v in range(self.cfg.views):
            g = view_generator(self.cfg.seed, path, v)
            top, left, h, w = crop_box(image.width, image.height, self.cfg, g)
            view = TF.resized_crop(image, top, left, h, w, self.size, self.interpolation, antialias=True)
            if torch.rand(1, generator=g).item() < 0.5:
                view = TF.hflip(view)
            views.append(TF.normalize(TF.to_tensor(view), self.mean, self.std))
        return torch.stack(views)
