"""Preprocessing protocols of extraction (``extract --preprocess``) and the per-view seeding.

``default``: open_clip's val transform for the clean view (shorter side to the input size,
centre crop) and RandomResizedCrop views (``augment``), as CoOp and Dassl do since 9 Oct 2021.

``coop-2021``: CoOp's release config on Dassl before v0.5.0 (../shared/reference/coop-2021-protocol.md;
Dassl e53c8c3 ``transforms.py`` L196-230 and L314-327, CoOp 7d03d3e ``rn50.yaml`` L13):

- test / clean view: squash to the input size ignoring the aspect ratio, squash to 1.125x,
  centre crop (bicubic);
- train views: squash (bicubic), horizontal flip (p 0.5), random translation (p 0.5: squash to
  round(1.125x) and a uniformly placed crop, else squash to the input size; always bilinear),
  then the same enlarge-and-centre-crop as test (bicubic).

The size, mean and std are the model's (224 and CLIP's for CoOp's backbones). Like the
``default`` views, each view's randomness comes from (seed, image path, view index) alone.
This module does not import ``augment``, so ``fit.predict`` can use the clean transforms.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import functional as TF

PROTOCOLS = ("default", "coop-2021")
ENLARGE = 1.125  # Dassl's factor for the translation and the centre-crop steps
BICUBIC, BILINEAR = Image.Resampling.BICUBIC, Image.Resampling.BILINEAR


def view_generator(seed: int, path: str, view: int) -> torch.Generator:
    """The generator of one augmented view: a function of (seed, path, view) only."""
    digest = hashlib.sha256(f"{seed}\0{path}\0{view}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


# ---------------------------------------------------------------- the protocol in the store identity


def with_protocol(preprocess_json: str, protocol: str) -> str:
    """The store's ``preprocess`` identity attribute for ``protocol``: the model's preprocessing
    config (JSON) as before for ``default`` (old stores stay valid), with ``protocol`` first
    otherwise, so a store of one protocol never matches a request for the other."""
    if protocol == "default":
        return preprocess_json
    return json.dumps({"protocol": protocol, **json.loads(preprocess_json)})


def split_protocol(preprocess_json: str) -> tuple[str, str]:
    """Inverse of ``with_protocol``: (protocol, the model's preprocessing config as JSON)."""
    cfg = json.loads(preprocess_json)
    protocol = cfg.pop("protocol", "default")
    return protocol, (preprocess_json if protocol == "default" else json.dumps(cfg, sort_keys=True))


# ---------------------------------------------------------------- coop-2021


def _hw(size: Any) -> tuple[int, int]:
    return (int(size[0]), int(size[1])) if isinstance(size, (list, tuple)) else (int(size), int(size))


def squash(image: Image.Image, hw: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    """Resize to exactly (h, w), ignoring the aspect ratio (Dassl's ``Resize((h, w))``)."""
    return image.resize((hw[1], hw[0]), resample)


@dataclass(frozen=True)
class Coop2021:
    """Sizes and normalisation of the coop-2021 transforms, from the model's preprocessing config."""

    size: tuple[int, int]  # (h, w): the model's input size
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(cls, preprocess: dict[str, Any]) -> Coop2021:
        return cls(_hw(preprocess["size"]), tuple(preprocess["mean"]), tuple(preprocess["std"]))

    @property
    def enlarged(self) -> tuple[int, int]:  # centre-crop step: int(1.125 x size)
        return int(self.size[0] * ENLARGE), int(self.size[1] * ENLARGE)

    @property
    def translated(self) -> tuple[int, int]:  # translation step: round(1.125 x size)
        return round(self.size[0] * ENLARGE), round(self.size[1] * ENLARGE)

    def finish(self, image: Image.Image) -> torch.Tensor:
        """Enlarge, centre crop, to tensor, normalise: the last steps of both transforms."""
        image = TF.center_crop(squash(image, self.enlarged, BICUBIC), list(self.size))
        return TF.normalize(TF.to_tensor(image), self.mean, self.std)


class Coop2021Test:
    """PIL image -> (3, H, W): the clean (test) view of coop-2021."""

    def __init__(self, preprocess: dict[str, Any]):
        self.spec = Coop2021.of(preprocess)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.spec.finish(squash(image, self.spec.size, BICUBIC))


@dataclass(frozen=True)
class Draw:
    """The random choices of one coop-2021 train view."""

    flip: bool
    translate: bool
    top: int  # offsets of the crop in the translated image (0 when not translated)
    left: int


def draw(seed: int, path: str, view: int, margin: tuple[int, int]) -> Draw:
    """View ``view`` of ``path``: flip with p 0.5, translate with p 0.5 (Dassl skips it when
    uniform(0, 1) > 0.5), offsets round(uniform(0, margin)) as Dassl rounds them."""
    u = torch.rand(4, generator=view_generator(seed, path, view)).tolist()
    translate = u[1] <= 0.5
    top, left = (round(u[2] * margin[0]), round(u[3] * margin[1])) if translate else (0, 0)
    return Draw(u[0] < 0.5, translate, top, left)


class Coop2021Views:
    """PIL image -> (V, 3, H, W): coop-2021 train views (squash, flip, translate, centre crop)."""

    def __init__(self, views: int, seed: int, preprocess: dict[str, Any]):
        self.views, self.seed, self.spec = views, seed, Coop2021.of(preprocess)

    def view(self, image: Image.Image, d: Draw) -> torch.Tensor:
        size, big = self.spec.size, self.spec.translated
        image = squash(image, size, BICUBIC)
        if d.flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if d.translate:
            image = squash(image, big, BILINEAR).crop((d.left, d.top, d.left + size[1], d.top + size[0]))
        else:
            image = squash(image, size, BILINEAR)  # already that size: PIL returns a copy
        return self.spec.finish(image)

    def __call__(self, image: Image.Image, path: str) -> torch.Tensor:
        margin = (self.spec.translated[0] - self.spec.size[0], self.spec.translated[1] - self.spec.size[1])
        return torch.stack([self.view(image, draw(self.seed, path, v, margin)) for v in range(self.views)])


def clean_transform(protocol: str, preprocess: dict[str, Any], val_transform):
    """The clean-view transform of ``protocol`` for a model (its preprocessing config and
    open_clip val transform)."""
    return val_transform if protocol == "default" else Coop2021Test(preprocess)
