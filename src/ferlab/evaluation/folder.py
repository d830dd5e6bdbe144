"""`ferlab evaluate DIR`: score a model on any labelled face folder, one subfolder per class.

Faces are found with the project's RetinaFace detector and cut the way the model's training
faces were (`ferlab.realtime.runtime.face_crop`, as `ferlab predict` does), or taken as given
(`--no-detect`: each image is one face, centre-cropped and resized). Scores are computed with
the evaluate stage's own function over all eight classes, and again with the decision
restricted to the classes the folder has.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ferlab.classes import CLASSES
from ferlab.evaluation.evaluate import protocol_metrics
from ferlab.evaluation.metrics import classification_metrics, confusion_matrix
from ferlab.evaluation.plots import confusion_figure
from ferlab.inference import FaceClassifier, model_label
from ferlab.io import atomic_path, write_json

Log = Callable[[str], None]

# Folder names accepted for each class (compared case-insensitively): the canonical FER+
# names and the usual adjective forms (FER2013's, and most other datasets').
ALIASES: dict[str, tuple[str, ...]] = {
    "anger": ("anger", "angry"),
    "contempt": ("contempt", "contemptuous"),
    "disgust": ("disgust", "disgusted"),
    "fear": ("fear", "fearful", "afraid"),
    "happiness": ("happiness", "happy"),
    "neutral": ("neutral",),
    "sadness": ("sadness", "sad"),
    "surprise": ("surprise", "surprised"),
}
ALIAS_TO_CLASS: dict[str, str] = {a: c for c, names in ALIASES.items() for a in names}
OUTPUT_FILES: tuple[str, ...] = (
    "metrics.json",
    "predictions.csv",
    "confusion.png",
    "confusion_present_classes.png",
)
NO_FACE = "no face"


def class_of_folder(name: str) -> str:
    """The canonical class a folder name stands for; one clear error listing the accepted."""
    found = ALIAS_TO_CLASS.get(name.strip().lower())
    if found is None:
        accepted = "; ".join(f"{c}: {', '.join(names)}" for c, names in ALIASES.items())
        raise ValueError(
            f"class folder {name!r} is not an expression this model knows; rename it to one of "
            f"the accepted names (any case) — {accepted}"
        )
    return found


def labelled_images(root: str | Path) -> list[tuple[Path, int]]:
    """(image, class index) for every image under DIR/<class>/ (searched deeply), sorted."""
    from ferlab.realtime.predict import IMAGE_SUFFIXES

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (expected one subfolder per class)")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(
            f"{root}: no class subfolders; put each class's images in DIR/<class>/ "
            "(e.g. DIR/happy/, DIR/sad/)"
        )
    seen: dict[str, Path] = {}
    found: list[tuple[Path, int]] = []
    for folder in folders:
        label = class_of_folder(folder.name)
        if label in seen:
            raise ValueError(
                f"{seen[label]} and {folder} both stand for {label}; merge them into one folder"
            )
        seen[label] = folder
        images = sorted(
            p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        found += [(p, CLASSES.index(label)) for p in images]
    if not found:
        raise ValueError(f"{root}: the class folders hold no images ({', '.join(IMAGE_SUFFIXES)})")
    return found


def check_output_folder(out: str | Path, source: str | Path, force: bool) -> Path:
    """The output folder, refused when inside DIR or when it holds files and not `force`."""
    out, source = Path(out), Path(source)
    if out.resolve().is_relative_to(source.resolve()):
        raise ValueError(f"{out}: is inside {source}; choose an --out folder outside it")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: is a file; give --out a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ValueError(
            f"{out}: folder exists and is not empty; choose another --out, or pass --force to "
            f"replace its {', '.join(OUTPUT_FILES)} (nothing else in it is touched)"
        )
    return out


@dataclass
class Crops:
    faces: np.ndarray  # N×S×S uint8, one per image where a face was found
    found: np.ndarray  # bool per image


def face_crops(
    paths: list[Path],
    classifier: FaceClassifier,
    detector: Any | None,
    detect_max_side: int = 640,
    log: Log = print,
) -> Crops:
    """One model-ready face per image: the most confident detection, cut like the model's
    training faces; or, without a detector, the image itself centre-cropped and resized."""
    from ferlab.faces.align import plain_crop
    from ferlab.io import read_gray
    from ferlab.realtime.runtime import detect_faces, face_crop

    size = int(classifier.input_size)
    variant = str(classifier.meta.get("variant", "original"))
    faces: list[np.ndarray] = []
    found = np.zeros(len(paths), dtype=bool)
    for i, path in enumerate(paths):
        gray = read_gray(path)
        if detector is None:
            faces.append(plain_crop(gray, size))
            found[i] = True
            continue
        detected = detect_faces(detector, gray, detect_max_side)
        if detected:
            faces.append(face_crop(gray, detected[0], size, variant))
            found[i] = True
        if (i + 1) % 500 == 0:
            log(f"evaluate: {i + 1}/{len(paths)} images, {int(found.sum())} faces")
    stack = np.stack(faces) if faces else np.zeros((0, size, size), np.uint8)
    return Crops(stack, found)


def restricted_metrics(
    probs: np.ndarray, labels: np.ndarray, present: np.ndarray
) -> tuple[dict[str, Any], np.ndarray]:
    """Metrics with the decision limited to the `present` classes (probabilities
    renormalised over them); returns (metrics, predictions as canonical indices)."""
    sub = probs[:, present]
    sub = sub / sub.sum(axis=1, keepdims=True)
    preds = present[sub.argmax(axis=1)]
    full = np.zeros_like(probs)
    full[:, present] = sub
    return classification_metrics(labels, full, preds=preds), preds


def evaluate_folder(
    root: str | Path,
    classifier: FaceClassifier,
    out: str | Path,
    detector: Any | None = None,
    detect_max_side: int = 640,
    batch_size: int = 256,
    force: bool = False,
    model_file: str | list[str] | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Score `classifier` on DIR/<class>/ images; write metrics.json, predictions.csv and the
    confusion figures into `out`. Returns the metrics."""
    out = check_output_folder(out, root, force)
    items = labelled_images(root)
    paths = [p for p, _ in items]
    labels_all = np.array([label for _, label in items], dtype=np.int64)
    crops = face_crops(paths, classifier, detector, detect_max_side, log)
    labels = labels_all[crops.found]
    if len(labels) == 0:
        raise ValueError(f"{root}: no face found in any of the {len(paths)} images")
    logits = classifier.logits(crops.faces, batch_size)
    scores = protocol_metrics(classifier, logits, labels)
    probs = classifier.proba(logits)
    preds = classifier.decide(logits)
    present = np.unique(labels)
    restricted, restricted_preds = restricted_metrics(probs, labels, present)
    restricted["confusion"] = confusion_matrix(labels, restricted_preds).tolist()
    missing = [str(p) for p, ok in zip(paths, crops.found, strict=True) if not ok]
    result = {
        "folder": str(root),
        "model": model_label(classifier.meta["model"]),
        "model_file": model_file,
        "detection": detector is not None,
        "tta_flip": classifier.tta_flip,
        "views": classifier.meta.get("views"),  # test-time views inside the model itself
        "logit_adjust_tau": classifier.logit_adjust_tau,
        "images": len(paths),
        "faces": len(labels),
        "no_face": {"count": len(missing), "files": missing},
        "classes_present": [CLASSES[i] for i in present],
        "all_classes": scores,
        "present_classes": restricted,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", result)
    _write_predictions(out / "predictions.csv", paths, labels_all, crops.found, probs, preds)
    confusion_figure(
        np.array(scores["confusion"]),
        out / "confusion.png",
        f"all 8 classes (n={len(labels):,}): accuracy {scores['accuracy']:.3f}, "
        f"balanced {scores['balanced_accuracy']:.3f}",
    )
    matrix = np.array(restricted["confusion"])[np.ix_(present, present)]
    confusion_figure(
        matrix,
        out / "confusion_present_classes.png",
        f"{len(present)} classes present: accuracy {restricted['accuracy']:.3f}, "
        f"balanced {restricted['balanced_accuracy']:.3f}",
        classes=[CLASSES[i] for i in present],
    )
    return result


def _write_predictions(
    path: Path,
    paths: list[Path],
    labels: np.ndarray,
    found: np.ndarray,
    probs: np.ndarray,
    preds: np.ndarray,
) -> None:
    rows = iter(zip(probs, preds, strict=True))
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label", "predicted", "confidence", *CLASSES])
        for file, label, ok in zip(paths, labels, found, strict=True):
            if not ok:
                writer.writerow([str(file), CLASSES[label], NO_FACE, "", *([""] * len(CLASSES))])
                continue
            row, pred = next(rows)
            writer.writerow(
                [
                    str(file),
                    CLASSES[label],
                    CLASSES[int(pred)],
                    f"{row[int(pred)]:.6f}",
                    *(f"{v:.6f}" for v in row),
                ]
            )
