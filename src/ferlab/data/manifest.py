"""The manifest: one row per image, the one description of the data every later stage reads."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from ferlab.classes import CLASS_TO_INDEX
from ferlab.data import DataError
from ferlab.io import atomic_path, read_gray

MANIFEST_COLUMNS: tuple[str, ...] = (
    "path",
    "split",
    "label",
    "label_idx",
    "sha256",
    "phash",
    "width",
    "height",
    "mode",
    "subject_id",
    "drop",
)
_DTYPES = {
    "path": str,
    "split": str,
    "label": str,
    "label_idx": "int64",
    "sha256": str,
    "phash": str,
    "width": "int64",
    "height": "int64",
    "mode": str,
    "subject_id": str,
}


def phash(gray: np.ndarray) -> int:
    """64-bit DCT perceptual hash: the 8×8 lowest frequencies of a 32×32 copy vs their median.

    A uniform brightness change moves only the DC term and small noise barely moves the low
    frequencies, so near-copies land within a few bits of each other.
    """
    small = cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8]
    bits = (low > np.median(low)).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def phash_hex(value: int) -> str:
    return f"{value:016x}"


def _mode(image: np.ndarray) -> str:
    """PIL-style mode name of a decoded image (what the file really holds)."""
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels == 1:
        return "L" if image.dtype == np.uint8 else f"I;{8 * image.dtype.itemsize}"
    return {3: "RGB", 4: "RGBA"}.get(channels, f"{channels}ch")


def describe_image(path: Path) -> dict:
    """sha256, pHash, size and mode of one file; `error` says why it could not be decoded."""
    data = path.read_bytes()
    row: dict = {"sha256": hashlib.sha256(data).hexdigest()}
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if image is None:
        row["error"] = f"{path}: not a readable image (corrupt or unsupported)"
        return row
    row.update(height=int(image.shape[0]), width=int(image.shape[1]), mode=_mode(image))
    # The common case (8-bit grayscale) is already what read_gray returns; anything else goes
    # through the one loader so the hash sees exactly the pixels training will see.
    gray = image if row["mode"] == "L" else read_gray(path)
    row["phash"] = phash_hex(phash(gray))
    return row


def list_images(raw: Path) -> list[Path]:
    """Files at raw/<split>/<class>/<file> (hidden files skipped), sorted."""
    return sorted(
        p
        for p in raw.glob("*/*/*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(raw).parts)
    )


def _relative(path: Path, base: Path) -> str:
    """POSIX path relative to `base` (the repo root); absolute when the data lives elsewhere."""
    full = path.resolve()
    return full.relative_to(base).as_posix() if full.is_relative_to(base) else full.as_posix()


def build_manifest(raw: str | Path = "data/raw", base: str | Path = ".") -> pd.DataFrame:
    """Scan and decode every image under `raw`; paths in the result are relative to `base`.

    Besides the manifest columns the frame has `error` (None when the image decoded), which
    validation checks and the written manifest leaves out.
    """
    raw, base = Path(raw), Path(base).resolve()
    if not raw.is_dir():
        raise DataError(f"{raw}: no such folder; run the download stage first (dvc repro download)")
    rows = []
    for path in tqdm(list_images(raw), desc="manifest", unit="img", mininterval=2.0):
        split, label = path.relative_to(raw).parts[:2]
        row = {
            "path": _relative(path, base),
            "split": split,
            "label": label,
            "label_idx": CLASS_TO_INDEX.get(label, -1),
            "sha256": None,
            "phash": None,
            "width": None,
            "height": None,
            "mode": None,
            "subject_id": "",
            "drop": False,
            "error": None,
        }
        row.update(describe_image(path))
        rows.append(row)
    frame = pd.DataFrame(rows, columns=[*MANIFEST_COLUMNS, "error"])
    frame["width"] = frame["width"].astype("Int64")
    frame["height"] = frame["height"].astype("Int64")
    frame["drop"] = frame["drop"].astype(bool)
    return frame


def write_manifest(frame: pd.DataFrame, path: str | Path = "data/manifest.csv") -> None:
    """Write the manifest columns only, atomically."""
    with atomic_path(path) as tmp:
        frame.loc[:, list(MANIFEST_COLUMNS)].to_csv(tmp, index=False)


def read_manifest(
    path: str | Path = "data/manifest.csv",
    required: tuple[str, ...] = MANIFEST_COLUMNS,
    stage: str = "validate",
) -> pd.DataFrame:
    """Read a manifest (or a table derived from it, like data/split.csv) with its real types.

    Empty subject ids stay empty strings; a missing file or column is one clear DataError
    that names the stage which writes it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found; run the {stage} stage first (dvc repro {stage})")
    dtypes = {**_DTYPES, "source_split": str}
    frame = pd.read_csv(path, dtype=dtypes, keep_default_na=False)
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing columns {', '.join(missing)}; run the {stage} stage again "
            f"(dvc repro {stage})"
        )
    if "drop" in frame.columns:
        frame["drop"] = frame["drop"].astype(str).str.lower().eq("true")
    return frame
