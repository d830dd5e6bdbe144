"""FER+ crowd votes as soft label distributions over the canonical classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ferlab.classes import CLASS_TO_INDEX, FERPLUS_ORDER, NUM_CLASSES


def vote_distributions(votes_csv: str | Path, paths: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """N×8 float32 distributions for images given by path, matched on the file name.

    As in the FER+ reference's label-distribution training: an emotion with a single vote
    (one tagger's outlier) is dropped, and votes for "unknown" and "not a face" are left out,
    before normalising. An image missing from the CSV (or left with no expression votes)
    keeps its one-hot label, so training never silently loses samples.
    """
    votes_csv = Path(votes_csv)
    if not votes_csv.is_file():
        raise FileNotFoundError(
            f"{votes_csv}: FER+ vote file not found; set data.votes, or train.targets=labels "
            "to train on the plurality labels"
        )
    table = pd.read_csv(votes_csv)
    missing = [c for c in ("image", *FERPLUS_ORDER) if c not in table.columns]
    if missing:
        raise ValueError(f"{votes_csv}: missing columns {missing}; expected the FER+ vote layout")
    table = table.drop_duplicates("image").set_index("image")
    counts = np.zeros((len(table), NUM_CLASSES), dtype=np.float32)
    for name in FERPLUS_ORDER:
        counts[:, CLASS_TO_INDEX[name]] = table[name].to_numpy(dtype=np.float32)
    counts[counts <= 1] = 0.0  # single votes are outliers
    row_of = {name: i for i, name in enumerate(table.index)}

    out = np.eye(NUM_CLASSES, dtype=np.float32)[np.asarray(labels, dtype=int)]
    for i, path in enumerate(paths):
        row = row_of.get(Path(str(path)).name)
        if row is not None and counts[row].sum() > 0:
            out[i] = counts[row] / counts[row].sum()
    return out
