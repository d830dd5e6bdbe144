"""The training curves figure of a train stage."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ferlab.figures import plt, save_figure


def training_curves(history: Sequence[dict[str, float]], path: str | Path) -> None:
    """Loss and accuracy per epoch, train and validation."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    epochs = [row["epoch"] for row in history]
    for key, style in (("train", "-o"), ("val", "-s")):
        ax_loss.plot(epochs, [row[f"{key}_loss"] for row in history], style, label=key, ms=3)
        ax_acc.plot(epochs, [row[f"{key}_accuracy"] for row in history], style, label=key, ms=3)
    ax_loss.set(title="loss", xlabel="epoch")
    ax_acc.set(title="accuracy (train: of the augmented, mixed batches)", xlabel="epoch")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, path)
