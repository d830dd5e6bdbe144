"""Figures for evaluation reports: confusion matrices, reliability diagrams (no display)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ferlab.classes import CLASSES
from ferlab.figures import plt, save_figure


def confusion_figure(
    matrix: np.ndarray, path: str | Path, title: str, classes: Sequence[str] = CLASSES
) -> None:
    """Row-normalised confusion matrix with counts, rows = actual, columns = predicted."""
    matrix = np.asarray(matrix)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape, float), where=rows > 0)
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            color = "white" if share[i, j] > 0.5 else "black"
            text = f"{share[i, j]:.2f}\n{matrix[i, j]}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="actual", title=title)
    save_figure(fig, path)


def note_figure(text: str, path: str | Path) -> None:
    """A small figure holding only a sentence, for plots that do not apply to this run."""
    fig, ax = plt.subplots(figsize=(6, 1.2))
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=11)
    ax.set_axis_off()
    save_figure(fig, path)


def reliability_figure(
    curves: dict[str, dict[str, np.ndarray]], path: str | Path, title: str
) -> None:
    """Reliability diagram: accuracy against mean confidence per bin (one line per curve, from
    `ferlab.evaluation.metrics.calibration_bins`), the diagonal, and the faces per bin."""
    fig, (ax, ax_count) = plt.subplots(
        2, 1, figsize=(5.5, 6.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.plot([0, 1], [0, 1], ":", color="gray", label="perfect calibration")
    edges = next(iter(curves.values()))["edges"]
    centers = (edges[:-1] + edges[1:]) / 2
    width = (edges[1] - edges[0]) / (len(curves) + 1)
    for k, (label, bins) in enumerate(curves.items()):
        filled = bins["count"] > 0
        ax.plot(bins["confidence"][filled], bins["accuracy"][filled], "-o", ms=3, label=label)
        offset = (k - (len(curves) - 1) / 2) * width
        ax_count.bar(centers + offset, bins["count"], width=width, label=label)
    ax.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax_count.set(xlabel="confidence (top class probability)", ylabel="faces")
    ax_count.grid(alpha=0.3)
    save_figure(fig, path)
