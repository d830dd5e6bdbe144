"""The preprocess stage on a small real FER2013+ subset, and the cached-array loader."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from ferlab.classes import CLASS_TO_INDEX
from ferlab.data import DataError
from ferlab.data.arrays import REQUIRED_COLUMNS, SPLITS, VARIANTS, load_split
from ferlab.data.splits import read_split
from ferlab.faces.align import plain_crop

ROOT = Path(__file__).resolve().parents[1]


def extract(archive: Path, target: Path) -> None:
    """Unpack the test subset, refusing members that would leave `target`."""
    with zipfile.ZipFile(archive) as zf:
        for name in zf.namelist():
            dest = (target / name).resolve()
            assert dest.is_relative_to(target.resolve()), f"unsafe member {name}"
        zf.extractall(target)


@pytest.fixture(scope="module")
def project(subset_zip: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder like the repo root: params.yaml, dvc.yaml, data/raw, data/split.csv.

    Real faces (40 per class and split), a quarter of the train rows moved to val, plus a blank
    and a noise image that must take the fallback path.
    """
    folder = tmp_path_factory.mktemp("project")
    shutil.copy(ROOT / "params.yaml", folder / "params.yaml")
    shutil.copy(ROOT / "dvc.yaml", folder / "dvc.yaml")  # which params the stage logs
    raw = folder / "data" / "raw"
    raw.mkdir(parents=True)
    extract(subset_zip, raw)
    rows = []
    for path in sorted(raw.rglob("*.png")):
        split, label = path.parts[-3], path.parts[-2]
        rows.append((path.relative_to(folder).as_posix(), split, label))
    table = pd.DataFrame(rows, columns=["path", "split", "label"])
    train = table.index[table["split"] == "train"]
    table.loc[train[::4], "split"] = "val"
    blank, noise = raw / "blank.png", raw / "noise.png"
    cv2.imwrite(str(blank), np.full((48, 48), 127, np.uint8))
    cv2.imwrite(str(noise), np.random.default_rng(1).integers(0, 256, (48, 48), dtype=np.uint8))
    extra = pd.DataFrame(
        [("data/raw/blank.png", "test", "neutral"), ("data/raw/noise.png", "val", "anger")],
        columns=["path", "split", "label"],
    )
    table = pd.concat([table, extra], ignore_index=True)
    table["label_idx"] = table["label"].map(CLASS_TO_INDEX)
    table.to_csv(folder / "data" / "split.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def ran(project: Path) -> Path:
    """Run the real stage script from the project folder, with its own MLflow store."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "preprocess.py")],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "images/s" in out.stdout
    return project


def test_stage_writes_every_array_with_the_table_order(ran: Path):
    table = pd.read_csv(ran / "data" / "split.csv")
    for split in SPLITS:
        expected = table[table["split"] == split]
        for variant in VARIANTS:
            images, labels, paths = load_split(split, variant, ran / "data" / "arrays")
            assert images.shape == (len(expected), 48, 48) and images.dtype == np.uint8
            assert labels.dtype == np.int64
            assert labels.tolist() == expected["label_idx"].tolist()
            assert paths.tolist() == expected["path"].tolist()
    # The original variant is the plain crop of each image.
    images, _, paths = load_split("test", "original", ran / "data" / "arrays")
    first = cv2.imread(str(ran / paths[0]), cv2.IMREAD_GRAYSCALE)
    assert np.array_equal(images[0], plain_crop(first, 48))


def test_detections_cover_every_image_and_flag_the_fallbacks(ran: Path):
    table = pd.read_csv(ran / "data" / "split.csv")
    detections = pd.read_csv(ran / "data" / "detections.csv")
    assert detections["path"].tolist() == table["path"].tolist()
    assert detections["split"].tolist() == table["split"].tolist()
    landmark_columns = [c for c in detections.columns if c.endswith(("_x", "_y"))]
    assert len(landmark_columns) == 10 + 2  # 5 landmarks, and box_x / box_y
    fallback = detections.set_index("path").loc[["data/raw/blank.png", "data/raw/noise.png"]]
    assert not fallback["face_found"].any()
    assert fallback[["score", "box_w", *landmark_columns]].isna().all().all()
    found = detections[detections["face_found"]]
    assert len(found) / len(detections) > 0.9
    # Coordinates are in the original 48×48 pixels.
    assert found["nose_x"].between(0, 48).mean() > 0.95
    # The fallback rows keep the plain crop in the retinaface variant.
    for split, path in (("test", "data/raw/blank.png"), ("val", "data/raw/noise.png")):
        aligned, _, paths = load_split(split, "retinaface", ran / "data" / "arrays")
        plain, _, _ = load_split(split, "original", ran / "data" / "arrays")
        i = paths.tolist().index(path)
        assert np.array_equal(aligned[i], plain[i])
    # Where a face was found, the retinaface variant differs from the plain crop.
    aligned, _, paths = load_split("train", "retinaface", ran / "data" / "arrays")
    plain, _, _ = load_split("train", "original", ran / "data" / "arrays")
    assert np.mean([not np.array_equal(a, b) for a, b in zip(aligned, plain, strict=True)]) > 0.9


def test_report_figure_and_mlflow_run(ran: Path):
    report = json.loads((ran / "reports" / "detection.json").read_text())
    detections = pd.read_csv(ran / "data" / "detections.csv")
    assert report["images"] == len(detections)
    assert report["faces_found"] == int(detections["face_found"].sum())
    assert set(report["per_split"]) == set(SPLITS)
    assert report["per_split"]["test"]["images"] == int((detections["split"] == "test").sum())
    assert len(report["per_class"]) == 8
    assert report["settings"]["upscale"] == 160 and report["images_per_second"] > 0
    figure = cv2.imread(str(ran / "reports" / "figures" / "alignment.png"))
    assert figure is not None and figure.shape[0] > 200

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{ran / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "ferlab"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.tags["stage"] == "preprocess"
    assert run.data.params["preprocess.upscale"] == "160"
    assert run.data.metrics["detection_rate"] == pytest.approx(report["detection_rate"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"detection.json", "alignment.png"} <= artifacts


def test_load_split_names_the_stage_when_arrays_are_missing(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="preprocess"):
        load_split("train", "retinaface", tmp_path)
    with pytest.raises(ValueError, match="unknown variant"):
        load_split("train", "aligned", tmp_path)


def test_split_table_errors_name_the_file(tmp_path: Path):
    path = tmp_path / "split.csv"
    with pytest.raises(DataError, match="run the split stage first"):
        read_split(path, required=REQUIRED_COLUMNS)
    pd.DataFrame({"path": ["a.png"], "split": ["train"], "label": ["anger"]}).to_csv(path)
    with pytest.raises(DataError, match=r"split\.csv: missing columns label_idx"):
        read_split(path, required=REQUIRED_COLUMNS)
    row = {"path": ["a.png"], "split": ["train"], "label": ["anger"], "label_idx": [3]}
    pd.DataFrame(row).to_csv(path)
    with pytest.raises(DataError, match="label_idx disagrees"):
        read_split(path, required=REQUIRED_COLUMNS)
    pd.DataFrame({**row, "split": ["holdout"], "label_idx": [0]}).to_csv(path)
    with pytest.raises(DataError, match=r"unknown split values \['holdout'\]"):
        read_split(path, required=REQUIRED_COLUMNS)


def test_stage_fails_cleanly_on_an_unreadable_image(tmp_path: Path):
    """A corrupt image stops the stage with its name, and leaves no arrays behind."""
    folder = tmp_path / "broken"
    (folder / "data").mkdir(parents=True)
    shutil.copy(ROOT / "params.yaml", folder / "params.yaml")
    (folder / "data" / "bad.png").write_bytes(b"not a png")
    pd.DataFrame(
        {"path": ["data/bad.png"], "split": ["train"], "label": ["anger"], "label_idx": [0]}
    ).to_csv(folder / "data" / "split.csv", index=False)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "preprocess.py")],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode != 0
    assert "data/bad.png: not a readable image" in out.stderr
    assert not (folder / "data" / "arrays").exists()
    assert not (folder / "data" / "detections.csv").exists()
