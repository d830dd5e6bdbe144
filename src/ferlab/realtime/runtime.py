"""The per-frame pipeline: detect (every few frames; tracked in between) → crop → classify
(only faces that need it) → track + smooth → threshold, with the time of each stage."""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

from ferlab.classes import CLASSES, NOT_DETECTED
from ferlab.faces.align import align_face, plain_crop
from ferlab.faces.detect import Face, FaceDetector
from ferlab.realtime.tracker import (
    SMOOTHING_METHODS,
    TRACK_METHODS,
    Box,
    IouTracker,
    Track,
    estimate_motion,
)

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


# Named sets of settings for a kind of machine; params.yaml's `realtime.profiles` may change
# them. `pi`: one core (Raspberry-Pi-class): a smaller detector input, rarer detection and
# classification.
PROFILES: dict[str, dict[str, Any]] = {
    "default": {},
    "pi": {
        "threads": 1,
        "detect_max_side": 320,
        "detect_every": 6,
        "classify_every": 3,
        "max_missed": 11,  # a face missed by one detection keeps its id
    },
}


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
    max_missed: int = 5  # frames a face may go unseen (undetected, or lost) and keep its id
    detect_every: int = 3  # full detection every N frames; tracked boxes in between
    track_method: str = "flow"  # flow | template: how boxes move between detections
    classify_every: int = 2  # a tracked face is classified again after this many frames...
    classify_shift: float = 0.15  # ...or when its box moved or grew by this fraction of its side
    threads: int = 0  # CPU threads for the whole loop; 0: every core this process may use
    profile: str = "default"  # a key of PROFILES (see from_params)

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
        for name in ("detect_every", "classify_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"realtime.{name}={getattr(self, name)} must be at least 1")
        if self.track_method not in TRACK_METHODS:
            raise ValueError(
                f"realtime.track_method={self.track_method!r}; choose one of {TRACK_METHODS}"
            )
        if self.classify_shift < 0:
            raise ValueError(f"realtime.classify_shift={self.classify_shift} must be 0 or more")
        if self.threads < 0:
            raise ValueError(f"realtime.threads={self.threads} must be 0 (all cores) or more")
        if self.profile not in PROFILES:
            raise ValueError(f"realtime.profile={self.profile!r}; choose one of {list(PROFILES)}")

    @classmethod
    def from_params(cls, group: dict[str, Any], **overrides: Any) -> RealtimeSettings:
        """From params.yaml's `realtime` group, then the values of its profile (PROFILES,
        updated by the group's `profiles`), then `overrides` (None values are ignored); keys
        this class does not use are ignored."""
        given = {k: v for k, v in overrides.items() if v is not None}
        profile = str(given.get("profile", group.get("profile", "default")))
        if profile not in PROFILES:
            raise ValueError(f"realtime.profile={profile!r}; choose one of {list(PROFILES)}")
        custom = (group.get("profiles") or {}).get(profile) or {}
        merged = {**group, **PROFILES[profile], **custom, **given, "profile": profile}
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in merged.items() if k in known})

    @classmethod
    def load(cls, params_file: str | Path = "params.yaml", **overrides: Any) -> RealtimeSettings:
        """params.yaml's settings when run inside the project, else the defaults; then
        `profile`, then overrides (None values are ignored)."""
        from ferlab.config import load_params

        group: dict[str, Any] = {}
        if Path(params_file).is_file():
            group = dict(load_params(params_file).get("realtime") or {})
        return cls.from_params(group, **overrides)

    def total_threads(self) -> int:
        """`threads`, or the cores this process may run on when it is 0."""
        if self.threads:
            return int(self.threads)
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            return os.cpu_count() or 1


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
    tracked: bool = False  # the box was moved by the tracker on this frame, not detected
    classified: bool = True  # classified on this frame (else its last probabilities reused)


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


TIMELINE_DECIMALS = 4  # the decimals of a probability in the live loop's timeline CSV


def label_of(probs: np.ndarray, threshold: float, decimals: int) -> tuple[str, float]:
    """(class name or NOT_DETECTED, top probability rounded to `decimals`, the precision the
    caller writes). The threshold applies to the rounded value, so a written row never shows
    a confidence of 0.4000 beside "not detected" at threshold 0.4."""
    top = int(np.argmax(probs))
    confidence = round(float(probs[top]), decimals)
    return (CLASSES[top] if confidence >= threshold else NOT_DETECTED), confidence


STAGES: tuple[str, ...] = ("decode", "detect", "track", "crop", "classify", "draw", "write")


class StageTimes:
    """Wall-clock seconds spent in each stage of the loop, and what the loop did, since the
    last reset. The pipeline times its stages; the frame loop adds decode, draw and write."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self.frames = 0
        self.detections = 0  # frames on which the detector ran
        self.faces = 0  # faces shown, summed over frames
        self.tracked = 0  # of those, boxes moved by the tracker
        self.classified = 0  # of those, faces classified (the rest reused probabilities)

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] += seconds

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def summary(self) -> dict[str, Any]:
        """Mean ms per frame of each stage, and the counts, for reports."""
        n = max(self.frames, 1)
        per_frame = {k: round(v * 1000 / n, 3) for k, v in self.seconds.items()}
        return {
            "frames": self.frames,
            "ms_per_frame": per_frame,
            "total_ms_per_frame": round(sum(per_frame.values()), 3),
            "detect_frames": self.detections,
            "faces": self.faces,
            "tracked_faces": self.tracked,
            "classified_faces": self.classified,
        }


def session_options(threads: int) -> ort.SessionOptions:
    """ONNX Runtime options for one of the loop's sessions.

    The detector and the classifier run one after the other, so each may use all the loop's
    threads; but ONNX Runtime's workers spin-wait after a run by default, and a spinning pool
    steals the cores the other session (and decoding, drawing) then needs. Measured on the
    2-core machine under load: detect + classify 327 ms a frame with spinning, 86 ms without.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def sized_detector(detector: FaceDetector, threads: int) -> FaceDetector:
    """A copy of `detector` whose ONNX Runtime session uses `threads` threads, not spinning."""
    import retinaface

    sized = copy.copy(detector)
    sized.session = ort.InferenceSession(
        retinaface.WEIGHTS,
        sess_options=session_options(threads),
        providers=["CPUExecutionProvider"],
    )
    return sized


def sized_classifier(classifier: Any, threads: int) -> Any:
    """`classifier` running on `threads` threads: an ONNX model gets a copy with its own
    session (the caller's is untouched); PyTorch's thread count is process-wide."""
    from ferlab.inference import OnnxClassifier, TorchClassifier

    if isinstance(classifier, OnnxClassifier):
        sized = copy.copy(classifier)
        sized.session = ort.InferenceSession(
            str(classifier.path),
            sess_options=session_options(threads),
            providers=["CPUExecutionProvider"],
        )
        return sized
    if isinstance(classifier, TorchClassifier) and classifier.device == "cpu":
        import torch

        torch.set_num_threads(threads)
    return classifier


def requested_threads(settings: RealtimeSettings, classifier: Any) -> int:
    """The loop's threads: `settings.threads`; when 0, a thread count the classifier was made
    with (`ferlab video --threads N`; PyTorch's for a checkpoint), else every core this process
    may use."""
    from ferlab.inference import TorchClassifier

    if settings.threads:
        return settings.threads
    if isinstance(classifier, TorchClassifier):
        import torch

        return torch.get_num_threads()  # what load_classifier(threads=...) set, or PyTorch's
    session = getattr(classifier, "session", None)
    if session is not None:
        given = session.get_session_options().intra_op_num_threads
        if given > 0:
            return int(given)
    return settings.total_threads()


class FramePipeline:
    """Everything done to one frame; keeps the tracks between frames.

    Only the work that changes is done: the detector runs every `detect_every` frames (and on
    the frame after a track was lost); in between, each shown face's box (and landmarks) is
    moved by its estimated motion (`track_method`). A face is classified when it is new or seen
    again after frames unseen, when its box moved or grew by more than `classify_shift` of its
    side since its last classification, or after `classify_every` frames; otherwise its last
    probabilities are reused, and smoothing applies to them as to fresh ones.

    Both ONNX Runtime sessions (detector and classifier) are sized to the loop's threads
    (`requested_threads`), copies being made of the objects given; OpenCV is set to as many.
    `timing` holds the time spent per stage since the last `reset`.
    """

    def __init__(
        self,
        classifier: Any,
        settings: RealtimeSettings | None = None,
        detector: FaceDetector | None = None,
    ) -> None:
        self.settings = settings or RealtimeSettings()
        self.threads = requested_threads(self.settings, classifier)
        self.classifier = sized_classifier(classifier, self.threads)
        detector = detector or FaceDetector(score_threshold=self.settings.detect_score)
        self.detector = sized_detector(detector, self.threads)
        cv2.setNumThreads(self.threads)
        self.variant = str(classifier.meta.get("variant", "original"))
        self.input_size = int(classifier.input_size)
        self.timing = StageTimes()
        self.reset()

    def _new_tracker(self) -> IouTracker:
        s = self.settings
        return IouTracker(s.iou_match, s.smoothing, s.ema_alpha, s.window, s.max_missed)

    def reset(self) -> None:
        """Forget all faces and timings (a new video)."""
        self.tracker = self._new_tracker()
        self.timing.reset()
        self._previous: np.ndarray | None = None  # last frame, grayscale
        self._since_detection = 0
        self._lost = False  # a track was lost on the last frame

    def crops(self, frame: np.ndarray) -> tuple[list[Face], np.ndarray]:
        """Detected faces and their model-ready crops (N×S×S uint8)."""
        faces = detect_faces(self.detector, frame, self.settings.detect_max_side)
        gray = to_gray(frame)
        size = self.input_size
        crops = [face_crop(gray, f, size, self.variant) for f in faces]
        return faces, np.stack(crops) if crops else np.zeros((0, size, size), np.uint8)

    def _needs_class(self, track: Track) -> bool:
        if track.raw is None or track.resumed or track.classified_box is None:
            return True
        if track.since_classified >= self.settings.classify_every:
            return True
        x, y, w, h = track.box
        px, py, pw, ph = track.classified_box
        side = max(pw, ph, 1.0)
        shift = max(abs(x + w / 2 - px - pw / 2), abs(y + h / 2 - py - ph / 2)) / side
        growth = abs(max(w, h) / side - 1.0)
        return max(shift, growth) > self.settings.classify_shift

    def process(self, frame: np.ndarray) -> list[FaceResult]:
        s, timing = self.settings, self.timing
        with timing.stage("crop"):
            gray = to_gray(frame)
        detect = (
            self._previous is None
            or self._since_detection + 1 >= s.detect_every
            or self._lost
            or gray.shape != self._previous.shape
        )
        if detect:
            with timing.stage("detect"):
                faces = detect_faces(self.detector, frame, s.detect_max_side)
            with timing.stage("track"):
                tracks = self.tracker.assign(
                    [f.box for f in faces], [f.landmarks for f in faces], [f.score for f in faces]
                )
            self._since_detection, self._lost = 0, False
            timing.detections += 1
        else:
            previous = self._previous
            assert previous is not None
            with timing.stage("track"):
                shown_before = sum(t.missed == 0 for t in self.tracker.tracks)
                tracks = self.tracker.coast(
                    lambda box: estimate_motion(s.track_method, previous, gray, box)
                )
            self._since_detection += 1
            self._lost = len(tracks) < shown_before
        todo = [t for t in tracks if self._needs_class(t)]
        if todo:
            with timing.stage("crop"):
                crops = np.stack([self._crop(gray, t) for t in todo])
            with timing.stage("classify"):
                probs = self.classifier.predict_proba(crops)
            for track, p in zip(todo, probs, strict=True):
                track.raw, track.classified_box, track.since_classified = p, track.box, 0
        results = []
        with timing.stage("track"):
            fresh = {id(t) for t in todo}
            for track in tracks:
                assert track.raw is not None
                smoothed = track.smoother.update(track.raw)
                label, confidence = label_of(smoothed, s.threshold, TIMELINE_DECIMALS)
                results.append(
                    FaceResult(
                        track.id,
                        track.box,
                        track.score,
                        smoothed,
                        np.asarray(track.raw),
                        label,
                        confidence,
                        tracked=track.tracked,
                        classified=id(track) in fresh,
                    )
                )
                track.since_classified += 1
        self._previous = gray
        timing.frames += 1
        timing.faces += len(results)
        timing.tracked += sum(r.tracked for r in results)
        timing.classified += len(todo)
        return results

    def _crop(self, gray: np.ndarray, track: Track) -> np.ndarray:
        """The track's face cut out like the model's training faces, from its landmarks."""
        assert track.points is not None
        face = Face(box=track.box, score=track.score, landmarks=track.points)
        return face_crop(gray, face, self.input_size, self.variant)
