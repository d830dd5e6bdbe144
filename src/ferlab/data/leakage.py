"""Exact (sha256) and near (pHash) duplicates within and across splits, and what to do with them.

Exact duplicates are files with the same sha256. Near duplicates are pairs of *different* files
whose 64-bit perceptual hashes differ in at most `max_distance` bits. The near search compares
every pair, block by block with a vectorised XOR + popcount (about 6·10⁸ pairs for FER2013+,
a few seconds), so it is exact, not an approximation.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ferlab.data import DataError
from ferlab.io import atomic_path, read_gray

log = logging.getLogger(__name__)

POLICIES = ("report", "drop", "fail")
SCOPES = ("within_train", "within_test", "train_test")
KINDS = ("exact", "near")
SCOPE_LABELS = {
    "within_train": "train–train",
    "within_test": "test–test",
    "train_test": "train↔test",
}


@dataclass
class Duplicates:
    """All duplicate pairs of a frame: row positions i < j, kind, Hamming distance and scope."""

    pairs: pd.DataFrame  # columns: i, j, kind, distance, scope, same_label

    def counts(self, splits: pd.Series) -> dict:
        """Pairs and distinct images per kind and scope (the numbers in reports/leakage.json)."""
        out: dict = {}
        for kind in KINDS:
            out[kind] = {}
            for scope in SCOPES:
                sel = self.pairs[(self.pairs.kind == kind) & (self.pairs.scope == scope)]
                rows = np.concatenate([sel.i.to_numpy(), sel.j.to_numpy()])
                entry = {
                    "pairs": len(sel),
                    "images": len(np.unique(rows)),
                    # Copies of one face filed under two classes: label noise worth knowing.
                    "label_conflicts": int((~sel.same_label).sum()),
                }
                if scope == "train_test":
                    in_split = splits.to_numpy()[rows]
                    entry["train_images"] = len(np.unique(rows[in_split == "train"]))
                    entry["test_images"] = len(np.unique(rows[in_split == "test"]))
                out[kind][scope] = entry
        return out

    def train_rows_duplicating_test(self, n_rows: int, splits: pd.Series) -> np.ndarray:
        """Boolean per row: a train image that is an exact or near copy of a test image."""
        flags = np.zeros(n_rows, dtype=bool)
        cross = self.pairs[self.pairs.scope == "train_test"]
        values = splits.to_numpy()
        for col in ("i", "j"):
            rows = cross[col].to_numpy()
            flags[rows[values[rows] == "train"]] = True
        return flags


def hashes_to_uint64(hexes: pd.Series) -> np.ndarray:
    return np.array([int(h, 16) for h in hexes], dtype=np.uint64)


def near_pairs(
    hashes: np.ndarray, max_distance: int, block: int = 256
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (i, j, distance) with i < j and popcount(h_i XOR h_j) ≤ max_distance.

    Each block of `block` hashes is compared against every later hash in one vectorised step
    (memory ≈ block × N bytes), which keeps the 35k-image search to a few seconds.
    """
    n = len(hashes)
    found_i, found_j, found_d = [], [], []
    last = time.monotonic()
    for start in range(0, n, block):
        stop = min(start + block, n)
        dist = np.bitwise_count(hashes[start:stop, None] ^ hashes[None, start:])
        rows, cols = np.nonzero(dist <= max_distance)
        cols_abs = cols + start
        keep = cols_abs > rows + start
        found_i.append(rows[keep] + start)
        found_j.append(cols_abs[keep])
        found_d.append(dist[rows[keep], cols[keep]])
        if time.monotonic() - last > 5:
            log.info("near-duplicate search: %d / %d images", stop, n)
            last = time.monotonic()
    if not found_i:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    return (
        np.concatenate(found_i).astype(np.int64),
        np.concatenate(found_j).astype(np.int64),
        np.concatenate(found_d).astype(np.int64),
    )


def _scope(split_a: np.ndarray, split_b: np.ndarray) -> np.ndarray:
    same = split_a == split_b
    return np.where(same, np.where(split_a == "train", "within_train", "within_test"), "train_test")


def find_duplicates(frame: pd.DataFrame, max_distance: int) -> Duplicates:
    """Exact and near duplicate pairs among the decodable train/test rows of a manifest frame."""
    frame = frame.reset_index(drop=True)
    usable = frame["split"].isin(["train", "test"]) & frame["phash"].notna()
    index = np.flatnonzero(usable.to_numpy())
    splits = frame["split"].to_numpy().astype(str)
    sha = frame["sha256"].to_numpy().astype(str)

    # Exact: every pair inside each group of identical files.
    exact_i, exact_j = [], []
    groups = frame.loc[usable].groupby("sha256").indices
    for members in groups.values():
        if len(members) > 1:
            rows = index[np.sort(members)]
            a, b = np.triu_indices(len(rows), k=1)
            exact_i.append(rows[a])
            exact_j.append(rows[b])
    ei = np.concatenate(exact_i) if exact_i else np.zeros(0, np.int64)
    ej = np.concatenate(exact_j) if exact_j else np.zeros(0, np.int64)

    # Near: close hashes, different files.
    hashes = hashes_to_uint64(frame.loc[usable, "phash"])
    ni, nj, nd = near_pairs(hashes, max_distance)
    ni, nj = index[ni], index[nj]
    different = sha[ni] != sha[nj]
    ni, nj, nd = ni[different], nj[different], nd[different]

    pairs = pd.DataFrame(
        {
            "i": np.concatenate([ei, ni]).astype(np.int64),
            "j": np.concatenate([ej, nj]).astype(np.int64),
            "kind": ["exact"] * len(ei) + ["near"] * len(ni),
            "distance": np.concatenate([np.zeros(len(ei), np.int64), nd]).astype(np.int64),
        }
    )
    pairs["scope"] = _scope(splits[pairs.i.to_numpy()], splits[pairs.j.to_numpy()])
    labels = frame["label"].to_numpy().astype(str)
    pairs["same_label"] = labels[pairs.i.to_numpy()] == labels[pairs.j.to_numpy()]
    return Duplicates(pairs)


def apply_policy(frame: pd.DataFrame, duplicates: Duplicates, policy: str) -> pd.DataFrame:
    """Add `test_duplicate` (train row copying a test image) and `drop` (set only by `drop`)."""
    if policy not in POLICIES:
        raise DataError(
            f"validate.leakage.policy = {policy!r}: expected one of {', '.join(POLICIES)}"
        )
    frame = frame.reset_index(drop=True).copy()
    flags = duplicates.train_rows_duplicating_test(len(frame), frame["split"])
    frame["test_duplicate"] = flags
    frame["drop"] = flags if policy == "drop" else np.zeros(len(frame), dtype=bool)
    return frame


def leakage_report(
    frame: pd.DataFrame, duplicates: Duplicates, max_distance: int, policy: str, examples: int = 20
) -> dict:
    """The content of reports/leakage.json."""
    pairs = _example_pairs(duplicates.pairs, examples)
    return {
        "phash_max_distance": int(max_distance),
        "policy": policy,
        "images": len(frame),
        **duplicates.counts(frame["split"].reset_index(drop=True)),
        "train_images_duplicating_test": int(frame["test_duplicate"].sum()),
        "dropped_train_images": int(frame["drop"].sum()),
        "examples": [
            {
                "kind": row.kind,
                "scope": row.scope,
                "distance": int(row.distance),
                "a": frame.at[row.i, "path"],
                "a_label": frame.at[row.i, "label"],
                "b": frame.at[row.j, "path"],
                "b_label": frame.at[row.j, "label"],
            }
            for row in pairs.itertuples()
        ],
    }


def _example_pairs(pairs: pd.DataFrame, limit: int) -> pd.DataFrame:
    """Up to `limit` pairs taken in turn from each scope and kind, cross-split first.

    Within a group the largest distances come first (they show what the threshold lets
    through); ties are broken by a fixed shuffle so the examples span the classes.
    """
    shuffled = pairs.sample(frac=1.0, random_state=0)
    groups = [
        shuffled[(shuffled.scope == scope) & (shuffled.kind == kind)].sort_values(
            "distance", ascending=False, kind="stable"
        )
        for scope in ("train_test", "within_train", "within_test")
        for kind in KINDS
    ]
    order = [(rank, g) for g, sel in enumerate(groups) for rank in range(min(len(sel), limit))]
    picked = [groups[g].iloc[rank] for rank, g in sorted(order)[:limit]]
    if not picked:
        return pairs.head(0)
    return pd.DataFrame(picked, columns=pairs.columns).astype({"i": int, "j": int, "distance": int})


def plot_examples(
    frame: pd.DataFrame,
    duplicates: Duplicates,
    path: str | Path,
    base: str | Path = ".",
    max_pairs: int = 12,
) -> None:
    """An image grid of example duplicate pairs (or a placeholder when there are none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = _example_pairs(duplicates.pairs, max_pairs)
    base = Path(base)
    if pairs.empty:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.text(
            0.5,
            0.5,
            "No duplicate pairs found\n(exact sha256, or pHash near-duplicates)",
            ha="center",
            va="center",
            fontsize=12,
        )
        ax.axis("off")
    else:
        cols = min(4, len(pairs))
        rows = -(-len(pairs) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.3 * rows), squeeze=False)
        for ax in axes.ravel():
            ax.axis("off")
        for ax, row in zip(axes.ravel(), pairs.itertuples(), strict=False):
            a = _thumb(base / frame.at[row.i, "path"])
            b = _thumb(base / frame.at[row.j, "path"])
            gap = np.full((a.shape[0], 4), 255, np.uint8)
            ax.imshow(np.hstack([a, gap, b]), cmap="gray", vmin=0, vmax=255)
            ax.set_title(
                f"{SCOPE_LABELS[row.scope]} {row.kind} (d={row.distance})\n"
                f"{frame.at[row.i, 'label']} | {frame.at[row.j, 'label']}",
                fontsize=8,
            )
        fig.suptitle("Duplicate pairs (left | right), labels as in the archive", fontsize=10)
        fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _thumb(path: Path, size: int = 48) -> np.ndarray:
    import cv2

    image = read_gray(path)
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
