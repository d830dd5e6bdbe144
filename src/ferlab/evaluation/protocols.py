"""Which test faces a figure is computed on, and with which labels.

- `test`: the 7,100 FER2013+ test images with the archive's plurality labels (FER+ PublicTest
  plus PrivateTest). It includes test images that also appear, exactly or nearly, in train.
- `reference_private` / `reference_public`: the Microsoft FERPlus "majority" protocol on the
  FER+ PrivateTest (3,137 images) or PublicTest: per image, vote counts of 1 are dropped, and
  the image is kept only when its top emotion holds more than half of the remaining votes and
  is not "unknown" or "not a face"; its label is that emotion.
- `clean_test`: the test images with no exact (sha256) or near (pHash) copy in train, the
  duplicates being those the validate stage counted in reports/leakage.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ferlab.classes import CLASS_TO_INDEX, FERPLUS_ORDER
from ferlab.data import DataError

VOTE_COLUMNS: tuple[str, ...] = (*FERPLUS_ORDER, "unknown", "NF")
REFERENCE_SPLITS: dict[str, str] = {
    "reference_private": "PrivateTest",
    "reference_public": "PublicTest",
}
PROTOCOLS: tuple[str, ...] = ("test", "reference_private", "reference_public", "clean_test")
DESCRIPTIONS: dict[str, str] = {
    "test": "all FER2013+ test images, plurality labels (includes images duplicated in train)",
    "reference_private": "FER+ PrivateTest, FERPlus majority protocol",
    "reference_public": "FER+ PublicTest, FERPlus majority protocol",
    "clean_test": "test images with no exact or near copy in train",
}


def read_votes(path: str | Path) -> pd.DataFrame:
    """The FER+ vote table (ferplus_split, image, ten vote columns), checked."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: FER+ vote file not found; set data.votes in params.yaml to "
            "ferplus_votes.csv (the reference protocol needs it)"
        )
    table = pd.read_csv(path)
    missing = [c for c in ("ferplus_split", "image", *VOTE_COLUMNS) if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing columns {missing}; expected the FER+ vote layout")
    if table["image"].duplicated().any():
        raise DataError(f"{path}: some image names appear twice; use the FER+ vote file as is")
    return table


def majority_labels(votes: pd.DataFrame) -> np.ndarray:
    """Canonical class index per row under the FERPlus majority rule, -1 where dropped."""
    counts = votes.loc[:, list(VOTE_COLUMNS)].to_numpy(dtype=np.float64, copy=True)
    counts[counts <= 1] = 0.0  # single votes are outliers
    top = counts.argmax(axis=1)
    kept = (counts.max(axis=1) > 0.5 * counts.sum(axis=1)) & (top < len(FERPLUS_ORDER))
    canonical = np.array([CLASS_TO_INDEX[name] for name in FERPLUS_ORDER] + [-1, -1])
    return np.where(kept, canonical[top], -1)


def file_names(paths: np.ndarray) -> np.ndarray:
    """The file name of each path (the key FER+ votes and the archive share)."""
    names = np.array([Path(str(p)).name for p in paths])
    if len(np.unique(names)) != len(names):
        raise DataError("image file names repeat within one split; cannot join on them")
    return names


def reference_subset(
    votes: pd.DataFrame, ferplus_split: str, paths: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """(row positions in `paths`, majority labels, images kept but absent from `paths`)."""
    if ferplus_split not in set(votes["ferplus_split"]):
        raise DataError(f"the FER+ vote table has no {ferplus_split} rows")
    labels = majority_labels(votes)
    chosen = (votes["ferplus_split"].to_numpy() == ferplus_split) & (labels >= 0)
    position = {name: i for i, name in enumerate(file_names(paths))}
    names = votes["image"].to_numpy()[chosen]
    rows = np.array([position.get(name, -1) for name in names], dtype=np.int64)
    found = rows >= 0
    order = np.argsort(rows[found], kind="stable")
    return rows[found][order], labels[chosen][found][order], int((~found).sum())


def test_duplicates(manifest: pd.DataFrame, max_distance: int) -> dict[str, set[str]]:
    """File names of the test images with an exact / near copy in train, by kind.

    The same search as the validate stage's (`ferlab.data.leakage.find_duplicates`) on the
    manifest it wrote, so the sets are the ones reports/leakage.json counts.
    """
    from ferlab.data.leakage import find_duplicates

    frame = manifest.reset_index(drop=True).copy()
    frame["phash"] = frame["phash"].replace("", np.nan)
    pairs = find_duplicates(frame, max_distance).pairs
    cross = pairs[pairs.scope == "train_test"]
    splits = frame["split"].to_numpy()
    names = np.array([Path(p).name for p in frame["path"]])
    out: dict[str, set[str]] = {}
    for kind in ("exact", "near"):
        sel = cross[cross.kind == kind]
        rows = np.concatenate([sel.i.to_numpy(), sel.j.to_numpy()])
        out[kind] = set(names[rows[splits[rows] == "test"]])
    return out


def clean_test_mask(
    paths: np.ndarray, manifest_csv: str | Path, leakage_json: str | Path
) -> np.ndarray:
    """True for each test path with no exact or near copy in train.

    Checked against reports/leakage.json: the numbers of test images with an exact and with a
    near copy must be the report's, or the manifest and the report are from different runs.
    """
    from ferlab.data.manifest import read_manifest
    from ferlab.io import read_json

    leakage_json = Path(leakage_json)
    if not leakage_json.is_file():
        raise DataError(f"{leakage_json}: not found; run the validate stage (dvc repro validate)")
    report = read_json(leakage_json)
    try:
        max_distance = int(report["phash_max_distance"])
        expected = {k: int(report[k]["train_test"]["test_images"]) for k in ("exact", "near")}
    except (KeyError, TypeError, ValueError):
        raise DataError(
            f"{leakage_json}: lacks phash_max_distance or <kind>.train_test.test_images; "
            "rerun the validate stage (dvc repro validate)"
        ) from None
    duplicates = test_duplicates(read_manifest(manifest_csv), max_distance)
    found = {k: len(v) for k, v in duplicates.items()}
    if found != expected:
        raise DataError(
            f"{manifest_csv} gives {found} test images with train copies, {leakage_json} "
            f"says {expected}; they come from different runs: rerun dvc repro validate"
        )
    leaked = duplicates["exact"] | duplicates["near"]
    return np.array([name not in leaked for name in file_names(paths)])
