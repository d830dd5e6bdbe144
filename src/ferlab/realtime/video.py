"""Frame sources (video files, cameras), the frame loop, and its file outputs.

Outputs never look finished when they are not: the CSV timeline is written to `<name>.partial`
with every frame's rows flushed as they come, and renamed to `<name>` when the loop ends (also
when the source fails mid-way: it then holds every frame processed). The annotated video is
likewise written beside its target and renamed at the end. Ctrl+C (SIGINT) and `kill` (SIGTERM)
end the loop after the frame in progress, and the outputs are finalised as at the end of input.
An output that names an existing folder, or the input itself, is refused before anything is
opened.
"""

from __future__ import annotations

import csv
import errno
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Protocol

import cv2
import numpy as np

from ferlab.classes import CLASSES
from ferlab.io import OutputError, refuse_folder
from ferlab.realtime.overlay import draw_overlay
from ferlab.realtime.runtime import TIMELINE_DECIMALS, FaceResult, FramePipeline

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


def padded_row(values: Sequence[object], columns: Sequence[str]) -> list[object]:
    """A short row (e.g. `no face`) filled with empty fields to the header's width."""
    return [*values, *[""] * (len(columns) - len(values))]


class TimelineWriter:
    """The per-frame CSV: one row per face (or one `no face` row), flushed every frame."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        refuse_folder(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self._file: IO[str] | None = self.partial.open("w", newline="")
        # "\n", not the csv module's "\r\n": the same bytes on every platform and tool.
        self._writer = csv.writer(self._file, lineterminator="\n")
        self._writer.writerow(TIMELINE_COLUMNS)
        self.rows = 0

    def write(
        self, index: int, time_s: float, results: Sequence[FaceResult], annotated: np.ndarray
    ) -> bool:
        if not results:
            row = [index, f"{time_s:.3f}", "", "", "", "", "", NO_FACE]
            self._writer.writerow(padded_row(row, TIMELINE_COLUMNS))
            self.rows += 1
        for r in results:
            self._writer.writerow(
                [
                    index,
                    f"{time_s:.3f}",
                    r.face_id,
                    *(_number(v) for v in r.box),
                    r.label,
                    f"{r.confidence:.{TIMELINE_DECIMALS}f}",
                    *(f"{p:.{TIMELINE_DECIMALS}f}" for p in r.probs),
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
        refuse_folder(self.path)
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
            writer = cv2.VideoWriter(
                str(self.partial), cv2.VideoWriter.fourcc(*codec), self.fps, (width, height)
            )
            if not writer.isOpened():
                writer.release()
                self.partial.unlink(missing_ok=True)
                raise StreamError(
                    f"{self.path}: cannot write a video here (codec {codec}); "
                    "use an .mp4 or .avi name in a writable folder"
                )
            self._writer = writer
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


class StopRequest:
    """Ctrl+C (SIGINT) and `kill` (SIGTERM) as a request to stop after the frame in progress.

    Raising at once would tear the frame being written (half its CSV rows, a frame missing
    from the video); instead the loop sees `signal` set and ends as at the end of input, and
    the outputs are finalised. A second signal interrupts at once (KeyboardInterrupt; the
    outputs are still closed in `finally`). Handlers are installed only in the main thread,
    the only one Python delivers signals to, and restored on exit.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *_exc: object) -> None:
        for signum, previous in self._previous.items():
            # None: a handler not set from Python; the default is the closest restorable one.
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()


def run_stream(
    source: FrameSource,
    pipeline: FramePipeline,
    sinks: Sequence[Sink],
    max_frames: int | None = None,
    log: Log = print,
    log_every_s: float = 5.0,
    stop: StopRequest | None = None,
) -> StreamResult:
    """Process frames until the source ends, fails, a sink asks to stop, or SIGINT/SIGTERM.

    Sinks are closed (their files finalised) however the loop ends; the source is released.
    `stop` is the caller's StopRequest when it already holds the signals; else one is made.
    """
    if stop is not None:
        return _loop(source, pipeline, sinks, max_frames, log, log_every_s, stop)
    with StopRequest() as own:
        return _loop(source, pipeline, sinks, max_frames, log, log_every_s, own)


def _loop(
    source: FrameSource,
    pipeline: FramePipeline,
    sinks: Sequence[Sink],
    max_frames: int | None,
    log: Log,
    log_every_s: float,
    stop: StopRequest,
) -> StreamResult:
    pipeline.reset()
    timing = pipeline.timing  # decode, draw and write are timed here, the rest in the pipeline
    start = last_log = time.perf_counter()
    index = faces = 0
    fps: float | None = None
    previous: float | None = None
    ended = "end"
    try:
        while max_frames is None or index < max_frames:
            if stop.signal is not None:
                ended = stop.signal
                break
            read_at = time.perf_counter()
            frame = source.read()
            timing.add("decode", time.perf_counter() - read_at)
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
            drawn_at = time.perf_counter()
            timing.add("draw", drawn_at - now)
            keep_going = True
            for sink in sinks:
                keep_going = sink.write(index, time_s, results, annotated) and keep_going
            timing.add("write", time.perf_counter() - drawn_at)
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
        ended = "SIGINT"
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
    if ended == "SIGINT":
        return True, f"{source.name}: stopped by Ctrl+C after {frames} frames"
    if ended == "SIGTERM":
        return True, f"{source.name}: stopped by SIGTERM after {frames} frames"
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


def check_output_file(output: str | Path, inputs: Iterable[str | Path] = ()) -> None:
    """Refuse, before anything is written, a file output that is an existing folder (never
    replaced) or one of the command's inputs (never overwritten)."""
    refuse_folder(output)
    target = Path(output).resolve()
    if any(Path(i).resolve() == target for i in inputs):
        raise OutputError(
            errno.EINVAL,
            f"{output}: is an input of this command; name another file for the output "
            "(inputs are never overwritten). Nothing was written",
        )


def check_outputs(source: str | int, *outputs: str | Path | None) -> None:
    """`check_output_file` for each output given; the input video (not a camera number) is
    the one input."""
    spec = str(source).strip()
    inputs = [] if spec.isdigit() else [spec]
    for output in outputs:
        if output:
            check_output_file(output, inputs)


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
    except BaseException:
        if timeline is not None:
            timeline.discard()
        raise
    return source, timeline


def open_outputs(
    source: FrameSource, timeline: TimelineWriter | None, make: Callable[[], list[Sink]]
) -> list[Sink]:
    """The timeline followed by the sinks `make` builds; if building fails (a port taken, a
    window that cannot open, a signal), what was opened is closed again and the error raised."""
    sinks: list[Sink] = [timeline] if timeline is not None else []
    try:
        return [*sinks, *make()]
    except BaseException:
        for sink in sinks:
            sink.close()
        source.release()
        raise


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
    check_outputs(str(video), out_video, out_csv)
    with StopRequest() as stop:
        source, timeline = open_source(str(video), out_csv)
        sinks = open_outputs(
            source, timeline, lambda: [VideoFileSink(out_video, source.fps)] if out_video else []
        )
        return run_stream(source, pipeline, sinks, max_frames=max_frames, log=log, stop=stop)
