"""`ferlab ui`: the MLflow server it starts (and every worker that server forks) ends with it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers_http(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def process_table() -> dict[int, tuple[int, str]]:
    """pid → (parent pid, state) of every process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # ended meanwhile
            fields = stat[stat.rindex(")") + 2 :].split()
            table[int(entry.name)] = (int(fields[1]), fields[0])
    return table


def descendants(pid: int) -> set[int]:
    table = process_table()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, (parent, _) in table.items() if parent in frontier} - found
        found |= frontier
    return found


def running(pids: set[int]) -> set[int]:
    """Those still alive (a zombie holds no memory or port and is not counted)."""
    table = process_table()
    return {p for p in pids if p in table and table[p][1] != "Z"}


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    except OSError:
        return []  # ended meanwhile


def serve_and_stop(
    folder: Path, store: str, signum: int, check: Callable[[int, set[int]], None]
) -> None:
    """Start `ferlab ui` on a free port, run `check(port, server pids)` while it answers, then
    stop it with `signum` and assert all of it stopped: exit 0, port closed, no process left."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "MLFLOW_TRACKING_URI": store}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ferlab.cli", "ui", "--port", str(port)],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 300
        while not answers_http(port) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert proc.poll() is None, proc.communicate()[0]
        assert answers_http(port), "the MLflow UI did not answer within 300 s"
        children = descendants(proc.pid)
        assert children, "ferlab ui started no server process"
        check(port, children)
        proc.send_signal(signum)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        left = running(children)
        for pid in left:  # a failed run must not leave a server behind on the machine
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 0, output
    assert "MLflow UI stopped" in output
    assert not port_open(port)
    assert left == set(), "server processes outlived ferlab ui (killed now)"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table")
def test_ctrl_c_of_ferlab_ui_stops_its_server(tmp_path: Path) -> None:
    """Ctrl+C (SIGINT) stops the server; `kill` (SIGTERM) is checked by the REST test below."""

    def bound_to_loopback(port: int, children: set[int]) -> None:
        # The server was told 127.0.0.1, as --host defaults to.
        servers = [cmdline(p) for p in children if "mlflow" in cmdline(p)]
        assert any(c[c.index("--host") + 1] == "127.0.0.1" for c in servers if "--host" in c)

    serve_and_stop(
        tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", signal.SIGINT, bound_to_loopback
    )


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True
    )


def _rest(port: int, endpoint: str, body: dict | None = None) -> dict:
    import json

    url = f"http://127.0.0.1:{port}/api/2.0/mlflow/{endpoint}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table")
def test_compare_view_through_the_rest_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two evaluate runs, main and a DVC experiment, as `ferlab ui` serves them: the experiment
    opens on the training view, run names tell them apart by the param that differs, and both
    carry the study's headline metrics (the committed reports/metrics.json, flattened as the
    evaluate stage logs it)."""
    import json

    import yaml

    from ferlab import tracking
    from ferlab.config import flatten

    dvc_yaml = {"stages": {"evaluate": {"cmd": "true", "params": ["seed", "evaluate"]}}}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml))
    params = {"seed": 0, "evaluate": {"batch_size": 256, "tta_flip": True}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "dvc.yaml", "params.yaml")
    _git(tmp_path, "commit", "-qm", "main")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    headline = flatten(json.loads((ROOT / "reports/metrics.json").read_text()))
    headline = {k: v for k, v in headline.items() if isinstance(v, float)}
    with tracking.stage_run("evaluate", params):
        tracking.log_metrics(headline)
    experiment = {**params, "evaluate": {**params["evaluate"], "tta_flip": False}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(experiment))  # as `dvc exp run -S`
    monkeypatch.setenv("DVC_EXP_NAME", "exp-notta")
    with tracking.stage_run("evaluate", experiment):
        tracking.log_metrics({k: v - 0.01 for k, v in headline.items()})

    def compare(port: int, children: set[int]) -> None:
        found = _rest(port, "experiments/get-by-name?experiment_name=ferlab")["experiment"]
        tags = {t["key"]: t["value"] for t in found.get("tags", [])}
        assert tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
        runs = _rest(port, "runs/search", {"experiment_ids": [found["experiment_id"]]})["runs"]
        names = {r["info"]["run_name"] for r in runs}
        assert len(runs) == 2 and len(names) == 2
        assert "evaluate · exp-notta · evaluate.tta_flip=False" in names
        (main,) = names - {"evaluate · exp-notta · evaluate.tta_flip=False"}
        assert main.startswith("evaluate · ") and "tta_flip" not in main  # commit, params hash
        key = "fast.reference_private.accuracy"
        for run in runs:
            metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
            assert set(headline) <= set(metrics)
            assert key in metrics and 0.1 < metrics[key] < 1

    serve_and_stop(tmp_path, store, signal.SIGTERM, compare)  # `kill` stops all of it
