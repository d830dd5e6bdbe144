"""Shared fixtures. Tests that need the real data read FERLAB_SHARED_DATA (set by .ci/run)."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_ENV = "FERLAB_SHARED_DATA"

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The ../shared/data folder; skip when the variable is unset, fail when it is wrong."""
    value = os.environ.get(SHARED_ENV)
    if not value:
        pytest.skip(f"{SHARED_ENV} is not set: this test needs the real FER2013+ data")
    folder = Path(value)
    assert (folder / "fer2013plus.zip").is_file(), f"{SHARED_ENV}={value} has no fer2013plus.zip"
    return folder


@pytest.fixture(scope="session")
def fer_zip(shared_data: Path) -> zipfile.ZipFile:
    return zipfile.ZipFile(shared_data / "fer2013plus.zip")


def sample_members(archive: zipfile.ZipFile, split: str, per_class: int) -> dict[str, list[str]]:
    """The first `per_class` PNG members of each class folder of one split, sorted by name."""
    by_class: dict[str, list[str]] = {}
    for name in sorted(archive.namelist()):
        parts = name.split("/")
        if len(parts) >= 3 and parts[-3] == split and name.endswith(".png"):
            by_class.setdefault(parts[-2], []).append(name)
    return {label: names[:per_class] for label, names in by_class.items()}


def make_subset_zip(source: zipfile.ZipFile, target: Path, per_class: int) -> Path:
    """A small archive in the Kaggle layout with real faces: `per_class` per class and split."""
    with zipfile.ZipFile(target, "w") as out:
        for split in ("train", "test"):
            for names in sample_members(source, split, per_class).values():
                for name in names:
                    out.writestr(name, source.read(name))
    return target


@pytest.fixture(scope="session")
def subset_zip(fer_zip: zipfile.ZipFile, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FER2013+ subset, 40 real faces per class and split."""
    return make_subset_zip(fer_zip, tmp_path_factory.mktemp("subset") / "fer_subset.zip", 40)


@pytest.fixture(scope="session")
def real_faces(fer_zip: zipfile.ZipFile) -> tuple[np.ndarray, np.ndarray]:
    """(images N×48×48 uint8, labels N) from the real test split, 12 per class."""
    import cv2

    from ferlab.classes import CLASS_TO_INDEX

    images, labels = [], []
    for label, names in sample_members(fer_zip, "test", 12).items():
        for name in names:
            data = np.frombuffer(fer_zip.read(name), dtype=np.uint8)
            images.append(cv2.imdecode(data, cv2.IMREAD_GRAYSCALE))
            labels.append(CLASS_TO_INDEX[label])
    return np.stack(images), np.array(labels)


def png_bytes(image: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", image)
    assert ok
    return io.BytesIO(buf.tobytes()).getvalue()
