"""Training-time augmentation of whole batches with torch ops, on the training device.

One call augments a batch of N faces at once (no per-image Python loop), so the same code is
cheap on a CPU core and never starves a GPU. Every random draw comes from the `generator`
passed in, so a run with the same seed repeats exactly, whatever the machine's load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    """What is drawn per face (the FER practice: flip, small affine, light, occlusion)."""

    flip: float = 0.5  # probability of a horizontal mirror
    rotate_deg: float = 10.0  # rotation drawn from ±rotate_deg
    scale: tuple[float, float] = (0.9, 1.1)  # zoom factor range
    translate: float = 0.08  # shift, as a fraction of the side, in x and y
    brightness: float = 0.2  # additive shift drawn from ±brightness (images in [0, 1])
    contrast: float = 0.2  # contrast factor drawn from 1 ± contrast
    erase: float = 0.25  # probability of one random rectangle set to noise (random erasing)
    erase_area: tuple[float, float] = (0.02, 0.15)  # its area, as a fraction of the face


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    device = generator.device
    return low + (high - low) * torch.rand(n, generator=generator, device=device)


def augment_batch(
    faces: torch.Tensor,
    generator: torch.Generator,
    out_size: int | None = None,
    aug: Augmentation = Augmentation(),
) -> torch.Tensor:
    """faces N×1×H×W float in [0, 1] → augmented N×1×S×S in [0, 1] (S = out_size or H).

    The affine warp (rotation, zoom, shift, mirror) is one `affine_grid` + `grid_sample`
    with reflected borders; it also resizes to `out_size`, so a 48-px cache can feed a
    112-px model with one interpolation. The face order (and so each label) is unchanged.
    """
    if faces.ndim != 4 or faces.shape[1] != 1:
        raise ValueError(f"expected N×1×H×W faces, got {tuple(faces.shape)}")
    n, device = faces.shape[0], faces.device
    size = out_size or faces.shape[-1]
    g = generator

    angle = _uniform(n, -aug.rotate_deg, aug.rotate_deg, g) * (math.pi / 180)
    zoom = _uniform(n, *aug.scale, g)
    shift = _uniform(2 * n, -aug.translate, aug.translate, g).view(n, 2) * 2  # grid units
    mirror = torch.where(torch.rand(n, generator=g, device=device) < aug.flip, -1.0, 1.0)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [
            torch.stack([cos * mirror, -sin, shift[:, 0]], dim=1),
            torch.stack([sin * mirror, cos, shift[:, 1]], dim=1),
        ],
        dim=1,
    ).to(faces.dtype)
    grid = F.affine_grid(theta, [n, 1, size, size], align_corners=False)
    out = F.grid_sample(
        faces, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )

    contrast = _uniform(n, 1 - aug.contrast, 1 + aug.contrast, g).view(n, 1, 1, 1)
    shift_light = _uniform(n, -aug.brightness, aug.brightness, g).view(n, 1, 1, 1)
    mean = out.mean(dim=(2, 3), keepdim=True)
    out = ((out - mean) * contrast + mean + shift_light).clamp(0.0, 1.0)

    if aug.erase > 0:
        out = _random_erase(out, g, aug)
    return out


def _random_erase(x: torch.Tensor, g: torch.Generator, aug: Augmentation) -> torch.Tensor:
    """One rectangle per chosen face (area and aspect drawn per face) replaced by noise."""
    n, _, h, w = x.shape
    device = x.device
    chosen = torch.rand(n, generator=g, device=device) < aug.erase
    area = _uniform(n, *aug.erase_area, g) * h * w
    aspect = torch.exp(_uniform(n, math.log(0.3), math.log(3.3), g))
    eh = torch.sqrt(area * aspect).clamp(1, h)
    ew = torch.sqrt(area / aspect).clamp(1, w)
    top = torch.rand(n, generator=g, device=device) * (h - eh)
    left = torch.rand(n, generator=g, device=device) * (w - ew)
    rows = torch.arange(h, device=device).view(1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, w)
    inside = (
        (rows >= top.view(n, 1, 1))
        & (rows < (top + eh).view(n, 1, 1))
        & (cols >= left.view(n, 1, 1))
        & (cols < (left + ew).view(n, 1, 1))
        & chosen.view(n, 1, 1)
    ).unsqueeze(1)
    noise = torch.rand(x.shape, generator=g, device=device, dtype=x.dtype)
    return torch.where(inside, noise, x)


def mixup(
    x: torch.Tensor, target: torch.Tensor, alpha: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al. 2018) of a batch with its reversed self; `target` N×C distributions.

    One weight λ ~ Beta(α, α) per batch, by the inverse CDF of one uniform draw from
    `generator` (torch's Beta sampler takes no generator), so runs repeat exactly.
    """
    if alpha <= 0:
        return x, target
    from scipy.special import betaincinv

    u = float(torch.rand(1, generator=generator, device=generator.device))
    lam = float(betaincinv(alpha, alpha, u))
    lam = max(lam, 1 - lam)  # the first face stays dominant
    return lam * x + (1 - lam) * x.flip(0), lam * target + (1 - lam) * target.flip(0)


def albumentations_pipeline(seed: int):  # -> albumentations.Compose
    """The per-image albumentations alternative (`train.augment: albumentations`): the same
    flip, affine and light jitter on uint8 numpy faces, one image at a time on the CPU."""
    import os

    import cv2

    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A

    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.Affine(
                rotate=(-10, 10),
                scale=(0.9, 1.1),
                translate_percent=(-0.08, 0.08),
                border_mode=cv2.BORDER_REFLECT_101,
                p=0.8,
            ),
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
            A.CoarseDropout(p=0.25),
        ],
        seed=seed,
    )
