"""Keeping one id per face across frames (greedy IoU matching) and smoothing its probabilities."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

Box = tuple[float, float, float, float]  # x, y, w, h
SMOOTHING_METHODS: tuple[str, ...] = ("ema", "window", "none")


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x, y, w, h) boxes; 0 for empty boxes."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = min(ax + aw, bx + bw) - max(ax, bx)
    ih = min(ay + ah, by + bh) - max(ay, by)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return float(inter / union) if union > 0 else 0.0


class Smoother:
    """Temporal smoothing of one face's class probabilities.

    - `ema`: s_t = alpha · p_t + (1 − alpha) · s_{t−1}, starting from s_0 = p_0 (alpha is the
      weight of the newest frame: 1 means no smoothing).
    - `window`: the mean of the last `window` frames' probabilities.
    - `none`: the current frame's probabilities.
    """

    def __init__(self, method: str = "ema", alpha: float = 0.5, window: int = 5) -> None:
        if method not in SMOOTHING_METHODS:
            raise ValueError(f"realtime.smoothing={method!r}; choose one of {SMOOTHING_METHODS}")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"realtime.ema_alpha={alpha} must lie in (0, 1]")
        if window < 1:
            raise ValueError(f"realtime.window={window} must be at least 1")
        self.method = method
        self.alpha = float(alpha)
        self._state: np.ndarray | None = None
        self._recent: deque[np.ndarray] = deque(maxlen=int(window))

    def update(self, probs: np.ndarray) -> np.ndarray:
        probs = np.asarray(probs, dtype=np.float64)
        if self.method == "none":
            return probs.copy()
        if self.method == "window":
            self._recent.append(probs)
            return np.mean(self._recent, axis=0)
        if self._state is None:
            self._state = probs.copy()
        else:
            self._state = self.alpha * probs + (1.0 - self.alpha) * self._state
        return self._state.copy()


@dataclass
class Track:
    """One face followed over frames. `points` (e.g. its landmarks) move with its box; `raw`
    is its last classification, reused on frames where it is not classified again."""

    id: int
    box: Box
    smoother: Smoother
    missed: int = 0  # consecutive frames the face was not shown (undetected, or lost)
    seen: int = 0  # frames with a matching detection
    points: np.ndarray | None = None
    score: float = 0.0  # confidence of its last detection
    raw: np.ndarray | None = None  # probabilities of its last classification
    classified_box: Box | None = None  # where it was when last classified
    since_classified: int = 0  # frames since then
    tracked: bool = False  # its box this frame was moved by the tracker, not detected
    resumed: bool = False  # shown this frame after frames unseen


class IouTracker:
    """Greedy IoU matching of each frame's boxes to the live tracks.

    A box joins the track it overlaps most (IoU ≥ `iou_match`, best pairs first); an unmatched
    box starts a new track with the next id; a track unmatched for more than `max_missed`
    consecutive frames is dropped, so a face that leaves and comes back later gets a new id.

    Between detections, `coast` moves the shown tracks by their estimated motion instead; a
    track whose motion cannot be estimated (lost) is no longer shown, and is counted as missed
    like an undetected face, so the next detection can pick it up under its id. With detection every
    N frames, `max_missed` ≥ N lets a face be missed by one detection and keep its id.
    """

    def __init__(
        self,
        iou_match: float = 0.3,
        smoothing: str = "ema",
        ema_alpha: float = 0.5,
        window: int = 5,
        max_missed: int = 5,
    ) -> None:
        if not 0.0 < iou_match <= 1.0:
            raise ValueError(f"realtime.iou_match={iou_match} must lie in (0, 1]")
        Smoother(smoothing, ema_alpha, window)  # validates the settings up front
        self.iou_match = float(iou_match)
        self.smoothing, self.ema_alpha, self.window = smoothing, ema_alpha, window
        self.max_missed = int(max_missed)
        self.tracks: list[Track] = []
        self.frame = -1
        self._next_id = 1

    def assign(
        self,
        boxes: Sequence[Box],
        points: Sequence[np.ndarray | None] | None = None,
        scores: Sequence[float] | None = None,
    ) -> list[Track]:
        """Match one frame's detected boxes to tracks (re-anchoring them there); the track of
        each box, in the order given. Probabilities are not touched."""
        self.frame += 1
        pairs = sorted(
            (
                (overlap, ti, bi)
                for ti, track in enumerate(self.tracks)
                for bi, box in enumerate(boxes)
                if (overlap := iou(track.box, box)) >= self.iou_match
            ),
            key=lambda p: (-p[0], p[1], p[2]),
        )
        owner: dict[int, Track] = {}
        taken: set[int] = set()
        for _, ti, bi in pairs:
            if ti not in taken and bi not in owner:
                taken.add(ti)
                owner[bi] = self.tracks[ti]
        for bi, box in enumerate(boxes):
            if bi not in owner:
                track = Track(
                    self._next_id, box, Smoother(self.smoothing, self.ema_alpha, self.window)
                )
                self._next_id += 1
                self.tracks.append(track)
                owner[bi] = track
        out = []
        for bi, box in enumerate(boxes):
            track = owner[bi]
            track.resumed = track.missed > 0
            track.box, track.missed, track.tracked = box, 0, False
            track.points = None if points is None else points[bi]
            track.score = 0.0 if scores is None else float(scores[bi])
            track.seen += 1
            out.append(track)
        matched = {id(t) for t in out}
        self._age([t for t in self.tracks if id(t) not in matched])
        return out

    def coast(self, motion_of: Callable[[Box], Motion | None]) -> list[Track]:
        """A frame without detection: each shown track moved by `motion_of(its box)` (None:
        lost). The tracks still shown, oldest first."""
        self.frame += 1
        shown, unseen = [], []
        for track in self.tracks:
            motion = motion_of(track.box) if track.missed == 0 else None
            if motion is None:
                unseen.append(track)
                continue
            if track.points is not None:
                track.points = motion.apply_points(track.points, track.box)
            track.box, track.tracked, track.resumed = motion.apply(track.box), True, False
            shown.append(track)
        self._age(unseen)
        return shown

    def _age(self, unseen: list[Track]) -> None:
        for track in unseen:
            track.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]

    def update(self, boxes: list[Box], probs: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Match one frame's boxes (with their probabilities, N×C) to tracks and smooth.

        Returns (track id, smoothed probabilities) for each box, in the order given.
        """
        return [
            (track.id, track.smoother.update(p))
            for track, p in zip(self.assign(boxes), probs, strict=True)
        ]


# --- moving boxes between detections -------------------------------------------------------

TRACK_METHODS: tuple[str, ...] = ("flow", "template")
FLOW_GRID = 7  # points per side of the grid tracked inside a face
MIN_FLOW_POINTS = 6  # fewer surviving points than this: the face is lost
FLOW_FB_ERROR = 1.0  # px: a point that does not return to its start within this is dropped
TEMPLATE_MIN_SCORE = 0.6  # normalised correlation below this: the face is lost
TRACK_SIDE = 64  # faces larger than this are tracked on a copy shrunk to it (same result, cheaper)


@dataclass(frozen=True)
class Motion:
    """How a face moved from one frame to the next: a shift of its box centre (px) and a scale
    about that centre."""

    dx: float
    dy: float
    scale: float = 1.0

    def apply(self, box: Box) -> Box:
        x, y, w, h = box
        cx, cy = x + w / 2 + self.dx, y + h / 2 + self.dy
        w, h = w * self.scale, h * self.scale
        return (cx - w / 2, cy - h / 2, w, h)

    def apply_points(self, points: np.ndarray, box: Box) -> np.ndarray:
        """Points (N×2, e.g. landmarks) moved with the box `box` they belong to."""
        x, y, w, h = box
        centre = np.array([x + w / 2, y + h / 2])
        return (np.asarray(points, np.float64) - centre) * self.scale + centre + [self.dx, self.dy]


def _region(box: Box, margin: float, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """The box grown by `margin` × its size on each side, clipped to the image: x0, y0, x1, y1."""
    x, y, w, h = box
    height, width = shape[:2]
    x0, y0 = max(0, int(x - margin * w)), max(0, int(y - margin * h))
    x1, y1 = (
        min(width, int(np.ceil(x + w + margin * w))),
        min(height, int(np.ceil(y + h + margin * h))),
    )
    return x0, y0, x1, y1


def flow_motion(prev: np.ndarray, cur: np.ndarray, box: Box) -> Motion | None:
    """The face's motion by sparse optical flow (pyramidal Lucas-Kanade) of a grid of points
    inside its box, or None when it is lost.

    Only a window around the face is processed, shrunk so the face is about TRACK_SIDE px. The
    points cover the middle of the box (its edges hold background, which moves differently);
    each is tracked forward and back, and one that does not return to where it started (a flat
    patch, an occlusion) is dropped. Shift and scale are medians over the survivors (of the
    displacements, of the ratios of pairwise distances), so a few bad points do not move the box.
    """
    x0, y0, x1, y1 = _region(box, 0.3, prev.shape)
    if x1 - x0 < 8 or y1 - y0 < 8:
        return None
    bx, by, bw, bh = box
    shrink = min(1.0, TRACK_SIDE / max(bw, bh, 1.0))
    a, b = prev[y0:y1, x0:x1], cur[y0:y1, x0:x1]
    if shrink < 1.0:
        a = cv2.resize(a, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_LINEAR)
        b = cv2.resize(b, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_LINEAR)
    xs = (bx - x0 + bw * np.linspace(0.15, 0.85, FLOW_GRID)) * shrink
    ys = (by - y0 + bh * np.linspace(0.15, 0.85, FLOW_GRID)) * shrink
    start = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 1, 2).astype(np.float32)
    params = {"winSize": (9, 9), "maxLevel": 2}
    end, ok, _ = cv2.calcOpticalFlowPyrLK(a, b, start, None, **params)
    back, ok_back, _ = cv2.calcOpticalFlowPyrLK(b, a, end, None, **params)
    error = np.linalg.norm((back - start).reshape(-1, 2), axis=1)
    good = (ok.ravel() == 1) & (ok_back.ravel() == 1) & (error < FLOW_FB_ERROR)
    if good.sum() < MIN_FLOW_POINTS:
        return None
    p, q = start.reshape(-1, 2)[good], end.reshape(-1, 2)[good]
    dx, dy = np.median(q - p, axis=0) / shrink
    i, j = np.triu_indices(len(p), 1)
    before = np.linalg.norm(p[i] - p[j], axis=1)
    after = np.linalg.norm(q[i] - q[j], axis=1)
    spread = before > 2.0
    scale = float(np.median(after[spread] / before[spread])) if spread.any() else 1.0
    return Motion(float(dx), float(dy), scale)


def template_motion(prev: np.ndarray, cur: np.ndarray, box: Box) -> Motion | None:
    """The face's motion by matching its middle (from `prev`) in a window around it in `cur`
    (normalised cross-correlation; shift only), or None when the best match is poor."""
    bx, by, bw, bh = box
    inner = (bx + 0.15 * bw, by + 0.15 * bh, 0.7 * bw, 0.7 * bh)
    tx0, ty0, tx1, ty1 = _region(inner, 0.0, prev.shape)
    sx0, sy0, sx1, sy1 = _region(inner, 0.35, cur.shape)
    if tx1 - tx0 < 8 or ty1 - ty0 < 8:
        return None
    shrink = min(1.0, TRACK_SIDE / max(bw, bh, 1.0))
    template, window = prev[ty0:ty1, tx0:tx1], cur[sy0:sy1, sx0:sx1]
    if shrink < 1.0:
        template = cv2.resize(template, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_AREA)
        window = cv2.resize(window, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_AREA)
    if window.shape[0] < template.shape[0] or window.shape[1] < template.shape[1]:
        return None
    scores = cv2.matchTemplate(window, template, cv2.TM_CCOEFF_NORMED)
    _, peak, _, (mx, my) = cv2.minMaxLoc(scores)
    if peak < TEMPLATE_MIN_SCORE:
        return None
    return Motion(mx / shrink + sx0 - tx0, my / shrink + sy0 - ty0)


def estimate_motion(method: str, prev: np.ndarray, cur: np.ndarray, box: Box) -> Motion | None:
    """`flow_motion` or `template_motion` (grayscale uint8 frames of one size)."""
    if method == "flow":
        return flow_motion(prev, cur, box)
    if method == "template":
        return template_motion(prev, cur, box)
    raise ValueError(f"realtime.track_method={method!r}; choose one of {TRACK_METHODS}")
