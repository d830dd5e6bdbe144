"""Frame sources (video files, cameras), the frame loop, and its file outputs.

Outputs never look finished when they are not: the CSV timeline is written to `<name>.partial`
with every frame's rows flushed as they come, and renamed to `<name>` when the loop ends (also
when the source fails mid-way: it then holds every frame processed). The annotated video is
likewise written beside its target and renamed at the end.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import cv2
import numpy as np

from ferlab.classes import CLASSES
from ferlab.realtime.overlay import draw_overlay
from ferlab.realtime.runtime import FaceResult, FramePipeline

NO_FACE = "no face"  # the label of a timeline row for a frame where no face was found
TIMELINE_COLUMNS: tuple[str, ...] = (
    "frame",
    "time_s",
    "face_id",
    "box_x",
    "box_y",
    "box_w",
    "box_h",
    "label",
    "confidence",
    *CLASSES,
)
# A camera that returns no frame this many times in a row is taken to be gone.
CAMERA_RETRIES = 20
CAMERA_RETRY_WAIT_S = 0.05
# Container frame counts can be off by a frame or two; fewer frames than this is a truncation.
FRAME_COUNT_SLACK = 2

Log = Callable[[str], None]

# OpenCV and FFmpeg log their own lines for a missing camera or an undecodable file; the loop
# reports those cases in one clear message instead. FFmpeg reads this when a capture opens.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET


@contextmanager
def _quiet_opencv() -> Iterator[None]:
    previous = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(previous)


class StreamError(RuntimeError):
    """A camera or video that cannot be opened or read."""


class FrameSource:
    """A video file or a camera, read frame by frame (BGR uint8)."""

    def __init__(self, spec: str | int) -> None:
        spec_text = str(spec).strip()
        self.is_camera = spec_text.isdigit()
        if self.is_camera:
            self.name = f"camera {spec_text}"
            with _quiet_opencv():
                self.capture = cv2.VideoCapture(int(spec_text))
            if not self.capture.isOpened():
                raise StreamError(
                    f"camera {spec_text} could not be opened: it does not exist, is unplugged "
                    "or is used by another program (list cameras with `ls /dev/video*`), or "
                    "pass a video file to --device"
                )
        else:
            path = Path(spec_text)
            self.name = str(path)
            if not path.is_file():
                raise StreamError(
                    f"{path}: no such video file (give a file path, or a camera number)"
                )
            with _quiet_opencv():
                self.capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
            if not self.capture.isOpened():
                raise StreamError(
                    f"{path}: cannot be decoded as a video (corrupt, truncated or an "
                    "unsupported format); re-encode it, e.g. `ffmpeg -i IN -c:v libx264 OUT.mp4`"
                )
        fps = float(self.capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 0.0 < fps < 1000.0 else 30.0
        count = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.expected_frames: int | None = count if count > 0 and not self.is_camera else None

    def read(self) -> np.ndarray | None:
        """The next frame, or None when the source has no more (end, failure, unplugged)."""
        attempts = CAMERA_RETRIES if self.is_camera else 1
        for attempt in range(attempts):
            try:
                ok, frame = self.capture.read()
            except cv2.error:
                ok, frame = False, None
            if ok and frame is not None and frame.size:
                return frame
            if attempt + 1 < attempts:
                time.sleep(CAMERA_RETRY_WAIT_S)
        return None

    def release(self) -> None:
        self.capture.release()


class Sink(Protocol):
    def write(
        self, index: int, time_s: float, results: Sequence[FaceResult], annotated: np.ndarray
    ) -> bool:
        """Take one processed frame; False asks the loop to stop (e.g. a window closed)."""
        ...

    def close(self) -> None: ...


def _number(value: float) -> str:
    return f"{value:.2f}"


class TimelineWriter:
    """The per-frame CSV: one row per face (or one `no face` row), flushed every frame."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self._file: IO[str] | None = self.partial.open("w", newline="")
        self._writer = csv.writer(self._file)
        self._writer.writerow(TIMELINE_COLUMNS)
        self.rows = 0

    def write(
        self, index: int, time_s: float, results: Sequence[FaceResult], annotated: np.ndarray
    ) -> bool:
        if not results:
            self._writer.writerow([index, f"{time_s:.3f}", "", "", "", "", "", NO_FACE, ""])
            self.rows += 1
        for r in results:
            self._writer.writerow(
                [
                    index,
                    f"{time_s:.3f}",
                    r.face_id,
                    *(_number(v) for v in r.box),
                    r.label,
                    f"{r.confidence:.4f}",
                    *(f"{p:.4f}" for p in r.probs),
                ]
            )
            self.rows += 1
        assert self._file is not None
        self._file.flush()
        return True

    def discard(self) -> None:
        """Remove the unfinished file (nothing was to be processed: a wrong path)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self.partial.unlink(missing_ok=True)

    def close(self) -> None:
        """Finish the file: everything processed is in it, under its final name."""
        if self._file is None:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        os.replace(self.partial, self.path)


class VideoFileSink:
    """Annotated frames into a video file (mp4v for .mp4, MJPG otherwise), renamed at the end."""

    def __init__(self, path: str | Path, fps: float) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The container is chosen from the extension, so the temporary name keeps it.
        self.partial = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self.fps = fps
        self.frames = 0
        self._writer: cv2.VideoWriter | None = None

    def write(
        self, index: int, time_s: float, results: Sequence[FaceResult], annotated: np.ndarray
    ) -> bool:
        if self._writer is None:
            height, width = annotated.shape[:2]
            codec = "mp4v" if self.path.suffix.lower() in (".mp4", ".m4v", ".mov") else "MJPG"
            self._writer = cv2.VideoWriter(
                str(self.partial), cv2.VideoWriter.fourcc(*codec), self.fps, (width, height)
            )
            if not self._writer.isOpened():
                raise StreamError(
                    f"{self.path}: cannot write a video here (codec {codec}); "
                    "use an .mp4 or .avi name in a writable folder"
                )
        self._writer.write(annotated)
        self.frames += 1
        return True

    def close(self) -> None:
        if self._writer is None:
            return
        self._writer.release()
        self._writer = None
        os.replace(self.partial, self.path)


@dataclass
class StreamResult:
    """What a frame loop did, and how it ended."""

    source: str
    frames: int
    faces: int
    seconds: float
    complete: bool  # False when the source failed before its end (truncated, unplugged)
    message: str
    expected_frames: int | None = None

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def run_stream(
    source: FrameSource,
    pipeline: FramePipeline,
    sinks: Sequence[Sink],
    max_frames: int | None = None,
    log: Log = print,
    log_every_s: float = 5.0,
) -> StreamResult:
    """Process frames until the source ends, fails, a sink asks to stop, or Ctrl+C.

    Sinks are closed (their files finalised) however the loop ends.
    """
    pipeline.reset()
    start = last_log = time.perf_counter()
    index = faces = 0
    fps: float | None = None
    previous: float | None = None
    ended = "end"
    try:
        while max_frames is None or index < max_frames:
            frame = source.read()
            if frame is None:
                ended = "no frame"
                break
            results = pipeline.process(frame)
            now = time.perf_counter()
            if previous is not None:
                # The whole loop's rate (read, detect, classify, draw, write), smoothed.
                rate = 1.0 / max(now - previous, 1e-6)
                fps = rate if fps is None else 0.9 * fps + 0.1 * rate
            previous = now
            time_s = now - start if source.is_camera else index / source.fps
            annotated = draw_overlay(frame, results, fps)
            keep_going = True
            for sink in sinks:
                keep_going = sink.write(index, time_s, results, annotated) and keep_going
            index += 1
            faces += len(results)
            if now - last_log >= log_every_s:
                last_log = now
                total = f"/{source.expected_frames}" if source.expected_frames else ""
                log(
                    f"{source.name}: frame {index}{total}, {index / (now - start):.1f} FPS, "
                    f"{len(results)} face(s) in view"
                )
            if not keep_going:
                ended = "stopped"
                break
    except KeyboardInterrupt:
        ended = "interrupted"
    finally:
        for sink in sinks:
            sink.close()
        source.release()
    seconds = time.perf_counter() - start
    complete, message = _ending(source, ended, index)
    return StreamResult(
        source.name, index, faces, seconds, complete, message, source.expected_frames
    )


def _ending(source: FrameSource, ended: str, frames: int) -> tuple[bool, str]:
    if ended == "interrupted":
        return True, f"{source.name}: stopped by Ctrl+C after {frames} frames"
    if ended == "stopped" or ended == "end":
        return True, f"{source.name}: stopped after {frames} frames"
    if source.is_camera:
        return False, (
            f"{source.name} stopped delivering frames after {frames} frames "
            "(unplugged, or taken by another program); outputs hold every frame processed"
        )
    if frames == 0:
        return False, (
            f"{source.name}: no frame could be decoded (corrupt or truncated file); "
            "re-encode it, e.g. `ffmpeg -i IN -c:v libx264 OUT.mp4`"
        )
    expected = source.expected_frames
    if expected is not None and frames + FRAME_COUNT_SLACK < expected:
        return False, (
            f"{source.name}: decoding failed after {frames} of {expected} frames (truncated "
            "or corrupt file); outputs hold the frames before that point"
        )
    return True, f"{source.name}: {frames} frames"


def open_source(
    spec: str | int, out_csv: str | Path | None
) -> tuple[FrameSource, TimelineWriter | None]:
    """Open a camera or video file, and the CSV timeline if asked for.

    When the source cannot be opened, a CSV asked for is still left complete (header only:
    nothing was processed), unless the source is a file path that does not exist (a typo).
    """
    timeline = TimelineWriter(out_csv) if out_csv else None
    try:
        source = FrameSource(spec)
    except StreamError:
        if timeline is not None:
            if str(spec).strip().isdigit() or Path(str(spec)).is_file():
                timeline.close()
            else:
                timeline.discard()
        raise
    return source, timeline


def annotate_video(
    video: str | Path,
    pipeline: FramePipeline,
    out_video: str | Path | None = None,
    out_csv: str | Path | None = None,
    max_frames: int | None = None,
    log: Log = print,
) -> StreamResult:
    """Run the pipeline over a video file: annotated video and/or per-frame CSV timeline.

    An undecodable file still gets its (header-only) CSV, so scripts find a complete file.
    """
    source, timeline = open_source(str(video), out_csv)
    sinks: list[Sink] = [timeline] if timeline is not None else []
    if out_video:
        sinks.append(VideoFileSink(out_video, source.fps))
    return run_stream(source, pipeline, sinks, max_frames=max_frames, log=log)
