"""Safe extraction of a dataset archive (or copy of a folder) into the normalised raw layout.

Whatever the archive looks like (`fer2013plus/train/...`, `train/...`, `data/x/train/...`), the
result is `<target>/{train,test}/<class>/<file>`. Nothing is trusted: entries that would leave
the target, links, device files and decompression bombs stop the extraction before a byte is
written.
"""

from __future__ import annotations

import logging
import posixpath
import re
import shutil
import stat
import zipfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

from ferlab.data import IMAGE_SUFFIXES, RAW_SPLITS, DataError

log = logging.getLogger(__name__)

# An entry that unpacks to more than this many times its compressed size is treated as a bomb
# (FER2013+ PNGs are ~1.3×; deflate tops out near 1000× on constant data). Small entries are
# exempt: a tiny text file of repeated characters is harmless whatever its ratio.
MAX_RATIO = 200.0
RATIO_MIN_BYTES = 1 << 20
_CHUNK = 1 << 16
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")
_IGNORED_PARTS = {"__MACOSX"}


def _safe_name(name: str, archive: Path) -> str:
    """The entry name normalised; DataError if it is absolute or climbs out of the target."""
    if name.startswith(("/", "\\")) or _WINDOWS_DRIVE.match(name):
        raise DataError(
            f"{archive}: entry {name!r} has an absolute path; refusing to extract this archive "
            "(it may try to overwrite files outside the data folder)"
        )
    normal = posixpath.normpath(name.replace("\\", "/"))
    if normal == ".." or normal.startswith("../"):
        raise DataError(
            f"{archive}: entry {name!r} leaves the extraction folder ('..'); refusing to extract "
            "this archive (path traversal)"
        )
    return normal


def check_zip(
    archive: Path, zf: zipfile.ZipFile, max_bytes: int
) -> list[tuple[zipfile.ZipInfo, str]]:
    """Vet every entry before extracting anything; returns (entry, normalised name) of files."""
    files: list[tuple[zipfile.ZipInfo, str]] = []
    total = 0
    for info in zf.infolist():
        name = _safe_name(info.filename, archive)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise DataError(
                f"{archive}: entry {info.filename!r} is a symbolic link; refusing to extract "
                "this archive (links can point outside the data folder)"
            )
        # Many writers store permission bits only (no file type): that is a plain file.
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise DataError(
                f"{archive}: entry {info.filename!r} is a special file (mode {oct(mode)}); "
                "refusing to extract this archive"
            )
        if info.is_dir():
            continue
        total += info.file_size
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_MIN_BYTES and ratio > MAX_RATIO:
            raise DataError(
                f"{archive}: entry {info.filename!r} expands {ratio:.0f}× "
                f"({info.compress_size} → {info.file_size} bytes); refusing a likely "
                "decompression bomb"
            )
        files.append((info, name))
    if total > max_bytes:
        raise DataError(
            f"{archive}: unpacks to {total / 2**20:.1f} MiB, over data.max_extract_mb = "
            f"{max_bytes / 2**20:g} MiB; refusing a likely decompression bomb (raise "
            "data.max_extract_mb in params.yaml if the archive is genuine)"
        )
    return files


def find_split_root(names: Iterable[str], where: str) -> str:
    """The folder (POSIX, '' for the top) that holds both train/ and test/, shallowest first."""
    found: dict[str, set[str]] = {}
    for name in names:
        parts = name.split("/")
        if _IGNORED_PARTS.intersection(parts):
            continue
        for i, part in enumerate(parts[:-1]):
            if part in RAW_SPLITS:
                found.setdefault("/".join(parts[:i]), set()).add(part)
    roots = [root for root, splits in found.items() if splits >= set(RAW_SPLITS)]
    if not roots:
        raise DataError(
            f"{where}: no folder with both train/ and test/ inside; expected the Kaggle layout "
            "fer2013plus/{train,test}/<class>/<image>.png"
        )
    depth = min(root.count("/") + bool(root) for root in roots)
    shallowest = sorted(r for r in roots if r.count("/") + bool(r) == depth)
    if len(shallowest) > 1:
        raise DataError(
            f"{where}: several train/ + test/ folders at the same depth ({', '.join(shallowest)}); "
            "keep only one data set in the archive"
        )
    return shallowest[0]


def _layout_path(name: str, root: str) -> tuple[str, str, str] | None:
    """(split, class, file) for an image at <root>/<split>/<class>/<file>, else None."""
    rel = name[len(root) + 1 :] if root else name
    if root and not name.startswith(root + "/"):
        return None
    parts = rel.split("/")
    if len(parts) != 3 or parts[0] not in RAW_SPLITS:
        return None
    split, label, file = parts
    if (
        label in ("", ".", "..")
        or file.startswith(".")
        or not file.lower().endswith(IMAGE_SUFFIXES)
    ):
        return None
    return split, label, file


def extract_zip(archive: Path, target: Path, max_extract_mb: float) -> Counter[str]:
    """Extract the images of `archive` into `target/{train,test}/<class>/`; counts per split.

    `target` must not exist yet (the caller gives an atomic temporary path).
    """
    archive = Path(archive)
    if not zipfile.is_zipfile(archive):
        raise DataError(f"{archive}: not a zip archive (corrupt download or wrong file)")
    max_bytes = int(max_extract_mb * 2**20)
    with zipfile.ZipFile(archive) as zf:
        files = check_zip(archive, zf, max_bytes)
        root = find_split_root((name for _, name in files), str(archive))
        log.info("extracting %s (data folder %r) into the normalised layout", archive, root or "/")
        counts: Counter[str] = Counter()
        skipped = 0
        written = 0
        for info, name in tqdm(files, desc="extract", unit="file", mininterval=2.0):
            where = _layout_path(name, root)
            if where is None:
                skipped += 1
                continue
            dest = target.joinpath(*where)
            dest.parent.mkdir(parents=True, exist_ok=True)
            # Count the bytes really produced: a forged header must not get past the size limit.
            with zf.open(info) as src, dest.open("wb") as out:
                while chunk := src.read(_CHUNK):
                    written += len(chunk)
                    if written > max_bytes:
                        raise DataError(
                            f"{archive}: unpacks to more than data.max_extract_mb = "
                            f"{max_extract_mb} MiB; refusing a likely decompression bomb"
                        )
                    out.write(chunk)
            counts[where[0]] += 1
    if skipped:
        log.info("skipped %d entries outside <split>/<class>/<image>", skipped)
    return counts


def copy_folder(folder: Path, target: Path) -> Counter[str]:
    """Copy the images of a local dataset folder into `target/{train,test}/<class>/`."""
    folder = Path(folder)
    files: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            raise DataError(
                f"{path}: symbolic link inside the data folder; copy the real file there instead"
            )
        if path.is_file():
            files[path.relative_to(folder).as_posix()] = path
    root = find_split_root(files, str(folder))
    counts: Counter[str] = Counter()
    for name, path in tqdm(files.items(), desc="copy", unit="file", mininterval=2.0):
        where = _layout_path(name, root)
        if where is None:
            continue
        dest = target.joinpath(*where)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        counts[where[0]] += 1
    return counts
