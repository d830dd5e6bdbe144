"""The cached training arrays: building them from the split table (preprocess stage), loading them.

Each (variant, split) pair is one uncompressed .npz in data/arrays/ holding `images`
(N×S×S uint8), `labels` (N int64, canonical class order), `paths` (N str, as in data/split.csv)
and `face_found` (N bool: whether RetinaFace found a face; the `retinaface` variant falls back to
the plain crop where it did not).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ferlab.classes import CLASSES
from ferlab.data import SPLITS
from ferlab.faces.align import align_face, plain_crop
from ferlab.faces.detect import LANDMARK_NAMES, Face, FaceDetector
from ferlab.io import atomic_path, read_gray, save_npz

VARIANTS: tuple[str, ...] = ("original", "retinaface")
DEFAULT_ROOT = "data/arrays"
# The split table columns preprocessing needs (the split stage writes more).
REQUIRED_COLUMNS: tuple[str, ...] = ("path", "split", "label", "label_idx")
DETECTION_COLUMNS: tuple[str, ...] = (
    "path",
    "split",
    "label",
    "face_found",
    "n_faces",
    "score",
    "box_x",
    "box_y",
    "box_w",
    "box_h",
    *(f"{name}_{axis}" for name in LANDMARK_NAMES for axis in ("x", "y")),
)


def array_path(split: str, variant: str = "original", root: str | Path = DEFAULT_ROOT) -> Path:
    """Where the arrays of one split and variant live."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    return Path(root) / f"{variant}_{split}.npz"


def load_split(
    split: str, variant: str = "original", root: str | Path = DEFAULT_ROOT
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images N×S×S uint8, labels N int64, paths N str) of one cached split and variant."""
    path = array_path(split, variant, root)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no cached arrays; the preprocess stage writes them "
            "(`dvc repro preprocess`, or `python stages/preprocess.py` from the project root)"
        )
    with np.load(path, allow_pickle=False) as data:
        missing = {"images", "labels", "paths"} - set(data.files)
        if missing:
            raise ValueError(f"{path}: lacks {sorted(missing)}; rerun the preprocess stage")
        return data["images"], data["labels"].astype(np.int64), data["paths"]


@dataclass
class Example:
    """One image kept for the alignment figure."""

    original: np.ndarray
    face: Face | None
    aligned: np.ndarray
    title: str


@dataclass
class PreprocessResult:
    """Everything the preprocess stage writes, in memory."""

    # arrays[(variant, split)] = {"images", "labels", "paths", "face_found"}
    arrays: dict[tuple[str, str], dict[str, np.ndarray]]
    detections: pd.DataFrame
    examples: list[Example] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return len(self.detections) / self.seconds if self.seconds > 0 else 0.0


def preprocess_table(
    table: pd.DataFrame,
    detector: FaceDetector,
    size: int,
    batch_size: int = 64,
    root: str | Path = ".",
    log: Callable[[str], None] = print,
    log_every_s: float = 5.0,
    n_examples: int = 8,
) -> PreprocessResult:
    """Detect, align and crop every image of the table (paths relative to `root`).

    The `original` variant is the plain crop; the `retinaface` variant is the aligned face where
    one was found (highest score), else the plain crop, flagged in `face_found`.
    """
    root = Path(root)
    n = len(table)
    originals = np.zeros((n, size, size), np.uint8)
    aligned = np.zeros((n, size, size), np.uint8)
    rows: list[dict[str, Any]] = []
    examples: dict[str, Example] = {}
    fallbacks: list[Example] = []
    start = last_log = time.perf_counter()
    found_so_far = 0
    for begin in range(0, n, batch_size):
        chunk = table.iloc[begin : begin + batch_size]
        images = [read_gray(root / p) for p in chunk["path"]]
        faces = _detect_grouped(detector, images)
        for offset, (image, image_faces, record) in enumerate(
            zip(images, faces, chunk.itertuples(index=False), strict=True)
        ):
            i = begin + offset
            best = image_faces[0] if image_faces else None
            originals[i] = plain_crop(image, size)
            if best is not None:
                aligned[i] = align_face(image, best.landmarks, size)
            else:
                aligned[i] = originals[i]
            rows.append(_detection_row(record, best, len(image_faces)))
            found_so_far += best is not None
            title = f"{record.label} ({record.split})"
            # The figure shows the first face of each class and up to two fallbacks.
            if best is not None and record.label not in examples and len(examples) < n_examples:
                examples[record.label] = Example(image, best, aligned[i].copy(), title)
            elif best is None and len(fallbacks) < 2:
                fallbacks.append(Example(image, None, aligned[i].copy(), title))
        now = time.perf_counter()
        done = min(begin + batch_size, n)
        if now - last_log >= log_every_s or done == n:
            last_log = now
            log(
                f"preprocess: {done}/{n} images, {done / (now - start):.0f} images/s, "
                f"face found in {found_so_far / done:.1%}"
            )
    seconds = time.perf_counter() - start
    detections = pd.DataFrame(rows, columns=list(DETECTION_COLUMNS))
    arrays: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    found = detections["face_found"].to_numpy(bool)
    for split in SPLITS:
        index = np.flatnonzero(table["split"].to_numpy() == split)
        common = {
            "labels": table["label_idx"].to_numpy(np.int64)[index],
            "paths": table["path"].to_numpy(str)[index],
            "face_found": found[index],
        }
        arrays[("original", split)] = {"images": originals[index], **common}
        arrays[("retinaface", split)] = {"images": aligned[index], **common}
    return PreprocessResult(arrays, detections, [*examples.values(), *fallbacks], seconds)


def _detect_grouped(detector: FaceDetector, images: list[np.ndarray]) -> list[list[Face]]:
    """detect_batch over images of mixed sizes: one network call per distinct size."""
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        by_shape.setdefault(image.shape, []).append(i)
    out: list[list[Face]] = [[] for _ in images]
    for index in by_shape.values():
        for i, faces in zip(index, detector.detect_batch([images[i] for i in index]), strict=True):
            out[i] = faces
    return out


def _detection_row(record: Any, face: Face | None, n_faces: int) -> dict[str, Any]:
    row: dict[str, Any] = {
        "path": record.path,
        "split": record.split,
        "label": record.label,
        "face_found": face is not None,
        "n_faces": n_faces,
    }
    if face is None:
        return row  # the remaining columns stay empty (NaN)
    row["score"] = face.score
    row.update(zip(("box_x", "box_y", "box_w", "box_h"), face.box, strict=True))
    for name, (x, y) in zip(LANDMARK_NAMES, face.landmarks, strict=True):
        row[f"{name}_x"], row[f"{name}_y"] = float(x), float(y)
    return row


def detection_summary(
    detections: pd.DataFrame, settings: dict[str, Any], images_per_second: float
) -> dict[str, Any]:
    """Detection rate overall, per split and per class (overall and within each split)."""

    def rates(frame: pd.DataFrame) -> dict[str, Any]:
        found = int(frame["face_found"].sum())
        return {
            "images": len(frame),
            "faces_found": found,
            "detection_rate": round(found / len(frame), 6) if len(frame) else None,
        }

    def per_class(frame: pd.DataFrame) -> dict[str, Any]:
        return {
            c: rates(frame[frame["label"] == c]) for c in CLASSES if (frame["label"] == c).any()
        }

    scores = detections.loc[detections["face_found"], "score"]
    return {
        "settings": settings,
        **rates(detections),
        "mean_score": round(float(scores.mean()), 6) if len(scores) else None,
        "images_with_several_faces": int((detections["n_faces"] > 1).sum()),
        "per_split": {
            split: {**rates(part), "per_class": per_class(part)}
            for split in SPLITS
            if len(part := detections[detections["split"] == split])
        },
        "per_class": per_class(detections),
        "images_per_second": round(images_per_second, 1),
    }


def summary_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """Flat numeric metrics of a detection summary, for MLflow."""
    metrics = {
        "detection_rate": summary["detection_rate"],
        "images_per_second": summary["images_per_second"],
    }
    for split, part in summary["per_split"].items():
        metrics[f"detection_rate_{split}"] = part["detection_rate"]
    for label, part in summary["per_class"].items():
        metrics[f"detection_rate_{label}"] = part["detection_rate"]
    return {k: v for k, v in metrics.items() if v is not None}


def save_arrays(
    arrays: dict[tuple[str, str], dict[str, np.ndarray]], root: str | Path = DEFAULT_ROOT
) -> None:
    """Write every (variant, split) .npz into `root`, replacing the folder in one rename."""
    with atomic_path(root, folder=True) as tmp:
        tmp.mkdir()
        for (variant, split), data in arrays.items():
            save_npz(array_path(split, variant, tmp), **data)
