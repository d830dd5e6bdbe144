"""Live recognition from a camera (or a video file standing in for one).

Annotated frames go to a window where a display exists; otherwise to an MJPEG stream on
http://127.0.0.1:<port>/ (open it in a browser) or to a video file.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np

from ferlab.realtime.runtime import FaceResult, FramePipeline
from ferlab.realtime.video import (
    Log,
    Sink,
    StopRequest,
    StreamError,
    StreamResult,
    VideoFileSink,
    check_outputs,
    open_outputs,
    open_source,
    run_stream,
)

OUTPUT_MODES: tuple[str, ...] = ("auto", "window", "mjpeg", "file")
LOOPBACK = "127.0.0.1"
BOUNDARY = "ferlabframe"
PAGE = (
    "<!doctype html><title>ferlab camera</title>"
    '<body style="margin:0;background:#111"><img src="/stream" style="max-width:100%"></body>'
)


def has_display() -> bool:
    """Whether a window can be opened (on Linux: an X11 or Wayland display is set)."""
    if not sys.platform.startswith("linux"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class MjpegServer:
    """Serves the latest annotated frame on 127.0.0.1 only.

    `/` a page showing the stream, `/stream` multipart MJPEG, `/frame.jpg` the latest frame.
    Port 0 picks a free port (see `url`).
    """

    def __init__(self, port: int = 8080, quality: int = 80) -> None:
        self.quality = int(quality)
        self._jpeg: bytes | None = None
        self._sequence = 0
        self._closed = False
        self._changed = threading.Condition()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path in ("/", "/index.html"):
                    self._send(200, "text/html; charset=utf-8", PAGE.encode())
                elif self.path == "/frame.jpg":
                    jpeg = server.latest()
                    if jpeg is None:
                        self._send(503, "text/plain", b"no frame yet\n")
                    else:
                        self._send(200, "image/jpeg", jpeg)
                elif self.path == "/stream":
                    self._stream()
                else:
                    self._send(404, "text/plain", b"not found\n")

            def _send(self, code: int, kind: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def _stream(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                seen = -1
                try:
                    while True:
                        jpeg, seen = server.wait_for_frame(seen)
                        if jpeg is None:
                            return  # the server is closing
                        self.wfile.write(
                            f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                            f"Content-Length: {len(jpeg)}\r\n\r\n".encode()
                            + jpeg
                            + b"\r\n"
                        )
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return  # the viewer went away

            def log_message(self, format: str, *args: object) -> None:
                pass  # one line per request would drown the progress lines

        try:
            self.httpd = ThreadingHTTPServer((LOOPBACK, port), Handler)
        except OSError as exc:
            raise StreamError(
                f"cannot serve on {LOOPBACK}:{port} ({exc.strerror}); pick another --port"
            ) from None
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.httpd.server_address[1]}/"

    def latest(self) -> bytes | None:
        with self._changed:
            return self._jpeg

    def wait_for_frame(self, seen: int, timeout: float = 1.0) -> tuple[bytes | None, int]:
        """The first frame newer than `seen` (None once closed), and its sequence number."""
        with self._changed:
            while not self._closed and (self._jpeg is None or self._sequence == seen):
                self._changed.wait(timeout)
            if self._closed:
                return None, seen
            return self._jpeg, self._sequence

    def publish(self, image: np.ndarray) -> None:
        ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise RuntimeError("JPEG encoding of a frame failed")
        with self._changed:
            self._jpeg = buffer.tobytes()
            self._sequence += 1
            self._changed.notify_all()

    def write(
        self, index: int, time_s: float, results: Sequence[FaceResult], annotated: np.ndarray
    ) -> bool:
        self.publish(annotated)
        return True

    def close(self) -> None:
        with self._changed:
            if self._closed:
                return
            self._closed = True
            self._changed.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()


class WindowSink:
    """An OpenCV window; `q`, Esc or closing the window stops the loop."""

    def __init__(self, title: str = "ferlab") -> None:
        self.title = title
        cv2.namedWindow(title, cv2.WINDOW_NORMAL)

    def write(
        self, index: int, time_s: float, results: Sequence[FaceResult], annotated: np.ndarray
    ) -> bool:
        cv2.imshow(self.title, annotated)
        key = cv2.waitKey(1) & 0xFF
        visible = cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) >= 1
        return key not in (ord("q"), 27) and visible

    def close(self) -> None:
        cv2.destroyWindow(self.title)
        cv2.waitKey(1)


def resolve_mode(mode: str, out: str | Path | None) -> str:
    """The output actually used: `auto` is file if --out is given, else window, else MJPEG."""
    if mode not in OUTPUT_MODES:
        raise ValueError(f"output mode {mode!r}; choose one of {OUTPUT_MODES}")
    if mode == "auto":
        return "file" if out else ("window" if has_display() else "mjpeg")
    if mode == "window" and not has_display():
        raise StreamError("no display here (DISPLAY is unset): use --mode mjpeg or --out FILE")
    if mode == "file" and not out:
        raise StreamError("--mode file needs --out annotated.mp4")
    return mode


def run_camera(
    device: str | int,
    pipeline: FramePipeline,
    mode: str = "auto",
    port: int = 8080,
    out: str | Path | None = None,
    csv_path: str | Path | None = None,
    max_frames: int | None = None,
    log: Log = print,
) -> StreamResult:
    """Recognise expressions live from `device` (a camera number or a video file path)."""
    mode = resolve_mode(mode, out)
    check_outputs(device, out if mode == "file" else None, csv_path)
    with StopRequest() as stop:
        source, timeline = open_source(device, csv_path)  # a missing camera fails here

        def display() -> list[Sink]:
            if mode == "file":
                assert out is not None
                return [VideoFileSink(out, source.fps)]
            if mode == "window":
                return [WindowSink(f"ferlab: {source.name} (q to quit)")]
            server = MjpegServer(port)
            log(f"streaming annotated frames from {source.name} on {server.url} (Ctrl+C stops)")
            return [server]

        sinks = open_outputs(source, timeline, display)
        return run_stream(source, pipeline, sinks, max_frames=max_frames, log=log, stop=stop)
