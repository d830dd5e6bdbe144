"""`ferlab predict`: agreement with evaluate, faces found in photos, clear errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from test_export import train_small
from test_realtime import csv_rows_lf_and_full
from typer.testing import CliRunner

from ferlab.classes import CLASSES
from ferlab.cli import app
from ferlab.export import export_onnx
from ferlab.io import save_npz
from ferlab.realtime import NO_FACE
from ferlab.realtime.predict import UNREADABLE

runner = CliRunner()


def write_faces(images: np.ndarray, labels: np.ndarray, folder: Path) -> list[Path]:
    """Real faces as PNG files, one folder per class (like the Kaggle layout)."""
    paths = []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        path = folder / CLASSES[label] / f"face{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def checkpoint(real_faces, tmp_path_factory: pytest.TempPathFactory) -> Path:
    images, labels = real_faces
    return train_small(images, labels, tmp_path_factory.mktemp("predict") / "model.pt")


def test_predict_with_two_models_gives_the_mean_of_their_probabilities(
    real_faces, checkpoint, tmp_path
) -> None:
    images, labels = real_faces
    second = train_small(images, labels, tmp_path / "second.pt", epochs=5)
    write_faces(images, labels, tmp_path / "faces")
    out = {}
    runs = {"first": [checkpoint], "second": [second], "mean": [checkpoint, second]}
    for name, models in runs.items():
        out[name] = tmp_path / f"{name}.csv"
        args = ["predict", str(tmp_path / "faces"), "--no-detect", "--out", str(out[name])]
        done = runner.invoke(app, [*args, *(a for m in models for a in ("--model", str(m)))])
        assert done.exit_code == 0, done.output
    probs = {k: pd.read_csv(v).set_index("file")[list(CLASSES)] for k, v in out.items()}
    first, second_probs = probs["first"], probs["second"].loc[probs["first"].index]
    mean = probs["mean"].loc[first.index].to_numpy()
    assert np.abs(first.to_numpy() - second_probs.to_numpy()).max() > 0.05  # two different models
    assert np.abs(mean - (first.to_numpy() + second_probs.to_numpy()) / 2).max() < 1e-5


def test_predict_no_detect_agrees_with_evaluate(real_faces, checkpoint, tmp_path) -> None:
    from ferlab.evaluation.evaluate import evaluate_checkpoint

    images, labels = real_faces
    paths = write_faces(images, labels, tmp_path / "faces")
    # evaluate scores the cached arrays; build them from the very same files.
    for split in ("val", "test"):
        save_npz(
            tmp_path / f"arrays/original_{split}.npz",
            images=images,
            labels=labels,
            paths=np.array([str(p) for p in paths]),
            face_found=np.ones(len(labels), bool),
        )
    evaluate_checkpoint(checkpoint, tmp_path / "arrays", tmp_path / "reports")
    expected = pd.read_csv(tmp_path / "reports/predictions_test.csv").set_index("path")

    out = tmp_path / "predictions.csv"
    done = runner.invoke(
        app,
        [
            "predict",
            str(tmp_path / "faces"),
            "--no-detect",
            "--model",
            str(checkpoint),
            "--out",
            str(out),
        ],
    )
    assert done.exit_code == 0, done.output
    got = pd.read_csv(out).set_index("file")
    assert len(got) == len(paths) and (got["face"] == 0).all()
    got = got.loc[expected.index]
    assert (got["label"] == expected["predicted"]).all()
    assert np.abs(got[list(CLASSES)].to_numpy() - expected[list(CLASSES)].to_numpy()).max() < 2e-6
    assert (got["box_w"] == 48).all() and (got["box_h"] == 48).all()

    # The ONNX export of the same checkpoint gives the same answers.
    onnx_path = tmp_path / "model.onnx"
    export_onnx(checkpoint, onnx_path)
    out_onnx = tmp_path / "predictions_onnx.csv"
    done = runner.invoke(
        app,
        [
            "predict",
            *map(str, paths),
            "--no-detect",
            "--model",
            str(onnx_path),
            "--out",
            str(out_onnx),
        ],
    )
    assert done.exit_code == 0, done.output
    via_onnx = pd.read_csv(out_onnx).set_index("file").loc[got.index]
    assert (via_onnx["label"] == got["label"]).all()
    assert np.abs(via_onnx[list(CLASSES)].to_numpy() - got[list(CLASSES)].to_numpy()).max() < 1e-4


def test_predict_finds_each_face_in_a_photo(real_faces, tmp_path) -> None:
    images, _ = real_faces
    photos = tmp_path / "photos"
    photos.mkdir()
    canvas = np.full((300, 480), 110, np.uint8)
    spots = [(30, 60), (270, 60)]  # top-left corners of two real faces enlarged to 180 px
    for (x, y), face in zip(spots, images[[50, 60]], strict=True):
        big = cv2.resize(face, (180, 180), interpolation=cv2.INTER_CUBIC)
        canvas[y : y + 180, x : x + 180] = big
    cv2.imwrite(str(photos / "two_faces.jpg"), cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR))
    cv2.imwrite(str(photos / "empty.png"), np.full((200, 200), 110, np.uint8))

    out = tmp_path / "predictions.csv"
    done = runner.invoke(app, ["predict", str(photos), "--out", str(out)])  # the bundled model
    assert done.exit_code == 0, done.output
    rows = pd.read_csv(out)
    empty = rows[rows["file"].str.endswith("empty.png")]
    assert len(empty) == 1 and empty["label"].iloc[0] == NO_FACE
    faces = rows[rows["file"].str.endswith("two_faces.jpg")]
    assert list(faces["face"]) == [0, 1]
    centres = sorted(
        zip(faces["box_x"] + faces["box_w"] / 2, faces["box_y"] + faces["box_h"] / 2, strict=True)
    )
    for (cx, cy), (x, y) in zip(centres, spots, strict=True):
        assert x < cx < x + 180 and y < cy < y + 180
    assert set(faces["label"]) <= set(CLASSES)
    assert np.allclose(faces[list(CLASSES)].sum(axis=1), 1.0, atol=1e-4)


def faces_with_a_broken_last_file(real_faces, folder: Path) -> list[Path]:
    images, labels = real_faces
    good = write_faces(images[:3], labels[:3], folder)
    # Sorted last (z…): the batch is all read before the bad file is met.
    (folder / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return good


def test_predict_skips_an_unreadable_file_and_says_so(real_faces, tmp_path) -> None:
    good = faces_with_a_broken_last_file(real_faces, tmp_path / "faces")
    out = tmp_path / "predictions.csv"
    done = runner.invoke(
        app, ["predict", str(tmp_path / "faces"), "--no-detect", "--out", str(out)]
    )
    assert done.exit_code == 2, done.output  # written, but scripts must notice the skip
    broken = tmp_path / "faces/zz_broken.png"
    assert f"error: {broken}: not a readable image" in done.stderr
    assert "1 of 4 files could not be read" in done.stderr
    assert "Traceback" not in done.output
    rows = pd.read_csv(out, keep_default_na=False)
    assert sorted(rows["file"]) == sorted(map(str, [*good, broken]))
    assert (rows.loc[rows["file"] == str(broken), "label"] == UNREADABLE).all()
    readable = rows[rows["file"] != str(broken)]
    assert set(readable["label"]) <= set(CLASSES) and len(readable) == 3
    assert not list(tmp_path.glob(".predictions.csv*"))


def test_predict_strict_stops_at_the_first_unreadable_file(real_faces, tmp_path) -> None:
    faces_with_a_broken_last_file(real_faces, tmp_path / "faces")
    out = tmp_path / "predictions.csv"
    done = runner.invoke(
        app, ["predict", str(tmp_path / "faces"), "--no-detect", "--strict", "--out", str(out)]
    )
    assert done.exit_code == 1
    assert done.stderr.count("error:") == 1
    assert "zz_broken.png" in done.stderr and "not a readable image" in done.stderr
    assert not out.exists() and not list(tmp_path.glob(".predictions.csv*"))

    done = runner.invoke(app, ["predict", str(tmp_path / "missing"), "--out", str(out)])
    assert done.exit_code == 1 and "missing: no such image file or folder" in done.output


def test_predict_csv_has_lf_line_endings_and_full_rows(real_faces, tmp_path) -> None:
    images, _ = real_faces
    photos = tmp_path / "photos"
    photos.mkdir()
    face = cv2.resize(images[50], (180, 180), interpolation=cv2.INTER_CUBIC)
    canvas = np.full((300, 300), 110, np.uint8)
    canvas[60:240, 60:240] = face
    cv2.imwrite(str(photos / "face.png"), canvas)
    cv2.imwrite(str(photos / "empty.png"), np.full((200, 200), 110, np.uint8))
    (photos / "zz_broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "predictions.csv"
    done = runner.invoke(app, ["predict", str(photos), "--out", str(out)])
    assert done.exit_code == 2, done.output
    assert len(pd.read_csv(out).columns) == 8 + len(CLASSES)
    body = csv_rows_lf_and_full(out)
    assert {row[6] for row in body} >= {NO_FACE, UNREADABLE}  # both padded to the header


def test_predict_tau_applies_the_prior_corrected_decision(real_faces, checkpoint, tmp_path):
    """--tau divides out the training prior: with a prior dominated by happiness, fewer faces
    are called happy; τ = 0 is the plain argmax."""
    images, labels = real_faces
    write_faces(images, labels, tmp_path / "faces")
    prior = [0.01] * len(CLASSES)
    prior[CLASSES.index("happiness")] = 1 - 0.01 * (len(CLASSES) - 1)
    model = tmp_path / "skewed.onnx"
    export_onnx(checkpoint, model, class_prior=prior)

    def happy_count(tau: float) -> int:
        out = tmp_path / f"tau{tau}.csv"
        args = ["predict", str(tmp_path / "faces"), "--no-detect", "--model", str(model)]
        done = runner.invoke(app, [*args, "--out", str(out), "--tau", str(tau)])
        assert done.exit_code == 0, done.output
        return int((pd.read_csv(out)["label"] == "happiness").sum())

    assert happy_count(2.0) < happy_count(0.0)
