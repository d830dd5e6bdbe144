"""data.source: local copies, Kaggle's HTTP API (served locally), URLs, checksums, errors."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import pytest
import yaml

from ferlab.data import DataError
from ferlab.data.download import kaggle_credentials, prepare_raw

ROOT = Path(__file__).resolve().parents[1]
USER, KEY = "fer-user", "s3cret-key"


def small_zip(path: Path) -> Path:
    """A tiny archive in the Kaggle layout with real PNG files (noise), 2 classes × 2 images."""
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as zf:
        for split in ("train", "test"):
            for label in ("anger", "fear"):
                for k in range(2):
                    ok, buf = cv2.imencode(".png", rng.integers(0, 256, (48, 48), dtype=np.uint8))
                    assert ok
                    zf.writestr(f"fer2013plus/{split}/{label}/{split}{k}.png", buf.tobytes())
    return path


class KaggleStub(BaseHTTPRequestHandler):
    """Kaggle's download endpoint: basic auth, then a redirect to the file (as Kaggle does)."""

    payload: ClassVar[bytes] = b""
    requests_seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.requests_seen.append(self.path)
        expected = "Basic " + base64.b64encode(f"{USER}:{KEY}".encode()).decode()
        if self.path == "/api/v1/datasets/download/owner/fer2013plus":
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.end_headers()
                self.wfile.write(b'{"code": 401, "message": "Unauthenticated"}')
                return
            self.send_response(302)
            self.send_header("Location", "/storage/fer2013plus.zip")
            self.end_headers()
        elif self.path in ("/storage/fer2013plus.zip", "/plain/fer.zip"):
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(self.payload)))
            self.end_headers()
            self.wfile.write(self.payload)
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def kaggle_server(tmp_path: Path) -> Iterator[tuple[str, type[KaggleStub]]]:
    """A local HTTP server (127.0.0.1 only) standing in for www.kaggle.com."""
    handler = type("Handler", (KaggleStub,), {"payload": b"", "requests_seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def no_kaggle_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No credentials anywhere: env unset, config dir empty."""
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    config = tmp_path / "kaggle_config"
    config.mkdir()
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(config))
    return config


def data_leftovers(project: Path) -> list[str]:
    folder = project / "data"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_kaggle_source_prefers_the_local_copy_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, no_kaggle_env: Path
) -> None:
    archive = small_zip(tmp_path / "copy.zip")
    with caplog.at_level(logging.INFO, logger="ferlab"):
        summary = prepare_raw(
            "kaggle:owner/fer2013plus",
            target=tmp_path / "data/raw",
            local_copies=[tmp_path / "absent.zip", archive],
        )
    assert "using the local copy" in caplog.text and str(archive) in caplog.text
    assert summary["local_copy"] == str(archive)
    assert summary["counts"] == {"train": 4, "test": 4}
    assert sorted(p.name for p in (tmp_path / "data/raw/train").iterdir()) == ["anger", "fear"]


def test_kaggle_download_end_to_end_with_basic_auth(
    tmp_path: Path,
    subset_zip: Path,
    kaggle_server: tuple[str, type[KaggleStub]],
    no_kaggle_env: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base, handler = kaggle_server
    handler.payload = subset_zip.read_bytes()
    monkeypatch.setenv("KAGGLE_API_BASE", f"{base}/api/v1")
    (no_kaggle_env / "kaggle.json").write_text(json.dumps({"username": USER, "key": KEY}))
    summary = prepare_raw(
        "kaggle:owner/fer2013plus",
        target=tmp_path / "data/raw",
        local_copies=[tmp_path / "no_local_copy.zip"],
        sha256=hashlib.sha256(handler.payload).hexdigest(),
    )
    assert handler.requests_seen == [
        "/api/v1/datasets/download/owner/fer2013plus",
        "/storage/fer2013plus.zip",
    ]
    assert summary["counts"] == {"train": 320, "test": 320}  # 40 real faces × 8 classes
    assert len(summary["classes"]) == 8
    face = cv2.imread(str(next((tmp_path / "data/raw/test/fear").glob("*.png"))), 0)
    assert face.shape == (48, 48)
    assert data_leftovers(tmp_path) == ["raw"]  # the temporary download is gone


def test_kaggle_http_401_is_one_clear_error(
    tmp_path: Path,
    kaggle_server: tuple[str, type[KaggleStub]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base, _ = kaggle_server
    monkeypatch.setenv("KAGGLE_API_BASE", f"{base}/api/v1")
    monkeypatch.setenv("KAGGLE_USERNAME", USER)
    monkeypatch.setenv("KAGGLE_KEY", "wrong-key")
    with pytest.raises(DataError, match=r"refused the credentials .*HTTP 401") as err:
        prepare_raw("kaggle:owner/fer2013plus", target=tmp_path / "data/raw")
    assert "data.source=" in str(err.value)
    assert data_leftovers(tmp_path) == []


def test_kaggle_unreachable_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("KAGGLE_API_BASE", f"http://127.0.0.1:{port}/api/v1")
    monkeypatch.setenv("KAGGLE_USERNAME", USER)
    monkeypatch.setenv("KAGGLE_KEY", KEY)
    with pytest.raises(DataError, match=r"cannot download .*check the network") as err:
        prepare_raw("kaggle:owner/fer2013plus", target=tmp_path / "data/raw")
    assert "dvc exp run -S data.source=path/to/fer2013plus.zip" in str(err.value)
    assert data_leftovers(tmp_path) == []


def test_no_kaggle_credentials_says_how_to_set_them(tmp_path: Path, no_kaggle_env: Path) -> None:
    with pytest.raises(DataError) as err:
        prepare_raw(
            "kaggle:owner/fer2013plus",
            target=tmp_path / "data/raw",
            local_copies=[tmp_path / "absent.zip"],
        )
    message = str(err.value)
    assert "no Kaggle credentials" in message
    assert "KAGGLE_USERNAME" in message and str(no_kaggle_env / "kaggle.json") in message
    assert "data.source=path/to/fer2013plus.zip" in message
    assert data_leftovers(tmp_path) == []


def test_credentials_from_env_win_over_kaggle_json(
    no_kaggle_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (no_kaggle_env / "kaggle.json").write_text(json.dumps({"username": "file", "key": "k1"}))
    assert kaggle_credentials() == ("file", "k1")
    monkeypatch.setenv("KAGGLE_USERNAME", "env")
    monkeypatch.setenv("KAGGLE_KEY", "k2")
    assert kaggle_credentials() == ("env", "k2")


def test_broken_kaggle_json_is_named(no_kaggle_env: Path) -> None:
    (no_kaggle_env / "kaggle.json").write_text("{not json")
    with pytest.raises(DataError, match=r"kaggle\.json: not a Kaggle API token"):
        kaggle_credentials()


def test_http_url_source(tmp_path: Path, kaggle_server: tuple[str, type[KaggleStub]]) -> None:
    base, handler = kaggle_server
    handler.payload = small_zip(tmp_path / "fer.zip").read_bytes()
    summary = prepare_raw(f"{base}/plain/fer.zip", target=tmp_path / "project/data/raw")
    assert summary["counts"] == {"train": 4, "test": 4}
    assert data_leftovers(tmp_path / "project") == ["raw"]


def test_http_404_is_one_clear_error(
    tmp_path: Path, kaggle_server: tuple[str, type[KaggleStub]]
) -> None:
    base, _ = kaggle_server
    with pytest.raises(DataError, match="HTTP 404"):
        prepare_raw(f"{base}/nothing.zip", target=tmp_path / "data/raw")
    assert data_leftovers(tmp_path) == []


def test_missing_archive_is_one_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere/fer2013plus.zip"
    with pytest.raises(DataError, match="no such file or folder") as err:
        prepare_raw(str(missing), target=tmp_path / "data/raw")
    assert str(missing) in str(err.value)
    assert not (tmp_path / "data").exists()


def test_wrong_sha256_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    archive = small_zip(tmp_path / "fer.zip")
    actual = hashlib.sha256(archive.read_bytes()).hexdigest()
    with pytest.raises(DataError, match="sha256") as err:
        prepare_raw(str(archive), target=tmp_path / "data/raw", sha256="0" * 64)
    assert actual in str(err.value) and "0" * 64 in str(err.value)
    assert data_leftovers(tmp_path) == []
    summary = prepare_raw(str(archive), target=tmp_path / "data/raw", sha256=actual.upper())
    assert summary["sha256"] == actual


def test_failure_keeps_a_previous_complete_raw_folder(tmp_path: Path) -> None:
    archive = small_zip(tmp_path / "fer.zip")
    prepare_raw(str(archive), target=tmp_path / "data/raw")
    before = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "data").rglob("*"))
    with pytest.raises(DataError):
        prepare_raw(str(archive), target=tmp_path / "data/raw", sha256="f" * 64)
    after = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "data").rglob("*"))
    assert after == before  # replaced only by a complete new one, never half-written


def test_malformed_kaggle_source(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="kaggle:<owner>/<dataset>"):
        prepare_raw("kaggle:fer2013plus", target=tmp_path / "data/raw")


def test_download_stage_script_reports_one_line_and_exits_1(tmp_path: Path) -> None:
    """The real stage script: a bad data.source gives one message, exit 1, no traceback."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["source"] = str(tmp_path / "missing.zip")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "stages/download.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert f"download failed: data.source '{tmp_path / 'missing.zip'}'" in proc.stderr
    assert not (tmp_path / "data/raw").exists()


class HtmlPage(BaseHTTPRequestHandler):
    """A web server that answers every request with an HTML page (a login wall, say)."""

    def do_GET(self) -> None:
        body = b"<!doctype html><html><body>Please sign in to download</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_html_page_instead_of_a_zip_names_the_url(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), HtmlPage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/datasets/fer2013plus.zip"
    try:
        with pytest.raises(DataError) as err:
            prepare_raw(url, target=tmp_path / "project/data/raw")
    finally:
        server.shutdown()
        server.server_close()
    message = str(err.value)
    assert message.startswith(f"{url}: the server sent a text/html file that is not a zip")
    assert "download-" not in message  # not the name of the deleted temporary file
    assert "data.source=" in message
    assert data_leftovers(tmp_path / "project") == []  # the temporary download is gone
