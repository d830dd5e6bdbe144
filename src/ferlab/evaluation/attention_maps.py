"""Where the model looks: heat maps after the MFN backbone and after the DDAN heads.

For each face the figure has three panels: the face, the feature-map energy after MFN (mean
squared activation over channels), and the DDAN attention (the element-wise maximum over
heads, averaged over channels), both upsampled to the face and overlaid on it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ferlab.inference import to_tensor
from ferlab.io import atomic_path

PANEL_INCHES = 2.0
DPI = 100
COLUMNS = ("face", "after MFN", "after DDAN")


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map of N×h×w to [0, 1] (a flat map becomes 0).

    The flatness test is relative: an untrained net's energies can be ~1e-13 and still have
    structure, while a map that varies by less than 1e-5 of its size is rounding noise.
    """
    flat = maps.flatten(1).double()
    low = flat.min(dim=1, keepdim=True).values
    high = flat.max(dim=1, keepdim=True).values
    span = high - low
    varied = span > 1e-5 * torch.maximum(high.abs(), low.abs())
    scaled = torch.where(varied, (flat - low) / torch.where(varied, span, 1.0), 0.0)
    return scaled.float().view_as(maps)


@torch.inference_mode()
def attention_heatmaps(model: torch.nn.Module, faces: np.ndarray) -> dict[str, np.ndarray]:
    """Heat maps in [0, 1] at the model's input size: {"mfn": N×S×S, "ddan": N×S×S}."""
    if not hasattr(model, "feature_maps"):
        raise ValueError(
            f"{type(model).__name__} has no attention heads; the attention figure needs a "
            "ddamfn model"
        )
    if faces.ndim != 3 or faces.dtype != np.uint8 or len(faces) == 0:
        raise ValueError(
            f"faces must be a non-empty N×S×S uint8 array, got {faces.shape} {faces.dtype}"
        )
    size = model.backbone.input_size
    was_training = model.training
    model.eval()
    try:
        features, heads = model.feature_maps(to_tensor(faces, size))
    finally:
        model.train(was_training)
    energy = features.float().pow(2).mean(dim=1)
    attention = heads.float().amax(dim=1).mean(dim=1)
    out = {}
    for key, maps in (("mfn", energy), ("ddan", attention)):
        up = F.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=False)
        out[key] = _normalise(up[:, 0]).numpy()
    return out


def attention_figure(
    model: torch.nn.Module, faces: np.ndarray, path: str | Path, max_faces: int = 6
) -> dict[str, np.ndarray]:
    """Save a PNG with one row per face (at most `max_faces`) and the columns face /
    after MFN / after DDAN; returns the heat maps drawn."""
    faces = faces[:max_faces]
    maps = attention_heatmaps(model, faces)
    size = maps["mfn"].shape[-1]
    shown = to_tensor(faces, size).numpy()[:, 0]  # the face as the model sees it
    rows = len(faces)
    fig = Figure(figsize=(PANEL_INCHES * len(COLUMNS), PANEL_INCHES * rows), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, len(COLUMNS), squeeze=False)
    for r in range(rows):
        for c, title in enumerate(COLUMNS):
            ax = axes[r, c]
            ax.imshow(shown[r], cmap="gray")
            if c:
                ax.imshow(
                    maps["mfn" if c == 1 else "ddan"][r], cmap="jet", alpha=0.5, vmin=0, vmax=1
                )
            ax.set_axis_off()
            if r == 0:
                ax.set_title(title, fontsize=10)
    fig.subplots_adjust(
        left=0.01, right=0.99, bottom=0.01, top=1 - 0.25 / rows, wspace=0.04, hspace=0.04
    )
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return maps
