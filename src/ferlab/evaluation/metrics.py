"""Classification and calibration metrics over the canonical classes (scikit-learn underneath).

Balanced accuracy and macro-F1 average over the classes present in the labels, so a subset
without some class (a user's folder, a protocol's subset) is not punished for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm

from ferlab.classes import CLASSES, NUM_CLASSES

ECE_BINS = 15


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, n: int = NUM_CLASSES) -> np.ndarray:
    """n×n counts, rows = actual, columns = predicted; n×n even when a class is absent, and
    all zeros for no samples (an empty group of a study)."""
    if len(labels) == 0:
        return np.zeros((n, n), dtype=np.int64)
    return skm.confusion_matrix(
        np.asarray(labels, int), np.asarray(preds, int), labels=np.arange(n)
    ).astype(np.int64)


def classification_metrics(
    labels: np.ndarray,
    probs: np.ndarray,
    preds: np.ndarray | None = None,
    classes: Sequence[str] = CLASSES,
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro-F1, mean cross-entropy, per-class precision/recall.

    `preds` defaults to the argmax of `probs` (give it for another decision rule, such as the
    prior-corrected one; the loss always scores `probs`). Per-class recall is None for classes
    absent from `labels`, precision None for classes never predicted.
    """
    labels = np.asarray(labels, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    if len(labels) == 0:
        raise ValueError("no samples to evaluate")
    preds = probs.argmax(axis=1) if preds is None else np.asarray(preds, dtype=int)
    everyone = np.arange(len(classes))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, preds, labels=everyone, zero_division=0
    )
    predicted = np.bincount(preds, minlength=len(classes))
    present = support > 0
    true_prob = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
    return {
        "n": len(labels),
        "accuracy": float(skm.accuracy_score(labels, preds)),
        "balanced_accuracy": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
        "loss": float(-np.log(true_prob).mean()),
        "per_class_recall": {
            name: float(recall[i]) if present[i] else None for i, name in enumerate(classes)
        },
        "per_class_precision": {
            name: float(precision[i]) if predicted[i] else None for i, name in enumerate(classes)
        },
        "support": {name: int(support[i]) for i, name in enumerate(classes)},
    }


def calibration_bins(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS
) -> dict[str, np.ndarray]:
    """Top-label confidence in `n_bins` equal-width bins (k/n, (k+1)/n]: per bin the count,
    mean confidence and accuracy (NaN for an empty bin)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=int)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.searchsorted(edges[1:-1], confidence, side="left")
    count = np.bincount(index, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, confidence, minlength=n_bins) / count
        accuracy = np.bincount(index, correct, minlength=n_bins) / count
    return {"edges": edges, "count": count, "confidence": mean_conf, "accuracy": accuracy}


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """ECE: Σ_b (n_b / N)·|accuracy_b − confidence_b| over equal-width top-label bins.

    Written out here because scikit-learn has only the binary reliability curve; it is the
    definition of Guo et al. (2017), with 15 bins as they used.
    """
    bins = calibration_bins(probs, labels, n_bins)
    filled = bins["count"] > 0
    weights = bins["count"][filled] / bins["count"].sum()
    gaps = np.abs(bins["accuracy"][filled] - bins["confidence"][filled])
    return float((weights * gaps).sum())


CHANCE_MARGIN = 0.05  # a model must beat always answering the commonest class by this much


def near_chance(accuracy: float, counts: dict[str, int]) -> bool:
    """True when `accuracy` is within CHANCE_MARGIN of always answering the commonest class
    (given the split's per-class counts) or of a uniform guess."""
    total = sum(counts.values())
    majority = max(counts.values()) / total if total else 0.0
    return accuracy < max(majority, 1 / len(CLASSES)) + CHANCE_MARGIN
