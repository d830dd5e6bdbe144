"""`ferlab evaluate DIR`: a labelled face folder scored like the evaluate stage scores."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import sample_members
from test_export import train_small
from typer.testing import CliRunner

from ferlab.classes import CLASS_TO_INDEX, CLASSES
from ferlab.cli import app
from ferlab.evaluation.evaluate import protocol_metrics
from ferlab.evaluation.folder import ALIASES, class_of_folder
from ferlab.inference import load_classifier

runner = CliRunner()
# One folder name per class, in the spellings people use (case varies on purpose).
FOLDER_NAMES = {
    "anger": "Angry",
    "contempt": "contempt",
    "disgust": "disgusted",
    "fear": "FEARFUL",
    "happiness": "happy",
    "neutral": "Neutral",
    "sadness": "sad",
    "surprise": "surprised",
}


def real_members(
    fer_zip: zipfile.ZipFile, split: str, per_class: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The first `per_class` real faces of each class of a split: (images, labels, names)."""
    members = sample_members(fer_zip, split, per_class)
    names = [n for c in CLASSES for n in members[c]]
    images = np.stack(
        [
            cv2.imdecode(np.frombuffer(fer_zip.read(n), np.uint8), cv2.IMREAD_GRAYSCALE)
            for n in names
        ]
    )
    labels = np.array([CLASS_TO_INDEX[n.split("/")[-2]] for n in names])
    return images, labels, [Path(n).name for n in names]


@pytest.fixture(scope="module")
def test_faces(fer_zip: zipfile.ZipFile) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Real FER2013+ test faces, 8 per class."""
    return real_members(fer_zip, "test", 8)


def write_folder(root: Path, images: np.ndarray, labels: np.ndarray, names: list[str]) -> Path:
    for image, label, name in zip(images, labels, names, strict=True):
        folder = root / FOLDER_NAMES[CLASSES[label]]
        folder.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(folder / name), image)
    return root


def as_photo(face: np.ndarray) -> np.ndarray:
    """A 48-px face enlarged to 160 px and padded into a 256×256 grey "photo"."""
    photo = np.full((256, 256), 120, np.uint8)
    photo[40:200, 56:216] = cv2.resize(face, (160, 160), interpolation=cv2.INTER_CUBIC)
    return photo


@pytest.fixture(scope="module")
def checkpoint(fer_zip: zipfile.ZipFile, tmp_path_factory: pytest.TempPathFactory) -> Path:
    images, labels, _ = real_members(fer_zip, "train", 10)
    return train_small(images, labels, tmp_path_factory.mktemp("folder") / "model.pt")


def test_no_detect_agrees_with_the_stage_scoring(test_faces, checkpoint, tmp_path) -> None:
    images, labels, names = test_faces
    folder = write_folder(tmp_path / "faces", images, labels, names)
    out = tmp_path / "out"
    done = runner.invoke(
        app,
        ["evaluate", str(folder), "--no-detect", "--model", str(checkpoint), "--out", str(out)],
    )
    assert done.exit_code == 0, done.output
    result = json.loads((out / "metrics.json").read_text())

    # The evaluate stage's own scoring of the very same faces and model.
    classifier = load_classifier(checkpoint)
    logits = classifier.logits(images)
    stage = protocol_metrics(classifier, logits, labels)
    for key in ("n", "accuracy", "balanced_accuracy", "macro_f1", "ece"):
        assert result["all_classes"][key] == pytest.approx(stage[key]), key
    assert result["all_classes"]["confusion"] == stage["confusion"]
    predictions = pd.read_csv(out / "predictions.csv")
    by_name = predictions.set_index(predictions["file"].map(lambda f: Path(f).name))
    got = by_name.loc[names, "predicted"].tolist()
    assert got == [CLASSES[i] for i in logits.argmax(1)]
    assert by_name.loc[names, "label"].tolist() == [CLASSES[i] for i in labels]
    assert result["images"] == result["faces"] == len(labels)
    assert result["model_file"] == str(checkpoint)
    assert result["classes_present"] == list(CLASSES)
    assert (out / "confusion.png").stat().st_size > 10_000

    # Restricted to the classes present: here all eight, so the same answers.
    assert result["present_classes"]["accuracy"] == pytest.approx(stage["accuracy"])

    # The folder is the user's result: not overwritten without --force.
    again = runner.invoke(
        app,
        ["evaluate", str(folder), "--no-detect", "--model", str(checkpoint), "--out", str(out)],
    )
    assert again.exit_code == 1 and "not empty" in again.output and "--force" in again.output
    (out / "notes.txt").write_text("mine")
    forced = runner.invoke(
        app,
        [
            "evaluate",
            str(folder),
            "--no-detect",
            "--model",
            str(checkpoint),
            "--out",
            str(out),
            "--force",
        ],
    )
    assert forced.exit_code == 0, forced.output
    assert (out / "notes.txt").read_text() == "mine"


def test_photos_with_detection_and_a_subset_of_classes(test_faces, tmp_path) -> None:
    """The bundled model on the same faces as 256-px photos, found by RetinaFace; three
    classes only, plus one image without a face."""
    images, labels, names = test_faces
    keep = np.isin(labels, [CLASS_TO_INDEX[c] for c in ("happiness", "surprise", "neutral")])
    faces = write_folder(tmp_path / "faces", images[keep], labels[keep], np.array(names)[keep])
    photos = tmp_path / "photos"
    for path in faces.rglob("*.png"):
        target = photos / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), as_photo(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)))
    cv2.imwrite(str(photos / "happy/blank.png"), np.full((256, 256), 120, np.uint8))

    plain = runner.invoke(
        app, ["evaluate", str(faces), "--no-detect", "--out", str(tmp_path / "a")]
    )
    assert plain.exit_code == 0, plain.output
    detected = runner.invoke(app, ["evaluate", str(photos), "--out", str(tmp_path / "b")])
    assert detected.exit_code == 0, detected.output
    a = json.loads((tmp_path / "a/metrics.json").read_text())
    b = json.loads((tmp_path / "b/metrics.json").read_text())

    assert b["images"] == keep.sum() + 1
    assert b["no_face"]["count"] >= 1
    assert any(f.endswith("blank.png") for f in b["no_face"]["files"])
    assert b["faces"] >= 0.9 * keep.sum()  # most faces found
    assert b["faces"] + b["no_face"]["count"] == b["images"]
    assert b["classes_present"] == ["happiness", "neutral", "surprise"]
    # Cut from the photo like a training face, the answers stay close to the crops'.
    assert abs(b["all_classes"]["accuracy"] - a["all_classes"]["accuracy"]) <= 0.15
    assert a["all_classes"]["accuracy"] > 0.5  # the bundled model on real faces
    # With the decision limited to the three classes present, accuracy can only rise.
    assert a["present_classes"]["accuracy"] >= a["all_classes"]["accuracy"]
    matrix = np.array(a["present_classes"]["confusion"])
    absent = [CLASS_TO_INDEX[c] for c in CLASSES if c not in a["classes_present"]]
    assert matrix[:, absent].sum() == 0  # never predicts a class the folder does not have
    rows = pd.read_csv(tmp_path / "b/predictions.csv")
    assert rows.loc[rows["file"].str.endswith("blank.png"), "predicted"].tolist() == ["no face"]


def test_folder_names_map_to_classes() -> None:
    for name, expected in FOLDER_NAMES.items():
        assert class_of_folder(expected) == name
    for canonical, spellings in ALIASES.items():
        assert class_of_folder(canonical.upper()) == canonical
        for spelling in spellings:
            assert class_of_folder(spelling.title()) == canonical
    assert class_of_folder(" Happiness ") == "happiness"


def test_an_unknown_class_folder_is_one_clear_error(test_faces, tmp_path) -> None:
    images, labels, names = test_faces
    folder = write_folder(tmp_path / "faces", images[:4], labels[:4], names[:4])
    (folder / "bored").mkdir()
    cv2.imwrite(str(folder / "bored/x.png"), images[0])
    done = runner.invoke(
        app, ["evaluate", str(folder), "--no-detect", "--out", str(tmp_path / "o")]
    )
    assert done.exit_code == 1
    lines = done.output.strip().splitlines()
    assert len(lines) == 1 and "'bored'" in lines[0]
    for spelling in ("angry", "happy", "surprised", "fearful", "contempt", "neutral"):
        assert spelling in lines[0]
    assert not (tmp_path / "o").exists()
    # An output folder inside the input folder is refused (its files would become inputs).
    done = runner.invoke(app, ["evaluate", str(tmp_path / "faces"), "--out", str(folder / "x")])
    assert done.exit_code == 1 and "inside" in done.output
