"""Keeping one id per face across frames (greedy IoU matching) and smoothing its probabilities."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

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
    id: int
    box: Box
    smoother: Smoother
    missed: int = 0  # consecutive frames without a matching detection
    seen: int = 0  # frames with a matching detection


class IouTracker:
    """Greedy IoU matching of each frame's boxes to the live tracks.

    A box joins the track it overlaps most (IoU ≥ `iou_match`, best pairs first); an unmatched
    box starts a new track with the next id; a track unmatched for more than `max_missed`
    consecutive frames is dropped, so a face that leaves and comes back later gets a new id.
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

    def update(self, boxes: list[Box], probs: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Match one frame's boxes (with their probabilities, N×C) to tracks.

        Returns (track id, smoothed probabilities) for each box, in the order given.
        """
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
            track.box, track.missed = box, 0
            track.seen += 1
            out.append((track.id, track.smoother.update(probs[bi])))
        matched = {id(t) for t in owner.values()}
        for track in self.tracks:
            if id(track) not in matched:
                track.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        return out
