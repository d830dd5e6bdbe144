"""Whole-batch augmentation: labels stay aligned, values stay in range, draws repeat."""

from __future__ import annotations

import torch

from ferlab.training.augment import Augmentation, augment_batch, mixup


def test_each_face_stays_at_its_place_in_the_batch() -> None:
    # Faces of constant, distinct grey levels: a pure warp (no light change, no erasing)
    # keeps each one's level, so face k of the output must come from face k of the input.
    levels = torch.linspace(0.05, 0.95, 16)
    faces = levels.view(16, 1, 1, 1).expand(16, 1, 48, 48).contiguous()
    warp_only = Augmentation(brightness=0.0, contrast=0.0, erase=0.0)
    out = augment_batch(faces, torch.Generator().manual_seed(3), aug=warp_only)
    assert torch.allclose(out.mean(dim=(1, 2, 3)), levels, atol=1e-5)


def test_real_faces_stay_in_range_and_change(real_faces) -> None:
    images, _ = real_faces
    faces = torch.from_numpy(images).float().div(255).unsqueeze(1)
    out = augment_batch(faces, torch.Generator().manual_seed(0), out_size=64)
    assert out.shape == (len(images), 1, 64, 64)
    assert out.min() >= 0.0 and out.max() <= 1.0
    resized = torch.nn.functional.interpolate(faces, size=64, mode="bilinear")
    changed = (out - resized).abs().mean(dim=(1, 2, 3)) > 0.01
    assert changed.float().mean() > 0.8  # nearly every face is altered


def test_same_generator_seed_same_batch() -> None:
    faces = torch.rand(8, 1, 48, 48)
    a = augment_batch(faces, torch.Generator().manual_seed(5))
    b = augment_batch(faces, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_mixup_keeps_targets_distributions_and_first_face_dominant() -> None:
    x = torch.rand(6, 1, 48, 48)
    target = torch.eye(8)[torch.arange(6)]
    mixed, mixed_target = mixup(x, target, 0.4, torch.Generator().manual_seed(1))
    assert torch.allclose(mixed_target.sum(1), torch.ones(6))
    assert (mixed_target.argmax(1) == torch.arange(6)).all()
    assert mixed.shape == x.shape
