"""The per-frame pipeline: detect → align (or crop) → classify → track + smooth → threshold."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ferlab.classes import CLASSES, NOT_DETECTED
from ferlab.faces.align import align_face, plain_crop
from ferlab.faces.detect import Face, FaceDetector
from ferlab.realtime.tracker import SMOOTHING_METHODS, Box, IouTracker

# How FER2013+ crops frame a face, measured with this project's RetinaFace on 352 real
# FER2013+ test crops (medians, as fractions of the crop's side): eye distance 0.3645, eye-centre
# to mouth-centre distance 0.3785, the point halfway between eye centre and mouth centre at
# (0.504, 0.568); the larger of the two size estimates is 1.052× the side (median). The box is no
# guide: on these tight crops it runs past the crop's edges. The `original` variant's models were
# trained on such crops, so live faces are cut out alike.
FER_EYE_DISTANCE = 0.3645
FER_EYE_MOUTH = 0.3785
FER_LARGER_ESTIMATE = 1.052
FER_FACE_CENTER = (0.504, 0.568)


@dataclass(frozen=True)
class RealtimeSettings:
    """The `realtime` group of params.yaml."""

    threshold: float = 0.4  # below this smoothed top probability: "not detected"
    smoothing: str = "ema"  # ema | window | none
    ema_alpha: float = 0.5
    window: int = 5
    iou_match: float = 0.3
    detect_score: float = 0.7
    detect_max_side: int = 640  # larger frames are shrunk to this for detection only
    max_missed: int = 5  # frames a face may go undetected and keep its id

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"realtime.threshold={self.threshold} must lie in [0, 1]")
        if self.smoothing not in SMOOTHING_METHODS:
            raise ValueError(
                f"realtime.smoothing={self.smoothing!r}; choose one of {SMOOTHING_METHODS}"
            )
        if not 0.0 <= self.detect_score <= 1.0:
            raise ValueError(f"realtime.detect_score={self.detect_score} must lie in [0, 1]")
        if self.detect_max_side < 64:
            raise ValueError(f"realtime.detect_max_side={self.detect_max_side} is below 64")

    @classmethod
    def from_params(cls, group: dict[str, Any]) -> RealtimeSettings:
        """From params.yaml's `realtime` group; keys this class does not use are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in group.items() if k in known})

    @classmethod
    def load(cls, params_file: str | Path = "params.yaml", **overrides: Any) -> RealtimeSettings:
        """params.yaml's settings when run inside the project, else the defaults; then overrides
        (None values are ignored)."""
        from ferlab.config import load_params

        group: dict[str, Any] = {}
        if Path(params_file).is_file():
            group = dict(load_params(params_file).get("realtime") or {})
        group.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_params(group)


@dataclass
class FaceResult:
    """One face in one frame, after smoothing."""

    face_id: int
    box: Box
    score: float  # detector confidence
    probs: np.ndarray  # smoothed class probabilities (canonical order)
    raw_probs: np.ndarray  # this frame's probabilities
    label: str  # a class, or NOT_DETECTED when the smoothed top probability is low
    confidence: float  # smoothed top probability


def to_gray(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    raise ValueError(f"expected a grayscale or BGR image, got shape {image.shape}")


def fer_crop(gray: np.ndarray, landmarks: np.ndarray, size: int) -> np.ndarray:
    """The square around a face framed like a FER2013+ crop, size×size uint8, from its five
    landmarks (no rotation, as FER2013+ crops are not rotated either).

    The side follows the larger of the eye-distance and eye-to-mouth estimates, so a turned
    (yaw) or tilted (pitch) head does not shrink the crop; parts outside the image repeat its
    edge pixels.
    """
    points = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    eyes, mouth = points[:2].mean(axis=0), points[3:].mean(axis=0)
    larger = max(
        float(np.linalg.norm(points[0] - points[1])) / FER_EYE_DISTANCE,
        float(np.linalg.norm(mouth - eyes)) / FER_EYE_MOUTH,
    )
    side = max(larger / FER_LARGER_ESTIMATE, 2.0)
    cx, cy = (eyes + mouth) / 2
    x0 = round(cx - FER_FACE_CENTER[0] * side)
    y0 = round(cy - FER_FACE_CENTER[1] * side)
    s = round(side)
    height, width = gray.shape
    pad = max(0, -x0, -y0, x0 + s - width, y0 + s - height)
    if pad:
        gray = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x0, y0 = x0 + pad, y0 + pad
    return plain_crop(gray[y0 : y0 + s, x0 : x0 + s], size)


def face_crop(gray: np.ndarray, face: Face, size: int, variant: str) -> np.ndarray:
    """A detected face prepared like the model's training faces (its `variant`)."""
    if variant == "retinaface":
        return align_face(gray, face.landmarks, size)
    return fer_crop(gray, face.landmarks, size)


def detect_faces(detector: FaceDetector, image: np.ndarray, max_side: int) -> list[Face]:
    """Faces in `image`, detected on a copy shrunk to `max_side` when larger (for speed);
    coordinates are in the full image's pixels."""
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1.0:
        return detector.detect(image)
    small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    sx, sy = width / small.shape[1], height / small.shape[0]
    return [
        Face(
            box=(f.box[0] * sx, f.box[1] * sy, f.box[2] * sx, f.box[3] * sy),
            score=f.score,
            landmarks=f.landmarks * [sx, sy],
        )
        for f in detector.detect(small)
    ]


def label_of(probs: np.ndarray, threshold: float) -> tuple[str, float]:
    """(class name or NOT_DETECTED, top probability)."""
    top = int(np.argmax(probs))
    confidence = float(probs[top])
    return (CLASSES[top] if confidence >= threshold else NOT_DETECTED), confidence


class FramePipeline:
    """Everything done to one frame; keeps the tracker's state between frames."""

    def __init__(
        self,
        classifier: Any,
        settings: RealtimeSettings | None = None,
        detector: FaceDetector | None = None,
    ) -> None:
        self.classifier = classifier
        self.settings = settings or RealtimeSettings()
        self.detector = detector or FaceDetector(score_threshold=self.settings.detect_score)
        self.variant = str(classifier.meta.get("variant", "original"))
        self.input_size = int(classifier.input_size)
        self.tracker = self._new_tracker()

    def _new_tracker(self) -> IouTracker:
        s = self.settings
        return IouTracker(s.iou_match, s.smoothing, s.ema_alpha, s.window, s.max_missed)

    def reset(self) -> None:
        """Forget all faces (a new video)."""
        self.tracker = self._new_tracker()

    def crops(self, frame: np.ndarray) -> tuple[list[Face], np.ndarray]:
        """Detected faces and their model-ready crops (N×S×S uint8)."""
        faces = detect_faces(self.detector, frame, self.settings.detect_max_side)
        gray = to_gray(frame)
        size = self.input_size
        crops = [face_crop(gray, f, size, self.variant) for f in faces]
        return faces, np.stack(crops) if crops else np.zeros((0, size, size), np.uint8)

    def process(self, frame: np.ndarray) -> list[FaceResult]:
        faces, crops = self.crops(frame)
        probs = (
            self.classifier.predict_proba(crops)
            if len(faces)
            else np.zeros((0, len(CLASSES)), np.float32)
        )
        tracked = self.tracker.update([f.box for f in faces], probs)
        results = []
        for face, raw, (face_id, smoothed) in zip(faces, probs, tracked, strict=True):
            label, confidence = label_of(smoothed, self.settings.threshold)
            results.append(
                FaceResult(face_id, face.box, face.score, smoothed, raw, label, confidence)
            )
        return results
