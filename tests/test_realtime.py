"""Real-time recognition: tracking, smoothing, threshold, video files, the camera path."""

from __future__ import annotations

import csv
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from ferlab.classes import CLASSES, NOT_DETECTED
from ferlab.cli import app
from ferlab.inference import load_classifier
from ferlab.realtime import NO_FACE, FramePipeline, IouTracker, RealtimeSettings, Smoother, iou
from ferlab.realtime.runtime import label_of

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def onehot(i: int) -> np.ndarray:
    return np.eye(len(CLASSES))[i]


# --- tracking and smoothing ------------------------------------------------------------------


def test_iou_of_boxes() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)


def test_tracker_keeps_face_ids_across_frames() -> None:
    tracker = IouTracker(iou_match=0.3, smoothing="none", max_missed=2)
    probs = np.stack([onehot(0), onehot(1)])
    a, b = (10, 10, 50, 50), (200, 10, 50, 50)
    first = [face_id for face_id, _ in tracker.update([a, b], probs)]
    assert first == [1, 2]
    # Next frame: both moved a little and arrive in the other order; ids follow the faces.
    moved = [(205, 14, 50, 50), (14, 12, 52, 50)]
    assert [i for i, _ in tracker.update(moved, probs)] == [2, 1]
    # A third face appears far away: a new id; the others keep theirs.
    third = [(14, 12, 52, 50), (400, 300, 40, 40), (205, 14, 50, 50)]
    assert [i for i, _ in tracker.update(third, np.stack([onehot(0)] * 3))] == [1, 3, 2]
    # Face 1 vanishes for 3 frames (> max_missed=2): when it comes back it is a new face.
    for _ in range(3):
        tracker.update([(205, 14, 50, 50)], onehot(1)[None])
    assert [i for i, _ in tracker.update([(14, 12, 52, 50)], onehot(0)[None])] == [4]


def test_ema_smoothing_follows_its_formula() -> None:
    s = Smoother("ema", alpha=0.25)
    assert np.allclose(s.update(onehot(0)), onehot(0))  # starts at the first frame
    assert np.allclose(s.update(onehot(1)), 0.75 * onehot(0) + 0.25 * onehot(1))
    assert np.allclose(s.update(onehot(1)), 0.5625 * onehot(0) + 0.4375 * onehot(1))


def test_window_smoothing_averages_the_last_frames() -> None:
    s = Smoother("window", window=3)
    assert np.allclose(s.update(onehot(0)), onehot(0))
    assert np.allclose(s.update(onehot(1)), (onehot(0) + onehot(1)) / 2)
    assert np.allclose(s.update(onehot(1)), (onehot(0) + 2 * onehot(1)) / 3)
    assert np.allclose(s.update(onehot(2)), (2 * onehot(1) + onehot(2)) / 3)  # frame 1 dropped
    none = Smoother("none")
    none.update(onehot(0))
    assert np.allclose(none.update(onehot(3)), onehot(3))


def test_smoothing_is_per_face() -> None:
    tracker = IouTracker(smoothing="ema", ema_alpha=0.5)
    a, b = (0, 0, 50, 50), (100, 0, 50, 50)
    tracker.update([a, b], np.stack([onehot(0), onehot(1)]))
    (_, pa), (_, pb) = tracker.update([a, b], np.stack([onehot(2), onehot(2)]))
    assert np.allclose(pa, 0.5 * onehot(0) + 0.5 * onehot(2))
    assert np.allclose(pb, 0.5 * onehot(1) + 0.5 * onehot(2))


def test_threshold_yields_not_detected() -> None:
    flat = np.full(len(CLASSES), 1 / len(CLASSES))
    assert label_of(flat, threshold=0.4) == (NOT_DETECTED, pytest.approx(0.125))
    sure = 0.9 * onehot(4) + 0.1 * flat
    assert label_of(sure, threshold=0.4)[0] == "happiness"
    # Smoothing decides: a face flickering between two classes stays "not detected".
    tracker = IouTracker(smoothing="window", window=2)
    box = (0, 0, 50, 50)
    tracker.update([box], onehot(0)[None])
    _, smoothed = tracker.update([box], onehot(7)[None])[0]
    assert label_of(smoothed, threshold=0.6)[0] == NOT_DETECTED


def test_settings_reject_unknown_values() -> None:
    with pytest.raises(ValueError, match=r"realtime\.smoothing"):
        RealtimeSettings(smoothing="median")
    with pytest.raises(ValueError, match=r"realtime\.ema_alpha"):
        Smoother("ema", alpha=0.0)
    settings = RealtimeSettings.from_params({"threshold": 0.6, "onnx_opset": 17})
    assert settings.threshold == 0.6


# --- video files -------------------------------------------------------------------------------


def count_frames(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), path
    n = 0
    while capture.read()[0]:
        n += 1
    return n


def check_timeline(timeline: pd.DataFrame, threshold: float) -> None:
    """Rows agree with the settings: labels follow the smoothed probabilities and threshold."""
    faces = timeline[timeline["label"] != NO_FACE]
    probs = faces[list(CLASSES)].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-3)
    top = np.array(CLASSES)[probs.argmax(axis=1)]
    low = faces["confidence"].to_numpy() < threshold
    assert (faces["label"].to_numpy()[low] == NOT_DETECTED).all()
    assert (faces["label"].to_numpy()[~low] == top[~low]).all()


def test_video_single_face(shared_data, tmp_path) -> None:
    source = shared_data / "videos/single_face.mp4"
    out, csv_path = tmp_path / "annotated.mp4", tmp_path / "timeline.csv"
    done = runner.invoke(app, ["video", str(source), "--out", str(out), "--csv", str(csv_path)])
    assert done.exit_code == 0, done.output
    n = count_frames(source)
    assert count_frames(out) == n
    timeline = pd.read_csv(csv_path)
    # One row per frame and face (a frame without a face has one `no face` row).
    assert sorted(timeline["frame"].unique()) == list(range(n))
    assert not timeline.duplicated(["frame", "face_id"]).any()
    with_face = timeline[timeline["label"] != NO_FACE]
    assert with_face["frame"].nunique() > 0.9 * n
    # The one face keeps one id through the clip.
    assert with_face["face_id"].value_counts().iloc[0] > 0.9 * len(with_face)
    assert timeline["time_s"].is_monotonic_increasing
    check_timeline(timeline, RealtimeSettings.load().threshold)


def face_on_canvas(face: np.ndarray, size: tuple[int, int] = (320, 240)) -> np.ndarray:
    """A 48×48 face enlarged to 150 px in the middle of a plain grey BGR frame."""
    width, height = size
    canvas = np.full((height, width), 120, np.uint8)
    y, x = (height - 150) // 2, (width - 150) // 2
    canvas[y : y + 150, x : x + 150] = cv2.resize(face, (150, 150), interpolation=cv2.INTER_CUBIC)
    return cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR)


def labelled_face_video(faces: np.ndarray, path: Path, frames_per_face: int) -> list[range]:
    """Each face on its canvas for `frames_per_face` frames; returns each face's frame range."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10, (320, 240))
    segments = []
    for i, face in enumerate(faces):
        frame = face_on_canvas(face)
        for _ in range(frames_per_face):
            writer.write(frame)
        segments.append(range(i * frames_per_face, (i + 1) * frames_per_face))
    writer.release()
    return segments


def test_assembled_video_gets_segment_labels_right(real_faces, tmp_path) -> None:
    from test_export import train_small

    from ferlab.faces.detect import FaceDetector
    from ferlab.realtime import annotate_video

    images, labels = real_faces
    settings = RealtimeSettings(threshold=0.0)
    detector = FaceDetector(score_threshold=settings.detect_score)
    # Labels are what is tested here, not the detection rate: take faces RetinaFace finds.
    found = np.array([bool(detector.detect(face_on_canvas(face))) for face in images])
    pick = np.concatenate([np.flatnonzero((labels == c) & found)[:3] for c in range(len(CLASSES))])
    assert len(pick) >= 20
    faces, truth = images[pick], labels[pick]
    # A model that does well on these faces: trained on their 48×48 crops, with the training
    # loop's shift/scale/rotation augmentation (the video shows them re-cropped from frames).
    checkpoint = train_small(faces, truth, tmp_path / "model.pt", epochs=60, augment=True)
    classifier = load_classifier(checkpoint)
    pipeline = FramePipeline(classifier, settings, detector)
    # The model's accuracy on these faces as the pipeline cuts them out of a clean frame.
    crops = np.stack([pipeline.crops(face_on_canvas(face))[1][0] for face in faces])
    direct_accuracy = float((classifier.predict_proba(crops).argmax(1) == truth).mean())

    video = tmp_path / "labelled.avi"
    segments = labelled_face_video(faces, video, frames_per_face=6)
    result = annotate_video(video, pipeline, out_csv=tmp_path / "timeline.csv")
    assert result.complete and result.frames == 6 * len(faces)
    timeline = pd.read_csv(tmp_path / "timeline.csv")
    right = 0
    for segment, label in zip(segments, truth, strict=True):
        # Skip the first frames: the smoothing still carries the previous face.
        rows = timeline[timeline["frame"].isin(segment[2:])]
        right += rows["label"].mode().iloc[0] == CLASSES[label]
    video_accuracy = right / len(segments)
    print(f"segments right: {video_accuracy:.3f}; the model on the crops: {direct_accuracy:.3f}")
    assert direct_accuracy >= 0.6  # chance is 0.125
    assert video_accuracy >= direct_accuracy - 0.1


def truncated_copy(source: Path, target: Path, fraction: float) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * fraction)])
    return target


def test_undecodable_videos_end_with_a_clear_message(real_faces, shared_data, tmp_path) -> None:
    # An AVI cut in half: the first frames decode, then the data ends.
    images, _ = real_faces
    whole = tmp_path / "whole.avi"
    labelled_face_video(images[:10], whole, frames_per_face=4)
    cut = truncated_copy(whole, tmp_path / "cut.avi", 0.5)
    csv_path = tmp_path / "cut.csv"
    done = runner.invoke(app, ["video", str(cut), "--csv", str(csv_path)])
    assert done.exit_code == 1
    assert "error:" in done.output and "cut.avi" in done.output and "truncated" in done.output
    timeline = pd.read_csv(csv_path)
    processed = timeline["frame"].unique()
    assert 0 < len(processed) < 40
    assert list(processed) == list(range(len(processed)))  # every frame before the cut
    assert not list(tmp_path.glob("*.partial"))

    # An .mp4 cut short (its index is at the end) and a file of garbage cannot be opened at all.
    for bad in (
        truncated_copy(shared_data / "videos/single_face.mp4", tmp_path / "short.mp4", 0.6),
        tmp_path / "garbage.mp4",
    ):
        if bad.name == "garbage.mp4":
            bad.write_bytes(np.random.default_rng(0).bytes(20_000))
        csv_path = tmp_path / f"{bad.stem}.csv"
        done = runner.invoke(
            app, ["video", str(bad), "--csv", str(csv_path), "--out", str(tmp_path / "x.mp4")]
        )
        assert done.exit_code == 1
        assert f"{bad}: cannot be decoded" in done.output
        assert done.output.count("error:") == 1
        assert pd.read_csv(csv_path).empty  # complete, with nothing processed
        assert not (tmp_path / "x.mp4").exists()


# --- camera ------------------------------------------------------------------------------------


def test_camera_with_a_video_file_standing_in(shared_data, tmp_path) -> None:
    out, csv_path = tmp_path / "camera.mp4", tmp_path / "camera.csv"
    done = runner.invoke(
        app,
        [
            "camera",
            "--device",
            str(shared_data / "videos/stage_clip.mp4"),
            "--out",
            str(out),
            "--csv",
            str(csv_path),
            "--max-frames",
            "25",
        ],
    )
    assert done.exit_code == 0, done.output
    assert count_frames(out) == 25
    capture = cv2.VideoCapture(str(out))
    assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (
        640,
        360,
    )
    timeline = pd.read_csv(csv_path)
    assert sorted(timeline["frame"].unique()) == list(range(25))
    assert (timeline["label"] != NO_FACE).any()


def test_camera_streams_mjpeg_on_loopback(shared_data) -> None:
    from ferlab.realtime.camera import run_camera

    lines: list[str] = []
    pipeline = FramePipeline(load_classifier())
    results = []
    worker = threading.Thread(
        target=lambda: results.append(
            run_camera(
                str(shared_data / "videos/stage_clip.mp4"),
                pipeline,
                mode="mjpeg",
                port=0,
                max_frames=60,
                log=lines.append,
            )
        )
    )
    worker.start()
    try:
        deadline = time.monotonic() + 60
        url = None
        while url is None and time.monotonic() < deadline:
            found = [m for line in lines if (m := re.search(r"http://127\.0\.0\.1:\d+/", line))]
            url = found[0].group(0) if found else None
            time.sleep(0.05)
        assert url is not None, lines
        with urllib.request.urlopen(url + "stream", timeout=30) as stream:
            assert stream.headers["Content-Type"].startswith("multipart/x-mixed-replace")
            head = stream.read(200)
            assert head.startswith(b"--ferlabframe\r\nContent-Type: image/jpeg\r\n")
            length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
            body = head[head.index(b"\r\n\r\n") + 4 :]
            body += stream.read(length - len(body))
        frame = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
        assert frame.shape == (360, 640, 3)
    finally:
        worker.join(timeout=120)
    assert results and results[0].frames == 60 and results[0].complete


def test_unreadable_camera_gives_a_clear_message(tmp_path) -> None:
    csv_path = tmp_path / "x.csv"
    done = runner.invoke(
        app, ["camera", "--device", "57", "--out", str(tmp_path / "x.mp4"), "--csv", str(csv_path)]
    )
    assert done.exit_code == 1
    assert "camera 57 could not be opened" in done.output
    assert done.output.count("error:") == 1
    assert pd.read_csv(csv_path).empty  # complete, with nothing processed
    done = runner.invoke(app, ["camera", "--device", str(tmp_path / "none.mp4"), "--mode", "mjpeg"])
    assert done.exit_code == 1 and "no such video file" in done.output
    assert not (tmp_path / "x.mp4").exists()


def csv_rows_lf_and_full(path: Path) -> list[list[str]]:
    """The rows under the header, after checking LF line endings and that every row has as
    many fields as the header."""
    data = path.read_bytes()
    assert b"\r" not in data
    header, *body = csv.reader(io.StringIO(data.decode()))
    assert all(len(row) == len(header) for row in body)
    return body


def test_timeline_csv_has_lf_line_endings_and_full_no_face_rows(real_faces, tmp_path) -> None:
    images, _ = real_faces
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"MJPG"), 10, (320, 240))
    blank = np.full((240, 320, 3), 120, np.uint8)
    for frame in (blank, blank, face_on_canvas(images[50]), face_on_canvas(images[50])):
        writer.write(frame)
    writer.release()
    csv_path = tmp_path / "timeline.csv"
    done = runner.invoke(app, ["video", str(video), "--csv", str(csv_path)])
    assert done.exit_code == 0, done.output
    body = csv_rows_lf_and_full(csv_path)
    assert [row[7] for row in body[:2]] == [NO_FACE, NO_FACE]


# --- stopping by signal ------------------------------------------------------------------------


def ferlab_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ferlab.cli", *args]


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


def rows_in(path: Path) -> int:
    try:
        return max(0, len(path.read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize(
    ("command", "signum"),
    [("video", signal.SIGTERM), ("camera", signal.SIGTERM), ("camera", signal.SIGINT)],
    ids=["video-SIGTERM", "camera-SIGTERM", "camera-SIGINT"],
)
def test_signal_mid_run_finalises_like_the_end_of_input(
    shared_data, tmp_path, command: str, signum: int
) -> None:
    source = shared_data / "videos/single_face.mp4"  # 464 frames: the signal comes mid-way
    out, csv_path = tmp_path / "annotated.mp4", tmp_path / "timeline.csv"
    where = [str(source)] if command == "video" else ["--device", str(source)]
    outputs = ["--out", str(out), "--csv", str(csv_path), "--threads", "1"]
    proc = subprocess.Popen(
        ferlab_command(command, *where, *outputs),
        cwd=tmp_path,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        partial = tmp_path / "timeline.csv.partial"
        deadline = time.monotonic() + 300
        while rows_in(partial) < 5 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()
        assert rows_in(partial) >= 5, "no frame processed within 300 s"
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    name = "Ctrl+C" if signum == signal.SIGINT else "SIGTERM"
    assert f"stopped by {name} after" in stdout and "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotated.mp4", "timeline.csv"]
    timeline = pd.read_csv(csv_path)
    frames = timeline["frame"].unique()
    assert list(frames) == list(range(len(frames)))  # every frame processed, none torn
    assert 5 <= len(frames) < count_frames(source)  # stopped mid-run
    assert count_frames(out) == len(frames)  # a playable video of the same frames
