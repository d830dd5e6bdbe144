"""Perceptual hash, exact / near duplicate search, the leakage policy and the example figure."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from ferlab.classes import CLASSES
from ferlab.data import DataError
from ferlab.data.leakage import apply_policy, find_duplicates, near_pairs, plot_examples
from ferlab.data.manifest import build_manifest, phash

MAX_DISTANCE = 4  # params.yaml validate.leakage.phash_max_distance


def near_copy(face: np.ndarray, seed: int = 0) -> np.ndarray:
    """The same face slightly brightened and with a little sensor noise."""
    noise = np.random.default_rng(seed).normal(0, 2, face.shape)
    return np.clip(face.astype(float) + 10 + noise, 0, 255).round().astype(np.uint8)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def test_phash_keeps_near_copies_close_and_distinct_faces_apart(
    real_faces: tuple[np.ndarray, np.ndarray],
) -> None:
    faces, _ = real_faces
    hashes = [phash(f) for f in faces]
    assert all(0 <= h < 2**64 for h in hashes)
    pairs = enumerate(zip(faces, hashes, strict=True))
    copies = [hamming(h, phash(near_copy(f, i))) for i, (f, h) in pairs]
    assert max(copies) <= MAX_DISTANCE
    brightened = [hamming(h, phash(cv2.add(f, 20))) for f, h in zip(faces, hashes, strict=True)]
    assert max(brightened) <= MAX_DISTANCE
    distinct = [hamming(a, b) for a, b in itertools.combinations(hashes, 2)]
    assert min(distinct) > MAX_DISTANCE
    assert np.median(distinct) > 20  # unrelated faces differ in about half of the bits


def test_near_pairs_equals_a_brute_force_reference_across_blocks() -> None:
    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 2**63, 300, dtype=np.uint64) * np.uint64(2) + rng.integers(
        0, 2, 300, dtype=np.uint64
    )
    # Plant near copies on both sides of block boundaries (block = 16 below).
    for src, dst, flips in [(3, 15, 0), (15, 16, 1), (40, 290, 3), (100, 101, 4), (7, 8, 5)]:
        value = int(hashes[src])
        for bit in rng.choice(64, flips, replace=False):
            value ^= 1 << int(bit)
        hashes[dst] = np.uint64(value)
    i, j, d = near_pairs(hashes, MAX_DISTANCE, block=16)
    found = {(int(a), int(b), int(c)) for a, b, c in zip(i, j, d, strict=True)}
    values = [int(h) for h in hashes]
    expected = {
        (a, b, hamming(values[a], values[b]))
        for a, b in itertools.combinations(range(len(values)), 2)
        if hamming(values[a], values[b]) <= MAX_DISTANCE
    }
    assert found == expected
    assert {(3, 15), (15, 16), (40, 290), (100, 101)} <= {(a, b) for a, b, _ in found}


@pytest.fixture
def raw_with_duplicates(tmp_path: Path, real_faces: tuple[np.ndarray, np.ndarray]) -> Path:
    """data/raw with 96 real faces (train / test halves) and four injected duplicates."""
    faces, labels = real_faces
    raw = tmp_path / "data/raw"
    for k, (face, label) in enumerate(zip(faces, labels, strict=True)):
        split = "train" if k % 2 == 0 else "test"
        folder = raw / split / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"face{k:03d}.png"), face)
    test_face = raw / "test" / CLASSES[labels[1]] / "face001.png"
    train_face = raw / "train" / CLASSES[labels[0]] / "face000.png"
    # 1. exact copy of a test image in train (file copy: same sha256)
    shutil.copyfile(test_face, raw / "train" / CLASSES[labels[1]] / "copy_of_test.png")
    # 2. brightened + noisy copy of a test image in train
    near = near_copy(cv2.imread(str(test_face), 0))
    cv2.imwrite(str(raw / "train/neutral/near_test.png"), near)
    # 3. brightened + noisy copy of a train image, inside train
    cv2.imwrite(str(raw / "train/fear/near_train.png"), near_copy(cv2.imread(str(train_face), 0)))
    # 4. exact copy inside test, filed under another class
    shutil.copyfile(test_face, raw / "test/sadness/copy_in_test.png")
    return raw


def test_injected_exact_and_near_duplicates_are_all_found(raw_with_duplicates: Path) -> None:
    base = raw_with_duplicates.parents[1]
    frame = build_manifest(raw_with_duplicates, base)
    dups = find_duplicates(frame, MAX_DISTANCE)
    found = {
        (frame.at[r.i, "path"].rsplit("/", 1)[-1], frame.at[r.j, "path"].rsplit("/", 1)[-1]): (
            r.kind,
            r.scope,
        )
        for r in dups.pairs.itertuples()
    }
    by_files = {frozenset(k): v for k, v in found.items()}
    assert by_files[frozenset({"copy_of_test.png", "face001.png"})] == ("exact", "train_test")
    assert by_files[frozenset({"near_test.png", "face001.png"})] == ("near", "train_test")
    assert by_files[frozenset({"near_train.png", "face000.png"})] == ("near", "within_train")
    assert by_files[frozenset({"copy_in_test.png", "face001.png"})] == ("exact", "within_test")
    # Copies of copies are pairs too: the exact copies are near copies of near_test.png.
    assert by_files[frozenset({"copy_of_test.png", "near_test.png"})] == ("near", "within_train")
    assert len(dups.pairs) == 7  # 3 exact + 4 near: the real faces hold no duplicates
    counts = dups.counts(frame["split"])
    assert counts["exact"]["train_test"] == {
        "pairs": 2,
        "images": 3,
        "label_conflicts": 1,  # copy_in_test.png is filed under sadness
        "train_images": 1,
        "test_images": 2,
    }
    assert counts["near"]["train_test"]["train_images"] == 1
    assert all(p.startswith("data/raw/") for p in frame["path"])


def test_policy_marks_only_train_copies_of_test_images(raw_with_duplicates: Path) -> None:
    frame = build_manifest(raw_with_duplicates, raw_with_duplicates.parents[1])
    dups = find_duplicates(frame, MAX_DISTANCE)
    dropped = apply_policy(frame, dups, "drop")
    names = set(dropped.loc[dropped["drop"], "path"].str.rsplit("/", n=1).str[-1])
    assert names == {"copy_of_test.png", "near_test.png"}
    assert (dropped["test_duplicate"] == dropped["drop"]).all()
    reported = apply_policy(frame, dups, "report")
    assert reported["test_duplicate"].sum() == 2 and not reported["drop"].any()
    with pytest.raises(DataError, match="report, drop, fail"):
        apply_policy(frame, dups, "ignore")


def test_example_figure_and_placeholder(raw_with_duplicates: Path, tmp_path: Path) -> None:
    base = raw_with_duplicates.parents[1]
    frame = build_manifest(raw_with_duplicates, base)
    dups = find_duplicates(frame, MAX_DISTANCE)
    plot_examples(frame, dups, tmp_path / "fig/pairs.png", base)
    grid = cv2.imread(str(tmp_path / "fig/pairs.png"))
    clean = frame[~frame["path"].str.contains("copy|near_")].reset_index(drop=True)
    none = find_duplicates(clean, MAX_DISTANCE)
    assert none.pairs.empty
    plot_examples(clean, none, tmp_path / "fig/none.png", base)
    placeholder = cv2.imread(str(tmp_path / "fig/none.png"))
    assert grid is not None and placeholder is not None
    assert grid.shape[0] > placeholder.shape[0]  # two rows of pairs vs one line of text
