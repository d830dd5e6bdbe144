"""The age-labelled face set (UTKFace): file-name ages, FER-like crops; zips are extracted by
`ferlab.data.archive.safe_extract`, the one safe extraction."""

from __future__ import annotations

import re
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from ferlab.data import DataError
from ferlab.data.archive import safe_extract
from ferlab.io import read_gray

# Class order of the age model: index 0 = kid, 1 = adult.
AGE_CLASSES: tuple[str, ...] = ("kid", "adult")

# AGE_GENDER_RACE_DATE.jpg.chip.jpg, as documented by UTKFace (gender 0/1, race 0-4).
UTK_NAME = re.compile(r"^(\d{1,3})_([01])_([0-4])_(\d+)\.jpg\.chip\.jpg$")
MAX_AGE = 120


def parse_age(name: str) -> int:
    """Age in years from a UTKFace file name (only its last path part is read).

    Raises ValueError naming the file when it does not follow AGE_GENDER_RACE_DATE.jpg.chip.jpg;
    a name with a field missing is refused rather than guessed, since which field is gone is
    ambiguous.
    """
    base = PurePosixPath(name).name
    match = UTK_NAME.match(base)
    if match is None:
        raise ValueError(
            f"{name}: not a UTKFace file name AGE_GENDER_RACE_DATE.jpg.chip.jpg "
            "(e.g. 25_0_2_20170116174525125.jpg.chip.jpg); rename or remove it"
        )
    age = int(match.group(1))
    if age > MAX_AGE:
        raise ValueError(f"{name}: age {age} is not plausible (over {MAX_AGE})")
    return age


def age_groups(ages: np.ndarray, kids_max_age: int) -> np.ndarray:
    """0 (kid) for age ≤ kids_max_age, else 1 (adult)."""
    return np.where(np.asarray(ages) <= kids_max_age, 0, 1).astype(np.int64)


def fer_like_crop(gray: np.ndarray, size: int, scale: float, center_y: float) -> np.ndarray:
    """A square box of side scale×width, centred horizontally and at center_y×height, resized
    to size×size; parts of the box outside the image repeat the border pixels.

    UTKFace chips frame the face tighter than FER2013+ does: scale 1.1 and center_y 0.425 put
    the eyes and mouth where the mean FER2013+ test face has them (see the README).
    """
    h, w = gray.shape
    side = max(1, round(scale * w))
    left = round(0.5 * w - side / 2)
    top = round(center_y * h - side / 2)
    # Pad first so the box may reach past the image; then one area-averaging resize (no
    # aliasing when shrinking 200 px chips to 48).
    pad = max(0, -left, -top, left + side - w, top + side - h)
    padded = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE) if pad else gray
    box = padded[top + pad : top + pad + side, left + pad : left + pad + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(box, (size, size), interpolation=interp)


@dataclass
class AgeFaces:
    """Grayscale FER-like face crops with the ages parsed from their file names."""

    images: np.ndarray  # N×S×S uint8
    ages: np.ndarray  # N int
    names: list[str]  # file names, as in the source
    skipped: list[str] = field(default_factory=list)  # malformed names, with the reason


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.jpg") if p.is_file())


def load_faces(
    source: str | Path,
    size: int,
    scale: float = 1.1,
    center_y: float = 0.425,
    max_extract_mb: float = 2048,
    log: Callable[[str], None] = print,
) -> AgeFaces:
    """Read an age-labelled face set from a local zip or folder of UTKFace chips.

    A zip is extracted safely (no path traversal, links, special files or decompression
    bombs; see `safe_extract`) into a temporary folder that is removed afterwards. Files whose
    names do not parse are skipped and listed in `skipped`.
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(
            f"{source}: age data not found; set age.source in params.yaml to a UTKFace zip or "
            "folder (e.g. ../shared/data/utkface_part1.zip)"
        )
    with tempfile.TemporaryDirectory(prefix="ferlab-age-") as tmp:
        if source.is_dir():
            folder = source
        elif zipfile.is_zipfile(source):
            log(f"extracting {source} ...")
            safe_extract(source, Path(tmp), max_extract_mb)
            folder = Path(tmp)
        else:
            raise DataError(f"{source}: neither a folder nor a zip archive; check age.source")
        files = _image_files(folder)
        if not files:
            raise DataError(f"{source}: holds no .jpg faces; is it the UTKFace archive?")
        images, ages, names, skipped = [], [], [], []
        for i, path in enumerate(files):
            name = path.relative_to(folder).as_posix()
            try:
                age = parse_age(name)
            except ValueError as exc:
                skipped.append(str(exc))
                continue
            images.append(fer_like_crop(read_gray(path), size, scale, center_y))
            ages.append(age)
            names.append(name)
            if (i + 1) % 2000 == 0:
                log(f"  {i + 1}/{len(files)} faces read")
    if skipped:
        log(f"skipped {len(skipped)} file(s) with malformed names, e.g. {skipped[0]}")
    if not images:
        raise DataError(f"{source}: no file name parsed as AGE_GENDER_RACE_DATE.jpg.chip.jpg")
    return AgeFaces(np.stack(images), np.array(ages, dtype=np.int64), names, skipped)


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices): a seeded split holding out val_fraction of every class."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"age.val_fraction={val_fraction}; it must lie strictly between 0 and 1")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_val = max(1, round(len(idx) * val_fraction))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def example_sheet(
    faces: AgeFaces, groups: np.ndarray, per_row: int = 10, seed: int = 0
) -> np.ndarray:
    """A uint8 image: one row of random kid crops over one row of adult crops, enlarged ×2,
    to check by eye that the crops look like FER2013+ faces."""
    rng = np.random.default_rng(seed)
    rows = []
    for group in range(len(AGE_CLASSES)):
        idx = np.flatnonzero(groups == group)
        pick = rng.choice(idx, size=min(per_row, len(idx)), replace=False) if len(idx) else []
        tiles = [faces.images[i] for i in pick]
        tiles += [np.zeros_like(faces.images[0])] * (per_row - len(tiles))
        rows.append(np.concatenate(tiles, axis=1))
    sheet = np.concatenate(rows, axis=0)
    return cv2.resize(sheet, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
