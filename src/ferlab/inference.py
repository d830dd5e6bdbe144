"""Face crops in, class probabilities out: the one place that turns uint8 faces into tensors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from ferlab.checkpoint import NORMALIZATION, load_model
from ferlab.classes import CLASSES


def to_tensor(faces: np.ndarray, input_size: int) -> torch.Tensor:
    """uint8 grayscale faces (N×H×W) -> normalised float tensor N×1×S×S.

    Faces not already S×S are resized (area when shrinking, cubic when enlarging).
    """
    if faces.ndim != 3:
        raise ValueError(f"expected N×H×W grayscale faces, got shape {faces.shape}")
    if faces.shape[1:] != (input_size, input_size):
        interp = cv2.INTER_AREA if faces.shape[1] > input_size else cv2.INTER_CUBIC
        faces = np.stack(
            [cv2.resize(f, (input_size, input_size), interpolation=interp) for f in faces]
        )
    x = torch.from_numpy(np.ascontiguousarray(faces)).float().unsqueeze(1)
    return (x / 255.0 - NORMALIZATION["mean"]) / NORMALIZATION["std"]


class Classifier:
    """A trained checkpoint ready for inference on CPU (or CUDA when asked)."""

    def __init__(self, model: nn.Module, meta: dict, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.meta = meta
        self.device = device
        self.input_size = int(meta["input_size"])
        self.classes: list[str] = list(meta["classes"])

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str = "cpu",
        expected_classes: tuple[str, ...] | None = CLASSES,
    ) -> Classifier:
        model, meta = load_model(path, expected_classes)
        return cls(model, meta, device)

    @torch.inference_mode()
    def logits(self, faces: np.ndarray, batch_size: int = 256) -> np.ndarray:
        out = []
        for start in range(0, len(faces), batch_size):
            x = to_tensor(faces[start : start + batch_size], self.input_size).to(self.device)
            out.append(self.model(x).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)

    def predict_proba(self, faces: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return softmax(self.logits(faces, batch_size))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
