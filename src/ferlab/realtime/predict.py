"""Batch prediction: image files or folders in, one CSV row per face out."""

from __future__ import annotations

import csv
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ferlab.classes import CLASSES
from ferlab.data import IMAGE_SUFFIXES
from ferlab.faces.align import plain_crop
from ferlab.faces.detect import FaceDetector
from ferlab.io import atomic_path, read_gray
from ferlab.realtime.runtime import detect_faces, face_crop, label_of
from ferlab.realtime.video import NO_FACE, check_output_file, padded_row

UNREADABLE = "unreadable"  # the label of the row of a file that is not a readable image
PREDICT_DECIMALS = 6  # the decimals of a probability in the predictions CSV
PREDICTION_COLUMNS: tuple[str, ...] = (
    "file",
    "face",
    "box_x",
    "box_y",
    "box_w",
    "box_h",
    "label",
    "confidence",
    *CLASSES,
)

Log = Callable[[str], None]


def collect_images(paths: Iterable[str | Path]) -> list[Path]:
    """The image files named, and those under the folders named (recursively, sorted)."""
    found: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            found.extend(
                sorted(
                    p
                    for p in entry.rglob("*")
                    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                )
            )
        elif entry.is_file():
            found.append(entry)
        else:
            raise FileNotFoundError(f"{entry}: no such image file or folder")
    if not found:
        names = ", ".join(map(str, paths))
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {names}")
    return found


@dataclass
class PredictSummary:
    images: int = 0
    faces: int = 0
    without_face: int = 0
    labels: Counter[str] = field(default_factory=Counter)
    unreadable: list[str] = field(default_factory=list)  # one message per file skipped


def predict_images(
    paths: Sequence[str | Path],
    classifier: Any,
    out_csv: str | Path,
    detector: FaceDetector | None = None,
    detect_max_side: int = 640,
    threshold: float = 0.0,
    batch_size: int = 64,
    log: Log = print,
    log_every_s: float = 5.0,
    strict: bool = False,
    on_unreadable: Log | None = None,
) -> PredictSummary:
    """Classify every face in the images and write the CSV (atomically: all or nothing).

    With a detector, each face found is cropped like the model's training faces (its variant)
    and gets a row (face 0 is the most confident detection); an image without a face gets one
    `no face` row. Without a detector, each image is taken as one already-cropped face and
    resized like the preprocess stage's `original` variant. A label is the most probable class,
    or "not detected" when its probability is below `threshold` (0 turns that off).

    A file that cannot be read as an image gets one `unreadable` row, its message goes to
    `on_unreadable` and `summary.unreadable`, and the other files are still classified; with
    `strict` the first such file raises and no CSV is written.
    """
    files = collect_images(paths)
    check_output_file(out_csv, files)
    size = int(classifier.input_size)
    variant = str(classifier.meta.get("variant", "original"))
    summary = PredictSummary()
    last_log = time.perf_counter()
    with atomic_path(out_csv) as tmp, tmp.open("w", newline="") as f:
        # "\n", not the csv module's "\r\n": the same bytes on every platform and tool.
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(PREDICTION_COLUMNS)
        for begin in range(0, len(files), batch_size):
            chunk = files[begin : begin + batch_size]
            entries: list[tuple[Path, str | int, tuple[float, ...]]] = []
            crops: list[np.ndarray] = []
            for path in chunk:
                try:
                    gray = read_gray(path)
                except (FileNotFoundError, ValueError) as exc:
                    if strict:
                        raise
                    summary.unreadable.append(str(exc))
                    if on_unreadable is not None:
                        on_unreadable(str(exc))
                    entries.append((path, UNREADABLE, ()))
                    continue
                if detector is None:
                    entries.append(
                        (path, 0, (0.0, 0.0, float(gray.shape[1]), float(gray.shape[0])))
                    )
                    crops.append(plain_crop(gray, size))
                    continue
                faces = detect_faces(detector, gray, detect_max_side)
                if not faces:
                    entries.append((path, NO_FACE, ()))
                for i, face in enumerate(faces):
                    entries.append((path, i, face.box))
                    crops.append(face_crop(gray, face, size, variant))
            probs = iter(classifier.predict_proba(np.stack(crops)) if crops else [])
            for path, face_index, box in entries:
                if isinstance(face_index, str):  # no face, or unreadable: no probabilities
                    row = [str(path), "", "", "", "", "", face_index]
                    writer.writerow(padded_row(row, PREDICTION_COLUMNS))
                    if face_index == NO_FACE:
                        summary.without_face += 1
                    continue
                probabilities = next(probs)
                label, confidence = label_of(probabilities, threshold, PREDICT_DECIMALS)
                writer.writerow(
                    [
                        str(path),
                        face_index,
                        *(f"{v:.2f}" for v in box),
                        label,
                        f"{confidence:.{PREDICT_DECIMALS}f}",
                        *(f"{p:.{PREDICT_DECIMALS}f}" for p in probabilities),
                    ]
                )
                summary.faces += 1
                summary.labels[label] += 1
            summary.images += len(chunk)
            now = time.perf_counter()
            if now - last_log >= log_every_s:
                last_log = now
                log(f"predict: {summary.images}/{len(files)} images, {summary.faces} faces")
    return summary
