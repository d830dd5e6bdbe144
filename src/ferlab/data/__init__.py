"""The data layer: download → validate (+ leakage) → split.

Every function here raises `DataError` for bad input: one message that names the file and the
fix, which the stage scripts print without a traceback.
"""

from __future__ import annotations

RAW_SPLITS: tuple[str, ...] = ("train", "test")  # the splits an archive ships with
SPLITS: tuple[str, ...] = ("train", "val", "test")  # the splits after the split stage
# The image files ferlab reads (archives, data folders, `ferlab predict`): what OpenCV decodes.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class DataError(RuntimeError):
    """Bad or missing input data; the message says what is wrong and how to fix it."""
