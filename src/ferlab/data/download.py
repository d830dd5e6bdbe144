"""Fetch FER2013+ (Kaggle, a URL, a local archive or folder) into data/raw, all or nothing."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import requests
from tqdm import tqdm

from ferlab.data import RAW_SPLITS, DataError
from ferlab.data.archive import copy_folder, extract_zip
from ferlab.io import atomic_path

log = logging.getLogger(__name__)

KAGGLE_PREFIX = "kaggle:"
KAGGLE_API_BASE = "https://www.kaggle.com/api/v1"
LOCAL_HINT = "dvc exp run -S data.source=path/to/fer2013plus.zip"
_TIMEOUT = (15, 120)  # seconds: connect, and between two received chunks


@dataclass(frozen=True)
class Source:
    """A parsed `data.source`: kind is kaggle, url, zip or folder."""

    kind: str
    value: str

    @classmethod
    def parse(cls, source: str) -> Source:
        source = str(source).strip()
        if source.startswith(KAGGLE_PREFIX):
            ref = source[len(KAGGLE_PREFIX) :].strip("/")
            if ref.count("/") != 1 or not all(ref.split("/")):
                raise DataError(
                    f"data.source {source!r}: expected kaggle:<owner>/<dataset>, "
                    "e.g. kaggle:subhaditya/fer2013plus"
                )
            return cls("kaggle", ref)
        if source.startswith(("http://", "https://")):
            return cls("url", source)
        path = Path(source).expanduser()
        if path.is_dir():
            return cls("folder", str(path))
        if path.is_file():
            return cls("zip", str(path))
        raise DataError(
            f"data.source {source!r}: no such file or folder (from {Path.cwd()}); give a "
            f"kaggle:<owner>/<dataset>, an http(s) URL, or an existing .zip or folder: {LOCAL_HINT}"
        )


def kaggle_credentials() -> tuple[str, str]:
    """(username, key) from KAGGLE_USERNAME/KAGGLE_KEY or kaggle.json; DataError if none."""
    user, key = os.environ.get("KAGGLE_USERNAME"), os.environ.get("KAGGLE_KEY")
    if user and key:
        return user, key
    folder = Path(os.environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle")
    config = folder / "kaggle.json"
    if config.is_file():
        try:
            data = json.loads(config.read_text())
            return str(data["username"]), str(data["key"])
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(
                f"{config}: not a Kaggle API token ({exc}); download a fresh kaggle.json from "
                "https://www.kaggle.com/settings (API → Create New Token)"
            ) from None
    raise DataError(
        "no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY, or save the API token from "
        f"https://www.kaggle.com/settings (API → Create New Token) as {config}; "
        f"or use a local copy of the archive: {LOCAL_HINT}"
    )


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, dest: Path, auth: tuple[str, str] | None = None, what: str = "") -> str:
    """Stream `url` into the file `dest` with a progress bar; one clear DataError on failure.

    Returns the response's Content-Type ('' if none was sent).
    """
    what = what or url
    try:
        with requests.get(url, auth=auth, stream=True, timeout=_TIMEOUT) as response:
            if response.status_code in (401, 403) and auth is not None:
                raise DataError(
                    f"{what}: Kaggle refused the credentials of user {auth[0]!r} "
                    f"(HTTP {response.status_code}); check KAGGLE_USERNAME/KAGGLE_KEY or "
                    "kaggle.json (and accept the dataset's rules on its Kaggle page), "
                    f"or use a local archive: {LOCAL_HINT}"
                )
            if response.status_code == 404:
                raise DataError(f"{what}: not found (HTTP 404); check data.source")
            if response.status_code != 200:
                raise DataError(
                    f"{what}: download failed with HTTP {response.status_code} "
                    f"{response.reason}; try again later or use a local archive: {LOCAL_HINT}"
                )
            total = int(response.headers.get("content-length") or 0) or None
            with (
                dest.open("wb") as out,
                tqdm(
                    total=total, unit="B", unit_scale=True, desc="download", mininterval=2.0
                ) as bar,
            ):
                for chunk in response.iter_content(chunk_size=1 << 16):
                    out.write(chunk)
                    bar.update(len(chunk))
            return response.headers.get("content-type", "")
    except requests.RequestException as exc:
        raise DataError(
            f"{what}: cannot download ({type(exc).__name__}: {exc}); check the network, or "
            f"use a local archive: {LOCAL_HINT}"
        ) from None


def kaggle_url(ref: str) -> str:
    base = os.environ.get("KAGGLE_API_BASE", KAGGLE_API_BASE).rstrip("/")
    return f"{base}/datasets/download/{ref}"


def first_existing(paths: Iterable[str | Path]) -> Path | None:
    for path in paths:
        if Path(path).is_file() or Path(path).is_dir():
            return Path(path)
    return None


def check_sha256(archive: Path, expected: str, label: str | None = None) -> str:
    """The archive's sha256; DataError if `expected` is given and differs.

    `label` names the archive in the message (e.g. the URL it came from); default: its path.
    """
    actual = sha256_file(archive)
    if expected and actual != expected.strip().lower():
        raise DataError(
            f"{label or archive}: sha256 is {actual} but data.sha256 expects {expected}; the file "
            "is corrupt or a different version: fetch it again, or correct data.sha256 in "
            "params.yaml"
        )
    return actual


def prepare_raw(
    source: str,
    target: str | Path = "data/raw",
    local_copies: Iterable[str | Path] = (),
    sha256: str = "",
    max_extract_mb: float = 2048,
) -> dict:
    """Produce `target/{train,test}/<class>/*` from `source`; returns a summary for logging.

    Everything lands in a temporary folder first and is renamed onto `target` only when
    complete: on any error there is no new (and no partial) `target`.
    """
    target = Path(target)
    local_copies = list(local_copies)
    parsed = Source.parse(source)
    summary: dict = {"source": source}
    download: Path | None = None
    origin: str | None = None  # what messages name instead of a temporary download file
    try:
        if parsed.kind == "kaggle":
            local = first_existing(local_copies)
            if local is not None:
                log.info("using the local copy %s for %s (no download)", local, source)
                parsed = Source("folder" if local.is_dir() else "zip", str(local))
                summary["local_copy"] = str(local)
            else:
                tried = ", ".join(map(str, local_copies)) or "none"
                log.info("no local copy of %s (tried: %s); downloading from Kaggle", source, tried)
                auth = kaggle_credentials()
                download = _temp_file(target)
                origin = f"Kaggle {parsed.value} ({kaggle_url(parsed.value)})"
                kind = fetch(kaggle_url(parsed.value), download, auth, f"Kaggle {parsed.value}")
                check_downloaded_zip(download, origin, kind)
                parsed = Source("zip", str(download))
        elif parsed.kind == "url":
            download = _temp_file(target)
            origin = parsed.value
            check_downloaded_zip(download, origin, fetch(parsed.value, download))
            parsed = Source("zip", str(download))

        with atomic_path(target, folder=True) as tmp:
            if parsed.kind == "folder":
                if sha256:
                    log.warning("data.sha256 is ignored for a folder source (%s)", parsed.value)
                counts = copy_folder(Path(parsed.value), tmp)
            else:
                summary["sha256"] = check_sha256(Path(parsed.value), sha256, origin)
                counts = extract_zip(Path(parsed.value), tmp, max_extract_mb, origin)
            for split in RAW_SPLITS:
                if counts[split] == 0:
                    raise DataError(
                        f"{source}: no images under {split}/<class>/; expected the Kaggle layout "
                        "fer2013plus/{train,test}/<class>/<image>.png"
                    )
    finally:
        if download is not None:
            download.unlink(missing_ok=True)
    summary["counts"] = {split: counts[split] for split in RAW_SPLITS}
    summary["classes"] = sorted(p.name for p in (target / RAW_SPLITS[0]).iterdir() if p.is_dir())
    log.info("data ready in %s: %s", target, summary["counts"])
    return summary


def check_downloaded_zip(download: Path, origin: str, content_type: str) -> None:
    """DataError naming the URL when what came back is not a zip (an HTML login or error
    page is the usual case); the temporary file it was saved to is no use to the reader."""
    if zipfile.is_zipfile(download):
        return
    sent = f"{content_type.split(';')[0].strip()} " if content_type else ""
    raise DataError(
        f"{origin}: the server sent a {sent}file that is not a zip archive (an HTML page is "
        "usually a login, consent or error page); check data.source, or download the archive "
        f"in a browser and use the local copy: {LOCAL_HINT}"
    )


def _temp_file(target: Path) -> Path:
    # Beside the target, so a half-finished download never sits where a stage reads data.
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        prefix=f".{target.name}-download-", suffix=".zip", dir=target.parent
    )
    os.close(fd)
    return Path(name)
