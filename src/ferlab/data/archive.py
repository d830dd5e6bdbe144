"""Safe extraction of archives (every zip ferlab reads goes through `safe_extract`), and the
dataset archive (or copy of a folder) into the normalised raw layout.

Whatever the archive looks like (`fer2013plus/train/...`, `train/...`, `data/x/train/...`), the
result is `<target>/{train,test}/<class>/<file>`. Nothing is trusted: entries that would leave
the target, links, device files and decompression bombs stop the extraction before a byte is
written; damaged entry data stops it with the entry named.
"""

from __future__ import annotations

import logging
import posixpath
import re
import shutil
import stat
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
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


def _safe_name(name: str, archive: str | Path) -> str:
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
    archive: str | Path, zf: zipfile.ZipFile, max_bytes: int
) -> list[tuple[zipfile.ZipInfo, str]]:
    """Vet every entry before extracting anything; returns (entry, normalised name) of files.

    `archive` only names the archive in messages.
    """
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


def _corrupt(label: str, entry: str, exc: Exception) -> DataError:
    kind = "zlib" if isinstance(exc, zlib.error) else type(exc).__name__  # zlib's is "error"
    return DataError(
        f"{label}: entry {entry!r} is corrupt ({kind}: {exc}); the archive is "
        "damaged (an interrupted or bad download): fetch it again, and check it with `unzip -t`"
    )


def safe_extract(
    archive: Path,
    target: Path,
    max_extract_mb: float,
    select: Callable[[list[str]], dict[str, str]] | None = None,
    label: str | None = None,
) -> list[Path]:
    """Extract a zip into `target` after vetting every entry (`check_zip`); the files written.

    Every archive reader goes through here. `select` gets the vetted file names (normalised)
    and returns {name: destination relative to `target`} for the files to write; by default
    every file lands at its own path. The bytes really produced are counted against
    `max_extract_mb` (a forged header must not get past the limit), and an entry whose data is
    damaged (bad CRC, bad deflate stream, cut short) is one DataError naming it. `label` names
    the archive in messages (e.g. the URL it was downloaded from); default: its path. On error,
    files already written stay in `target`: callers extract into a temporary folder.
    """
    archive = Path(archive)
    label = label or str(archive)
    if not zipfile.is_zipfile(archive):
        raise DataError(f"{label}: not a zip archive (corrupt download or wrong file)")
    max_bytes = int(max_extract_mb * 2**20)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{label}: not a readable zip archive ({exc}); fetch it again") from None
    with zf:
        files = check_zip(label, zf, max_bytes)
        names = [name for _, name in files]
        chosen = select(names) if select is not None else {name: name for name in names}
        written_paths: list[Path] = []
        written = 0
        for info, name in tqdm(files, desc="extract", unit="file", mininterval=2.0):
            relative = chosen.get(name)
            if relative is None:
                continue
            dest = target / relative
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, dest.open("wb") as out:
                    while chunk := src.read(_CHUNK):
                        written += len(chunk)
                        if written > max_bytes:
                            raise DataError(
                                f"{label}: unpacks to more than data.max_extract_mb = "
                                f"{max_extract_mb} MiB; refusing a likely decompression bomb"
                            )
                        out.write(chunk)
            except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                raise _corrupt(label, info.filename, exc) from None
            written_paths.append(dest)
    return written_paths


def extract_zip(
    archive: Path, target: Path, max_extract_mb: float, label: str | None = None
) -> Counter[str]:
    """Extract the images of `archive` into `target/{train,test}/<class>/`; counts per split.

    `target` must not exist yet (the caller gives an atomic temporary path); `label` names the
    archive in messages (default: its path).
    """
    label = label or str(archive)

    def layout(names: list[str]) -> dict[str, str]:
        root = find_split_root(names, label)
        log.info("extracting %s (data folder %r) into the normalised layout", label, root or "/")
        places = {name: "/".join(where) for name in names if (where := _layout_path(name, root))}
        if len(places) < len(names):
            log.info("skipped %d entries outside <split>/<class>/<image>", len(names) - len(places))
        return places

    written = safe_extract(archive, target, max_extract_mb, layout, label)
    return Counter(path.relative_to(target).parts[0] for path in written)


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
