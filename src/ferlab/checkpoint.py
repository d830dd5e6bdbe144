"""Checkpoints that carry what is needed to use them, loaded without unpickling code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ferlab.classes import CLASSES
from ferlab.io import atomic_path

# Inputs are grayscale uint8 faces scaled as (x / 255 - MEAN) / STD.
NORMALIZATION = {"mean": 0.5, "std": 0.5}


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Write state dict + metadata atomically.

    `meta` must hold `model` (registry name and hyper-parameters, as `build_model` takes them)
    and `input_size`; classes (the expression classes unless meta names others, as the age model
    does) and normalisation are added here so every checkpoint has them.
    """
    missing = {"model", "input_size"} - meta.keys()
    if missing:
        raise ValueError(f"checkpoint metadata lacks {sorted(missing)}")
    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "classes": list(CLASSES),
        "normalization": dict(NORMALIZATION),
        **meta,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(
    path: str | Path, expected_classes: tuple[str, ...] | None = CLASSES
) -> dict[str, Any]:
    """Load a checkpoint dict with weights_only=True; refuses pickled code or unknown content.

    `expected_classes` guards against using, say, the age model as the expression model.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint; run `dvc repro train` first")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for unsafe or corrupt files
        raise ValueError(
            f"{path}: not a ferlab checkpoint (corrupt, or holds pickled objects that "
            f"weights_only loading refuses): {exc.__class__.__name__}"
        ) from None
    if not isinstance(payload, dict) or "state_dict" not in payload or "model" not in payload:
        raise ValueError(f"{path}: not a ferlab checkpoint (no state_dict/model metadata)")
    if expected_classes is not None and list(payload.get("classes", [])) != list(expected_classes):
        raise ValueError(
            f"{path}: class list {payload.get('classes')} differs from {list(expected_classes)}"
        )
    return payload


def load_model(
    path: str | Path, expected_classes: tuple[str, ...] | None = CLASSES
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint describes, in eval mode, with its metadata."""
    from ferlab.models import build_model

    payload = read_checkpoint(path, expected_classes)
    spec = dict(payload["model"])
    model = build_model(
        spec.pop("name"),
        input_size=payload["input_size"],
        num_classes=len(payload["classes"]),
        **spec,
    )
    model.load_state_dict(payload["state_dict"])
    model.eval()
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return model, meta
