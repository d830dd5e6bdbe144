"""File output that never leaves a half-written result behind, and the one image loader."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np

NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
NO_PERMISSION = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


class OutputError(OSError):
    """An output could not be written (disk full, no permission, read-only file system).

    Its message names the file and the fix; stage scripts print it as one line.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _free_mib(path: Path) -> float:
    """Free space on the file system holding `path` (or its nearest existing parent)."""
    for folder in (path, *path.parents):
        if folder.exists():
            return shutil.disk_usage(folder).free / 2**20
    return float("nan")


def output_error(path: Path, exc: OSError) -> OutputError | None:
    """The clear error for an OSError met while writing `path`; None if it is another fault."""
    reason = exc.strerror or str(exc)
    if exc.errno in NO_SPACE:
        return OutputError(
            exc.errno,
            f"{path}: cannot write, no space left ({reason}; "
            f"{_free_mib(path.parent):.1f} MiB free there); free some disk space (e.g. "
            "`dvc gc -w` for old cached data, `mlflow gc` for deleted runs) and rerun",
        )
    if exc.errno in NO_PERMISSION:
        folder = next((f for f in path.parents if f.exists()), path.parent)
        return OutputError(
            exc.errno,
            f"{path}: no permission ({reason}); give this user write access to {folder} "
            "(chmod u+w or chown; a read-only mount must be remounted read-write), or run the "
            "pipeline from a writable copy of the project",
        )
    return None


def refuse_folder(target: str | Path) -> None:
    """One clear error when a file output names an existing folder (it is never replaced)."""
    target = Path(target)
    if target.is_dir():
        raise OutputError(
            errno.EISDIR,
            f"{target}: is a folder, and a file is written here; name a file instead "
            f"(for example {target / 'out'}{target.suffix or ''}). Nothing was written or removed",
        )


@contextmanager
def atomic_path(target: str | Path, folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only on success.

    For a file (the default) an existing folder at `target` is refused before anything is
    written, never removed. With `folder=True` the body writes a folder that replaces the
    pipeline-owned folder `target` in one rename. Whatever was written is removed if the body
    raises. A full disk or a permission error while writing becomes one `OutputError` naming
    `target` (or the other file the operating system named) and the fix.
    """
    target = Path(target)
    if not folder:
        refuse_folder(target)
    prefix = f".{target.name}."
    tmp_root: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp_root = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
        tmp = tmp_root / target.name
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{target}: nothing was written")
        if folder and target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.is_dir():
            refuse_folder(target)  # a folder appeared while writing: still never removed
        os.replace(tmp, target)
    except OutputError:
        raise
    except OSError as exc:
        named = Path(exc.filename) if isinstance(exc.filename, str) else None
        is_temporary = named is not None and (
            (tmp_root is not None and named.is_relative_to(tmp_root))
            or (named.parent == target.parent and named.name.startswith(prefix))
        )
        if named is None or is_temporary:
            named = target  # the temporary stands for the target
        clear = output_error(named, exc)
        if clear is None:
            raise
        raise clear from exc
    finally:
        if tmp_root is not None:
            shutil.rmtree(tmp_root, ignore_errors=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def read_gray(path: str | Path) -> np.ndarray:
    """Decode an image file as uint8 grayscale (H×W); one clear error if it cannot be read."""
    path = Path(path)
    data = np.fromfile(path, dtype=np.uint8) if path.is_file() else None
    if data is None:
        raise FileNotFoundError(f"{path}: image file not found")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise ValueError(
            f"{path}: not a readable image (corrupt or unsupported); replace or delete it"
        )
    if image.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        image = cv2.cvtColor(image, code)
    if image.dtype != np.uint8:
        image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    return image


def save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """Write arrays to an .npz atomically (uncompressed: loading must be fast).

    Byte-for-byte repeatable (fixed entry timestamps, unlike `np.savez`), so the same arrays
    keep the same hash and DVC does not rerun the stages downstream.
    """
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(entry, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
