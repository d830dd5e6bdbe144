"""Five-point similarity alignment of a detected face onto a fixed template, and the fallback."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

# The common 112×112 five-point face template (as used by ArcFace-style recognisers), in the
# detector's landmark order: right eye, left eye, nose, right mouth corner, left mouth corner
# (the subject's right is the image's left).
FIVE_POINT_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ]
)


def template(size: int) -> np.ndarray:
    """The five template points scaled to a size×size output."""
    return FIVE_POINT_TEMPLATE_112 * (size / 112.0)


def similarity_matrix(landmarks: np.ndarray, size: int) -> np.ndarray:
    """2×3 similarity transform (rotation, uniform scale, shift) taking the 5 landmarks onto
    the template at `size`, by least squares over all five points."""
    src = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    dst = template(size)
    if not np.isfinite(src).all():
        raise ValueError("landmarks contain NaN or infinity")
    if np.linalg.norm(src - src.mean(axis=0)) < 1e-6:
        raise ValueError("landmarks are degenerate (all at one point): cannot align")
    # x' = a·x − b·y + tx,  y' = b·x + a·y + ty: linear in (a, b, tx, ty).
    rows = np.zeros((10, 4))
    rows[0::2] = np.column_stack([src[:, 0], -src[:, 1], np.ones(5), np.zeros(5)])
    rows[1::2] = np.column_stack([src[:, 1], src[:, 0], np.zeros(5), np.ones(5)])
    (a, b, tx, ty), *_ = np.linalg.lstsq(rows, dst.reshape(-1), rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]])


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2×3 affine matrix to N×2 points."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return points @ matrix[:, :2].T + matrix[:, 2]


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The 2×3 affine matrix of `outer` applied after `inner`."""
    return np.hstack([outer[:, :2] @ inner[:, :2], outer[:, :2] @ inner[:, 2:] + outer[:, 2:]])


def _to_gray(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3 and image.shape[-1] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image.ndim != 2:
        raise ValueError(f"expected a grayscale H×W or BGR H×W×3 image, got shape {image.shape}")
    return image


def align_face(gray: np.ndarray, landmarks: np.ndarray, size: int) -> np.ndarray:
    """The face warped so its 5 landmarks sit on the template: uint8 grayscale size×size.

    A BGR image is converted to grayscale first. Parts of the output that fall outside the
    source are black: FER2013+ crops are tighter than the template, so the top and bottom rows
    often do, and repeating the edge pixels instead draws streaks that look like features.
    """
    gray = _to_gray(np.asarray(gray))
    matrix = similarity_matrix(landmarks, size)
    scale = float(np.hypot(matrix[0, 0], matrix[1, 0]))
    if scale < 0.5:
        # A big face shrunk to a small crop: bilinear warping alone would alias, so average
        # the image down first (INTER_AREA) and fold that resize into the matrix.
        h, w = gray.shape
        small = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        fx, fy = small.shape[1] / w, small.shape[0] / h
        # small pixel centre (u, v) sits at original ((u + 0.5) / fx - 0.5, (v + 0.5) / fy - 0.5)
        to_original = np.array([[1 / fx, 0, 0.5 / fx - 0.5], [0, 1 / fy, 0.5 / fy - 0.5]])
        matrix = _compose(matrix, to_original)
        gray = small
    return cv2.warpAffine(
        gray,
        matrix,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def plain_crop(gray: np.ndarray, size: int) -> np.ndarray:
    """The fallback: the central square of the image resized to size×size (a plain resize for
    square crops such as FER2013+), uint8 grayscale."""
    gray = _to_gray(np.asarray(gray))
    h, w = gray.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = gray[top : top + side, left : left + side]
    if side == size:
        return square.copy()
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(square, (size, size), interpolation=interp)


def alignment_figure(
    examples: Sequence[tuple[np.ndarray, object, np.ndarray, str]], path: str | Path
) -> None:
    """Save a figure: each example's original with box and 5 dots, beside its aligned crop.

    `examples` holds (original gray image, Face or None, aligned crop, title) tuples.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ferlab.io import atomic_path

    n = len(examples)
    if n == 0:
        raise ValueError("alignment_figure needs at least one example")
    cols = min(n, 6)
    rows = -(-n // cols)
    fig, axes = plt.subplots(2 * rows, cols, figsize=(1.9 * cols, 4.0 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    colors = ["red", "yellow", "magenta", "lime", "cyan"]
    for k, (original, face, aligned, title) in enumerate(examples):
        top, bottom = axes[2 * (k // cols), k % cols], axes[2 * (k // cols) + 1, k % cols]
        top.imshow(original, cmap="gray", vmin=0, vmax=255)
        if face is not None:
            x, y, w, h = face.box
            top.add_patch(plt.Rectangle((x, y), w, h, fill=False, color="deepskyblue", lw=1.2))
            top.scatter(face.landmarks[:, 0], face.landmarks[:, 1], c=colors, s=10)
        top.set_xlim(-0.5, original.shape[1] - 0.5)
        top.set_ylim(original.shape[0] - 0.5, -0.5)
        top.set_title(title, fontsize=7)
        bottom.imshow(aligned, cmap="gray", vmin=0, vmax=255)
        bottom.set_title("aligned" if face is not None else "fallback (no face)", fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
