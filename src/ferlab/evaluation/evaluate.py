"""The evaluate stage's work: metrics, confusion matrices and predictions for val and test."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from ferlab.classes import CLASSES
from ferlab.data.arrays import load_split
from ferlab.evaluation.attention_maps import attention_figure
from ferlab.evaluation.metrics import classification_metrics, confusion_matrix
from ferlab.evaluation.plots import confusion_figure, note_figure
from ferlab.inference import Classifier
from ferlab.io import atomic_path, write_json


def evaluate_checkpoint(
    checkpoint: str | Path,
    arrays_root: str | Path = "data/arrays",
    reports: str | Path = "reports",
    batch_size: int = 256,
) -> dict[str, Any]:
    """Score the checkpoint on val and test (its own preprocessing variant) and write reports."""
    reports = Path(reports)
    classifier = Classifier.from_checkpoint(checkpoint)
    variant = classifier.meta.get("variant", "original")
    results: dict[str, Any] = {"variant": variant, "model": classifier.meta["model"]["name"]}
    for split in ("val", "test"):
        images, labels, paths = load_split(split, variant, arrays_root)
        probs = classifier.predict_proba(images, batch_size)
        metrics = classification_metrics(labels, probs)
        results[split] = metrics
        matrix = confusion_matrix(labels, probs.argmax(1))
        confusion_figure(
            matrix,
            reports / "figures" / f"confusion_{split}.png",
            f"{split}: accuracy {metrics['accuracy']:.3f}, "
            f"balanced {metrics['balanced_accuracy']:.3f}",
        )
        if split == "test":
            write_confusion_csv(labels, probs.argmax(1), reports / "confusion_test.csv")
            write_predictions(paths, labels, probs, reports / "predictions_test.csv")
            if hasattr(classifier.model, "forward_with_heads"):
                # One correctly classified test face per class: where MFN and DDAN look.
                right = labels == probs.argmax(1)
                picks = [
                    int(np.flatnonzero(right & (labels == c))[0])
                    for c in range(len(CLASSES))
                    if (right & (labels == c)).any()
                ]
                attention_figure(
                    classifier.model,
                    images[picks],
                    reports / "figures" / "attention_maps.png",
                    max_faces=len(picks),
                )
            else:
                note_figure(
                    f"{results['model']} has no attention heads: no attention maps",
                    reports / "figures" / "attention_maps.png",
                )
    write_json(reports / "metrics.json", results)
    return results


def write_confusion_csv(labels: np.ndarray, preds: np.ndarray, path: Path) -> None:
    """One row per image (actual, predicted): the layout DVC's confusion template reads."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["actual", "predicted"])
        writer.writerows((CLASSES[a], CLASSES[p]) for a, p in zip(labels, preds, strict=True))


def write_predictions(paths: np.ndarray, labels: np.ndarray, probs: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "predicted", "confidence", *CLASSES])
        for p, label, row in zip(paths, labels, probs, strict=True):
            pred = int(row.argmax())
            writer.writerow(
                [p, CLASSES[label], CLASSES[pred], f"{row[pred]:.6f}", *(f"{v:.6f}" for v in row)]
            )
