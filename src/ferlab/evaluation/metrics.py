"""Classification metrics over the canonical classes, computed with numpy alone."""

from __future__ import annotations

import numpy as np

from ferlab.classes import CLASSES, NUM_CLASSES


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, n: int = NUM_CLASSES) -> np.ndarray:
    """n×n counts, rows = actual, columns = predicted; n×n even when a class is absent."""
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, int), np.asarray(preds, int)), 1)
    return matrix


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict:
    """Accuracy, balanced accuracy, macro-F1, mean cross-entropy, per-class recall.

    Balanced accuracy and macro-F1 average over the classes present in `labels`, so a subset
    without some class is not punished for it; per-class recall is None for absent classes.
    """
    labels = np.asarray(labels, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    if len(labels) == 0:
        raise ValueError("no samples to evaluate")
    preds = probs.argmax(axis=1)
    matrix = confusion_matrix(labels, preds)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    tp = np.diag(matrix)
    present = support > 0
    recall = np.where(present, tp / np.maximum(support, 1), np.nan)
    precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
    f1 = np.where(
        (precision + np.nan_to_num(recall)) > 0,
        2
        * precision
        * np.nan_to_num(recall)
        / np.maximum(precision + np.nan_to_num(recall), 1e-12),
        0.0,
    )
    eps = 1e-12
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], eps, 1.0))))
    return {
        "n": len(labels),
        "accuracy": float((preds == labels).mean()),
        "balanced_accuracy": float(np.nanmean(recall[present])),
        "macro_f1": float(f1[present].mean()),
        "loss": loss,
        "per_class_recall": {
            name: (None if np.isnan(recall[i]) else float(recall[i]))
            for i, name in enumerate(CLASSES)
        },
        "support": {name: int(support[i]) for i, name in enumerate(CLASSES)},
    }
