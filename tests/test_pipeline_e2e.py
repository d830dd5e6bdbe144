"""The real `dvc repro` in a temporary copy of the repo, on a real FER2013+ subset."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

PIPELINE_STAGES = ("download", "validate", "split", "preprocess", "train", "evaluate", "export")


def project_copy(target: Path) -> Path:
    """Copy the files git would ship (tracked + untracked-not-ignored) and make it a git repo."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        source = ROOT / name.decode()
        if source.is_file():
            (target / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name.decode())
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run(["git", "init", "-q"], cwd=target, check=True)
    subprocess.run([*git, "add", "-A"], cwd=target, check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], cwd=target, check=True)
    return target


def small_profile(params_file: Path, source: Path) -> dict:
    params = yaml.safe_load(params_file.read_text())
    params["data"]["source"] = str(source)
    params["data"]["local_copies"] = []
    params["validate"]["min_per_class"] = {"train": 10, "test": 10}
    params["model"].update(name="baseline", input_size=48)
    params["train"].update(epochs=2, batch_size=32, max_minutes=0)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the copy's own SQLite store
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, (
        f"{' '.join(cmd)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    )
    return done


@pytest.mark.slow
def test_dvc_repro_through_evaluate_and_export(subset_zip: Path, tmp_path: Path) -> None:
    repo = project_copy(tmp_path / "repo")
    params = small_profile(repo / "params.yaml", subset_zip)

    run(["dvc", "repro", "export"], repo)

    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(PIPELINE_STAGES) <= set(lock["stages"])
    assert lock["stages"]["train"]["params"]["params.yaml"]["train"]["epochs"] == 2

    metrics = json.loads((repo / "reports/metrics.json").read_text())
    for split in ("val", "test"):
        assert 0.0 <= metrics[split]["accuracy"] <= 1.0
        assert 0.0 <= metrics[split]["balanced_accuracy"] <= 1.0
    assert metrics["test"]["n"] == 8 * 40  # 40 real faces per class in the subset's test split
    assert (repo / "reports/figures/confusion_test.png").stat().st_size > 10_000
    assert len((repo / "reports/confusion_test.csv").read_text().splitlines()) == 8 * 40 + 1

    # One MLflow run per stage in the copy's SQLite store, with its params and metrics.
    db = sqlite3.connect(repo / "mlflow.db")
    runs = dict(
        db.execute(
            "SELECT r.run_uuid, t.value FROM runs r JOIN tags t ON "
            "t.run_uuid = r.run_uuid AND t.key = 'stage'"
        ).fetchall()
    )
    stages = sorted(runs.values())
    assert stages == sorted(PIPELINE_STAGES), stages
    by_stage = {stage: run_id for run_id, stage in runs.items()}

    def param(stage: str, key: str) -> str:
        row = db.execute(
            "SELECT value FROM params WHERE run_uuid=? AND key=?", (by_stage[stage], key)
        ).fetchone()
        return row[0] if row else None

    def metric(stage: str, key: str) -> float | None:
        row = db.execute(
            "SELECT value FROM latest_metrics WHERE run_uuid=? AND key=?", (by_stage[stage], key)
        ).fetchone()
        return row[0] if row else None

    assert param("train", "train.epochs") == "2"
    assert param("train", "model.name") == "baseline"
    assert param("download", "data.source") == str(subset_zip)
    assert metric("evaluate", "test_accuracy") == pytest.approx(metrics["test"]["accuracy"])
    assert metric("train", "val_accuracy") is not None
    # The exported ONNX model is logged and registered in the model registry.
    versions = db.execute("SELECT name, version FROM model_versions").fetchall()
    assert ("ferlab-expression", 1) in versions, versions
    commit_tags = db.execute("SELECT DISTINCT value FROM tags WHERE key='git_commit'").fetchall()
    assert len(commit_tags) == 1 and len(commit_tags[0][0]) == 40

    # Nothing changed, nothing reruns: the pipeline is reproducible as recorded.
    status = run(["dvc", "status", "export"], repo)
    assert "up to date" in status.stdout.lower() or status.stdout.strip() == "", status.stdout
    assert params["model"]["name"] == "baseline"
