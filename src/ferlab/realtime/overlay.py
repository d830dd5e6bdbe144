"""Drawing results onto frames: box, id, label, confidence per face, and the FPS."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from ferlab.classes import CLASSES, NOT_DETECTED
from ferlab.realtime.runtime import FaceResult

# One BGR colour per class (canonical order); "not detected" is grey.
CLASS_COLORS: dict[str, tuple[int, int, int]] = dict(
    zip(
        CLASSES,
        (
            (40, 40, 230),  # anger: red
            (160, 60, 160),  # contempt: purple
            (40, 140, 40),  # disgust: green
            (200, 120, 40),  # fear: blue
            (40, 210, 250),  # happiness: yellow
            (230, 230, 230),  # neutral: white
            (160, 90, 20),  # sadness: dark blue
            (30, 150, 250),  # surprise: orange
        ),
        strict=True,
    )
)
GREY = (150, 150, 150)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def _text_box(
    image: np.ndarray, text: str, x: int, y: int, color: tuple[int, int, int], scale: float
) -> None:
    """Text on a filled background, kept inside the image; (x, y) is the top-left corner."""
    thickness = max(1, round(scale * 2))
    (tw, th), base = cv2.getTextSize(text, FONT, scale, thickness)
    height, width = image.shape[:2]
    x = int(min(max(0, x), max(0, width - tw - 4)))
    y = int(min(max(0, y), max(0, height - th - base - 4)))
    cv2.rectangle(image, (x, y), (x + tw + 4, y + th + base + 4), color, cv2.FILLED)
    dark = sum(color) > 380  # black text on light backgrounds
    cv2.putText(
        image,
        text,
        (x + 2, y + th + 2),
        FONT,
        scale,
        (0, 0, 0) if dark else (255, 255, 255),
        thickness,
        cv2.LINE_AA,
    )


def draw_overlay(
    frame: np.ndarray, results: Sequence[FaceResult], fps: float | None = None
) -> np.ndarray:
    """A BGR copy of `frame` with each face's box and "#id label confidence", and the FPS."""
    image = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR) if frame.ndim == 2 else frame.copy()
    scale = max(0.4, min(image.shape[:2]) / 720)
    for r in results:
        color = GREY if r.label == NOT_DETECTED else CLASS_COLORS[r.label]
        x, y, w, h = (round(v) for v in r.box)
        cv2.rectangle(image, (x, y), (x + w, y + h), color, max(1, round(2 * scale)))
        text = f"#{r.face_id} {r.label} {r.confidence:.2f}"
        _text_box(image, text, x, y - round(28 * scale), color, scale)
    if fps is not None:
        _text_box(image, f"{fps:.1f} FPS", 4, 4, (30, 30, 30), scale)
    return image
