"""Train / val / test assignment from the manifest (never from the folders).

Without subject ids the archive's test split stays the test split and a stratified
`val_fraction` of each train class becomes validation. With subject ids every person goes,
with all their images, to exactly one split (`by_subject_fractions`). Every random choice is
seeded, and each class (or the subject list) gets its own generator, so a change in one class
does not reshuffle the others.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ferlab.classes import CLASS_TO_INDEX, CLASSES
from ferlab.data import SPLITS, DataError
from ferlab.data.manifest import read_manifest
from ferlab.io import atomic_path

log = logging.getLogger(__name__)

SPLIT_COLUMNS: tuple[str, ...] = (
    "path",
    "split",
    "source_split",
    "label",
    "label_idx",
    "sha256",
    "phash",
    "width",
    "height",
    "mode",
    "subject_id",
)


def stratified_val(frame: pd.DataFrame, val_fraction: float, seed: int) -> pd.Series:
    """Archive split with a seeded `val_fraction` of each train class moved to val."""
    if not 0 <= val_fraction < 1:
        raise DataError(f"split.val_fraction = {val_fraction}: expected 0 ≤ fraction < 1")
    split = frame["source_split"].copy()
    train = frame[frame["source_split"] == "train"]
    for label_idx, rows in train.groupby("label_idx", sort=True):
        rng = np.random.default_rng([seed, int(label_idx) + 1])
        n_val = round(len(rows) * val_fraction)
        chosen = rows.index.to_numpy()[rng.permutation(len(rows))[:n_val]]
        split.loc[chosen] = "val"
    return split


def subject_split(frame: pd.DataFrame, fractions: dict[str, float], seed: int) -> pd.Series:
    """Each subject, with all their images, in one split; image shares follow `fractions`.

    Subjects are shuffled (seeded) and laid end to end by image count; a subject goes to the
    split its midpoint falls in. Rows without a subject id count as a person of their own.
    """
    if set(fractions) != set(SPLITS) or abs(sum(fractions.values()) - 1) > 1e-6:
        raise DataError(
            f"split.by_subject_fractions = {fractions}: expected train, val and test summing to 1"
        )
    subjects = frame["subject_id"].where(frame["subject_id"] != "", "row:" + frame["path"])
    sizes = subjects.value_counts().sort_index()
    order = np.random.default_rng(seed).permutation(len(sizes))
    shuffled = sizes.iloc[order]
    end = shuffled.cumsum().to_numpy()
    midpoint = (end - shuffled.to_numpy() / 2) / len(frame)
    bounds = np.cumsum([fractions[s] for s in SPLITS])
    which = np.minimum(np.searchsorted(bounds, midpoint, side="right"), len(SPLITS) - 1)
    assignment = dict(zip(shuffled.index, np.array(SPLITS)[which], strict=True))
    return subjects.map(assignment)


def cap_per_class(frame: pd.DataFrame, max_per_class: int, seed: int) -> pd.DataFrame:
    """At most `max_per_class` rows per split and class, a seeded random choice."""
    if max_per_class <= 0:
        return frame
    key = pd.Series(np.random.default_rng([seed, 0]).random(len(frame)), index=frame.index)
    rank = key.groupby([frame["split"], frame["label"]]).rank(method="first")
    return frame[rank <= max_per_class]


def make_splits(
    manifest: pd.DataFrame,
    seed: int,
    val_fraction: float,
    max_per_class: int = 0,
    by_subject_fractions: dict[str, float] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The split table (SPLIT_COLUMNS) and a summary of how it was made."""
    frame = manifest.sort_values("path").reset_index(drop=True)
    dropped = int(frame["drop"].sum())
    frame = frame[~frame["drop"]].reset_index(drop=True)
    frame["source_split"] = frame["split"]
    by_subject = bool((frame["subject_id"] != "").any())
    if by_subject:
        fractions = by_subject_fractions or {"train": 0.7, "val": 0.2, "test": 0.1}
        frame["split"] = subject_split(frame, fractions, seed)
    else:
        frame["split"] = stratified_val(frame, val_fraction, seed)
    frame = cap_per_class(frame, int(max_per_class), seed)
    order = frame["split"].map({name: i for i, name in enumerate(SPLITS)})
    frame = frame.assign(_order=order).sort_values(["_order", "path"])
    info = {
        "mode": "by_subject" if by_subject else "stratified",
        "seed": int(seed),
        "val_fraction": float(val_fraction),
        "max_per_class": int(max_per_class),
        "dropped_duplicates": dropped,
    }
    if by_subject:
        info["subjects"] = {
            s: int(frame.loc[frame["split"] == s, "subject_id"].replace("", np.nan).nunique())
            for s in SPLITS
        }
    return frame.loc[:, list(SPLIT_COLUMNS)].reset_index(drop=True), info


def split_counts(frame: pd.DataFrame, info: dict[str, Any]) -> dict[str, Any]:
    """reports/split_counts.json: totals and counts per split and class."""
    counts = {
        split: {
            label: int(((frame["split"] == split) & (frame["label"] == label)).sum())
            for label in CLASSES
        }
        for split in SPLITS
    }
    totals = {split: sum(c.values()) for split, c in counts.items()}
    return {**info, "images": len(frame), "totals": totals, "counts": counts}


def run_split(
    sparams: dict[str, Any],
    seed: int,
    manifest_path: str | Path = "data/manifest.csv",
    out_path: str | Path = "data/split.csv",
) -> dict[str, Any]:
    """Read the manifest, assign splits, write data/split.csv; returns the counts report."""
    manifest = read_manifest(manifest_path)
    frame, info = make_splits(
        manifest,
        seed=int(seed),
        val_fraction=float(sparams["val_fraction"]),
        max_per_class=int(sparams.get("max_per_class", 0) or 0),
        by_subject_fractions=sparams.get("by_subject_fractions"),
    )
    for split in SPLITS:
        if not (frame["split"] == split).any():
            raise DataError(
                f"{manifest_path}: the {split} split would be empty; check split.val_fraction "
                "and split.by_subject_fractions in params.yaml"
            )
    with atomic_path(out_path) as tmp:
        frame.to_csv(tmp, index=False)
    report = split_counts(frame, info)
    log.info("splits written to %s: %s", out_path, report["totals"])
    return report


def read_split(
    path: str | Path = "data/split.csv", required: tuple[str, ...] = SPLIT_COLUMNS
) -> pd.DataFrame:
    """data/split.csv with its real types, checked: the `required` columns, rows, known splits
    and labels, and `label_idx` matching `label`. The one reader of the split table."""
    table = read_manifest(path, required=required, stage="split")
    again = "run the split stage again (dvc repro split)"
    if table.empty:
        raise DataError(f"{path}: no rows; {again}")
    bad_split = sorted(set(table["split"]) - set(SPLITS))
    if bad_split:
        raise DataError(f"{path}: unknown split values {bad_split}; expected {list(SPLITS)}")
    bad_label = sorted(set(table["label"]) - set(CLASSES))
    if bad_label:
        raise DataError(f"{path}: unknown labels {bad_label}; expected {list(CLASSES)}")
    mismatch = table["label"].map(CLASS_TO_INDEX) != table["label_idx"]
    if mismatch.any():
        row = table[mismatch].iloc[0]
        raise DataError(
            f"{path}: label_idx disagrees with label for {int(mismatch.sum())} rows "
            f"(first: {row['path']} {row['label']}={row['label_idx']}); {again}"
        )
    return table
