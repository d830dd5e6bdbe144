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
from dataclasses import replace
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


def test_tracks_coast_between_detections_and_are_re_anchored() -> None:
    from ferlab.realtime.tracker import Motion

    tracker = IouTracker(iou_match=0.3, smoothing="none", max_missed=2)
    marks = np.array([[20.0, 20.0], [40.0, 20.0]])
    (track,) = tracker.assign([(10, 10, 40, 40)], [marks], [0.9])
    assert track.id == 1 and not track.tracked and track.score == 0.9
    # Moved by 5 px right and grown 10 % about its centre: box and landmarks alike.
    (moved,) = tracker.coast(lambda box: Motion(5.0, 0.0, 1.1))
    assert moved is track and moved.tracked
    assert moved.box == pytest.approx((13.0, 8.0, 44.0, 44.0))
    assert moved.points == pytest.approx(np.array([[24.0, 19.0], [46.0, 19.0]]))
    # Lost: no longer shown, but kept for max_missed frames ...
    for _ in range(2):
        assert tracker.coast(lambda box: None) == []
    assert tracker.tracks[0].missed == 2
    # ... and a detection near it re-anchors it under its id, marked as seen again.
    (again,) = tracker.assign([(14, 9, 44, 44)])
    assert again.id == 1 and again.resumed and not again.tracked and again.missed == 0
    # Unseen for more than max_missed frames (a detection missed it, then lost): a new face.
    tracker.assign([])
    tracker.coast(lambda box: None)
    tracker.coast(lambda box: None)
    assert tracker.tracks == []
    assert [t.id for t in tracker.assign([(14, 9, 44, 44)])] == [2]


@pytest.mark.parametrize("method", ["flow", "template"])
def test_motion_of_a_real_face_is_recovered(shared_data, method: str) -> None:
    from ferlab.faces.detect import FaceDetector
    from ferlab.realtime.runtime import detect_faces, to_gray
    from ferlab.realtime.tracker import estimate_motion

    frame = video_frames(shared_data / "videos/single_face.mp4", 1)[0]
    (face,) = detect_faces(FaceDetector(), frame, 640)
    gray = to_gray(frame)
    x, y, w, h = face.box
    centre = (x + w / 2, y + h / 2)
    scale = 1.04 if method == "flow" else 1.0  # template matching follows shifts only
    warp = cv2.getRotationMatrix2D(centre, 0.0, scale)
    warp[:, 2] += (6.0, -4.0)
    moved = cv2.warpAffine(gray, warp, gray.shape[::-1], borderMode=cv2.BORDER_REPLICATE)
    motion = estimate_motion(method, gray, moved, face.box)
    assert motion is not None
    assert (motion.dx, motion.dy) == pytest.approx((6.0, -4.0), abs=1.0)
    assert motion.scale == pytest.approx(scale, abs=0.02)
    # A frame of something else: the face is lost, not moved somewhere.
    noise = np.random.default_rng(0).integers(0, 256, gray.shape, dtype=np.uint8)
    assert estimate_motion(method, gray, noise, face.box) is None


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
    assert label_of(flat, threshold=0.4, decimals=4) == (NOT_DETECTED, pytest.approx(0.125))
    sure = 0.9 * onehot(4) + 0.1 * flat
    assert label_of(sure, threshold=0.4, decimals=4)[0] == "happiness"
    # Smoothing decides: a face flickering between two classes stays "not detected".
    tracker = IouTracker(smoothing="window", window=2)
    box = (0, 0, 50, 50)
    tracker.update([box], onehot(0)[None])
    _, smoothed = tracker.update([box], onehot(7)[None])[0]
    assert label_of(smoothed, threshold=0.6, decimals=4)[0] == NOT_DETECTED
    # The threshold applies to the confidence as written: 0.39997 is written 0.4000 with 4
    # decimals, so at threshold 0.4 it is a label (the timeline CSV never shows "not detected"
    # beside 0.4000); with 6 decimals (predict's CSV) it stays below.
    edge = np.array([0.39997, 0.3, 0.30003, 0, 0, 0, 0, 0])
    assert label_of(edge, threshold=0.4, decimals=4) == ("anger", 0.4)
    assert label_of(edge, threshold=0.4, decimals=6) == (NOT_DETECTED, 0.39997)


def test_settings_reject_unknown_values() -> None:
    with pytest.raises(ValueError, match=r"realtime\.smoothing"):
        RealtimeSettings(smoothing="median")
    with pytest.raises(ValueError, match=r"realtime\.ema_alpha"):
        Smoother("ema", alpha=0.0)
    settings = RealtimeSettings.from_params({"threshold": 0.6, "onnx_opset": 17})
    assert settings.threshold == 0.6
    for bad in ({"detect_every": 0}, {"classify_every": 0}, {"track_method": "kalman"}):
        with pytest.raises(ValueError, match=r"realtime\."):
            RealtimeSettings(**bad)
    with pytest.raises(ValueError, match=r"realtime\.profile"):
        RealtimeSettings.from_params({"profile": "phone"})


def test_profile_pi_sets_one_thread_and_less_work_and_overrides_win() -> None:
    group = {"detect_every": 3, "detect_max_side": 640, "threads": 0}
    pi = RealtimeSettings.from_params(group, profile="pi")
    assert pi.profile == "pi" and pi.threads == 1
    assert pi.detect_max_side < 640 and pi.detect_every > 3
    # params.yaml's `profiles` changes a profile; a command-line value beats both.
    custom = RealtimeSettings.from_params({**group, "profiles": {"pi": {"detect_every": 9}}})
    assert custom.detect_every == 3  # the profile is not selected
    chosen = {**group, "profile": "pi", "profiles": {"pi": {"detect_every": 9}}}
    assert RealtimeSettings.from_params(chosen).detect_every == 9
    assert RealtimeSettings.from_params(chosen, detect_every=2, threads=None).detect_every == 2
    # The project's params.yaml loads, with the realtime keys of the dataclass.
    loaded = RealtimeSettings.load(ROOT / "params.yaml")
    assert loaded.detect_every >= 1 and loaded.track_method in ("flow", "template")
    assert RealtimeSettings.load(ROOT / "params.yaml", profile="pi").threads == 1


def test_pipeline_sizes_its_sessions_and_leaves_the_callers_alone() -> None:
    from ferlab.faces.detect import FaceDetector

    classifier = load_classifier()  # 0 threads: ONNX Runtime's default
    detector = FaceDetector()
    pipeline = FramePipeline(classifier, RealtimeSettings(threads=1), detector)
    for session in (pipeline.classifier.session, pipeline.detector.session):
        options = session.get_session_options()
        assert options.intra_op_num_threads == 1
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert classifier.session.get_session_options().intra_op_num_threads == 0
    assert detector.session is not pipeline.detector.session
    # `ferlab video --threads 2` makes the classifier with 2 threads: the loop uses 2.
    two = FramePipeline(load_classifier(threads=2), RealtimeSettings(threads=0))
    assert two.threads == 2
    assert two.detector.session.get_session_options().intra_op_num_threads == 2


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


def video_frames(path: Path, limit: int) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while len(frames) < limit:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def panned(frames: list[np.ndarray], width: int, speed: int) -> list[np.ndarray]:
    """The frames seen through a window `width` px wide sliding `speed` px a frame to and fro:
    the face moves across the picture as if the camera panned."""
    span = frames[0].shape[1] - width
    out, offset, step = [], 0, speed
    for frame in frames:
        out.append(np.ascontiguousarray(frame[:, offset : offset + width]))
        if not 0 <= offset + step <= span:
            step = -step
        offset += step
    return out


# A tracked box counts as on the face when its IoU with a full detection on the same frame is at
# least this; at least TRACKED_ON_FACE of the tracked frames must be.
TRACKED_IOU = 0.5
TRACKED_ON_FACE = 0.9


@pytest.mark.parametrize("method", ["flow", "template"])
def test_tracked_boxes_stay_on_a_moving_face(shared_data, method: str) -> None:
    from ferlab.realtime.runtime import detect_faces

    settings = RealtimeSettings(detect_every=5, track_method=method, threads=1)
    pipeline = FramePipeline(load_classifier(), settings)
    clip = video_frames(shared_data / "videos/single_face.mp4", 150)
    # As recorded (the head moves a little), and panned 8 px a frame: 32 px between detections.
    for name, frames in (("as recorded", clip), ("panned", panned(clip, 420, 8))):
        pipeline.reset()
        tracked, held = [], []
        last_detected: dict[int, tuple[float, float, float, float]] = {}
        for frame in frames:
            results = pipeline.process(frame)
            assert len(results) <= 1
            if not results:
                continue
            r = results[0]
            if not r.tracked:
                last_detected[r.face_id] = r.box
                continue
            truth = detect_faces(pipeline.detector, frame, settings.detect_max_side)
            assert len(truth) == 1, "single_face.mp4 shows one face in every frame"
            tracked.append(iou(r.box, truth[0].box))
            held.append(iou(last_detected[r.face_id], truth[0].box))
        tracked_iou, held_iou = np.array(tracked), np.array(held)
        print(
            f"{method}, {name}: {len(tracked)} tracked frames, IoU with detection median "
            f"{np.median(tracked_iou):.3f} (boxes held still: {np.median(held_iou):.3f})"
        )
        # 4 of every 5 frames are tracked; a few may be lost (and re-detected) instead.
        assert len(tracked) >= 0.7 * len(frames)
        assert (tracked_iou >= TRACKED_IOU).mean() >= TRACKED_ON_FACE
        if name == "panned":
            # The tracker does follow the motion: better than keeping the last detected box.
            assert np.median(tracked_iou) > np.median(held_iou) + 0.1
    assert pipeline.timing.tracked > 0


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
    # Every frame detected and classified, and the live loop's shortcuts: detection every 3rd
    # frame (tracked boxes in between), a tracked face classified every 3rd frame.
    loops = {
        "every frame": replace(settings, detect_every=1, classify_every=1),
        "live": replace(settings, detect_every=3, classify_every=3),
    }
    accuracy, work = {}, {}
    for name, loop_settings in loops.items():
        pipeline = FramePipeline(classifier, loop_settings, detector)
        csv_path = tmp_path / f"{name}.csv"
        result = annotate_video(video, pipeline, out_csv=csv_path)
        assert result.complete and result.frames == 6 * len(faces)
        timeline = pd.read_csv(csv_path)
        right = 0
        for segment, label in zip(segments, truth, strict=True):
            # Skip the first frames: the smoothing still carries the previous face.
            rows = timeline[timeline["frame"].isin(segment[2:])]
            right += rows["label"].mode().iloc[0] == CLASSES[label]
        accuracy[name] = right / len(segments)
        work[name] = pipeline.timing.summary()
        print(
            f"{name}: segments right {accuracy[name]:.3f} (the model on the crops: "
            f"{direct_accuracy:.3f}); {work[name]['detect_frames']} detections, "
            f"{work[name]['classified_faces']} of {work[name]['faces']} faces classified"
        )
    assert direct_accuracy >= 0.6  # chance is 0.125
    for name in loops:
        assert accuracy[name] >= direct_accuracy - 0.1, name
    # The live loop did less work and lost at most one segment to it.
    assert work["live"]["detect_frames"] < work["every frame"]["detect_frames"]
    assert work["live"]["classified_faces"] < work["every frame"]["classified_faces"]
    assert accuracy["live"] >= accuracy["every frame"] - 1 / len(segments)


def jittered_face_video(
    faces: np.ndarray, path: Path, frames_per_face: int, fps: float, seed: int = 0
) -> list[range]:
    """Each face held still for `frames_per_face` frames, as a camera sees a face that keeps
    its expression: every frame shifted by up to 2 px and with sensor noise (σ = 4 grey
    levels), so no two frames are alike. Returns each face's frame range."""
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (320, 240))
    segments = []
    for i, face in enumerate(faces):
        base = face_on_canvas(face).astype(np.float32)
        for _ in range(frames_per_face):
            dx, dy = rng.integers(-2, 3, size=2)
            shift = np.float32([[1, 0, dx], [0, 1, dy]])
            frame = cv2.warpAffine(base, shift, (320, 240), borderMode=cv2.BORDER_REPLICATE)
            frame += rng.normal(0.0, 4.0, frame.shape).astype(np.float32)
            writer.write(np.clip(frame, 0, 255).astype(np.uint8))
        segments.append(range(i * frames_per_face, (i + 1) * frames_per_face))
    writer.release()
    return segments


# Label changes per second on a face that keeps its expression, at most (the live loop).
MAX_FLICKER_PER_S = 1.0


def test_labels_do_not_flicker_on_constant_segments(real_faces, tmp_path) -> None:
    from ferlab.faces.detect import FaceDetector
    from ferlab.realtime import annotate_video

    images, labels = real_faces
    settings = RealtimeSettings()  # the live defaults: detect_every, classify_every > 1
    assert settings.detect_every > 1 and settings.classify_every > 1
    detector = FaceDetector(score_threshold=settings.detect_score)
    found = [i for i in range(len(images)) if detector.detect(face_on_canvas(images[i]))]
    pick = [next(i for i in found if labels[i] == c) for c in range(len(CLASSES))]
    fps, per_face = 30.0, 60  # 2 s per face
    video = tmp_path / "constant.avi"
    segments = jittered_face_video(images[pick], video, per_face, fps)
    rates = {}
    loops = {
        "live": settings,
        "every frame, unsmoothed": replace(
            settings, detect_every=1, classify_every=1, smoothing="none"
        ),
    }
    for name, loop_settings in loops.items():
        pipeline = FramePipeline(load_classifier(), loop_settings, detector)
        csv_path = tmp_path / f"{name}.csv"
        result = annotate_video(video, pipeline, out_csv=csv_path)
        assert result.complete and result.frames == per_face * len(pick)
        timeline = pd.read_csv(csv_path)
        changes, seconds = 0, 0.0
        for segment in segments:
            # From 0.5 s in: the smoothing has let go of the previous face.
            rows = timeline[timeline["frame"].isin(segment[int(fps / 2) :])]
            assert rows["label"].ne(NO_FACE).all()
            changes += int((rows["label"].to_numpy()[1:] != rows["label"].to_numpy()[:-1]).sum())
            seconds += len(rows) / fps
        rates[name] = changes / seconds
        print(f"{name}: {rates[name]:.2f} label changes per second on constant faces")
    assert rates["live"] <= MAX_FLICKER_PER_S
    assert rates["live"] <= rates["every frame, unsmoothed"]


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
