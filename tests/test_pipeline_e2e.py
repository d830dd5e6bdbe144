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

from ferlab.checkpoint import load_model
from ferlab.io import file_sha256

ROOT = Path(__file__).resolve().parents[1]

PIPELINE_STAGES = (
    "download",
    "validate",
    "split",
    "preprocess",
    "train",
    "train_fast",
    "train_fast_second",
    "evaluate",
    "export",
)
# The models the evaluate stage scores and the export stage exports (params evaluate.models).
MODELS = ("study", "fast", "fast_pair")


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


def small_profile(params_file: Path, source: Path, votes_csv: Path) -> dict:
    """The e2e profile: the FER2013+ subset `source`, the shared FER+ votes (the reference
    protocols need them), a baseline study model trained 2 epochs, the fast model 1 epoch."""
    params = yaml.safe_load(params_file.read_text())
    params["data"]["source"] = str(source)
    params["data"]["local_copies"] = []
    params["data"]["votes"] = str(votes_csv)
    params["validate"]["min_per_class"] = {"train": 10, "test": 10}
    # The baseline's options are params.yaml's `model.baseline` (each model takes its own).
    params["model"].update(name="baseline", input_size=48)
    params["train"].update(epochs=2, batch_size=32, max_minutes=0, compile=False)
    params["fast"]["train"].update(epochs=1, batch_size=32)
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


def bundled_status(repo: Path) -> str:
    """`git status --porcelain` of the bundled model's folder: empty when nothing touched it."""
    done = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all", "--", "src/ferlab/bundled"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


@pytest.mark.slow
def test_dvc_repro_through_evaluate_and_export(
    subset_zip: Path, shared_data: Path, tmp_path: Path
) -> None:
    repo = project_copy(tmp_path / "repo")
    params = small_profile(repo / "params.yaml", subset_zip, shared_data / "ferplus_votes.csv")
    bundled_before = {
        p.name: p.read_bytes() for p in (repo / "src/ferlab/bundled").iterdir() if p.is_file()
    }
    assert "model.onnx" in bundled_before

    run(["dvc", "repro", "export"], repo)

    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(PIPELINE_STAGES) <= set(lock["stages"])
    # dvc.lock records a dotted param (`train.epochs`) flat and a whole group (`model`) nested.
    train_params = lock["stages"]["train"]["params"]["params.yaml"]
    assert train_params["train.epochs"] == 2
    assert train_params["model"]["name"] == "baseline"
    fast_params = lock["stages"]["train_fast"]["params"]["params.yaml"]
    assert fast_params["fast"]["train"]["epochs"] == 1
    assert json.loads((repo / "reports/train.json").read_text())["epochs_run"] == 2
    # The study model learnt from the live models (params.yaml's train.teachers), scoring every
    # augmented batch (train.teacher_mode: online), and its checkpoint names the very files it
    # learnt from.
    _, study_meta = load_model(repo / "models/model.pt")
    teachers = params["train"]["teachers"]
    assert params["train"]["teacher_mode"] == "online"
    assert teachers and study_meta["targets"] == "votes + online teachers"
    assert study_meta["teacher_mode"] == "online"
    assert study_meta["teachers"] == teachers
    assert study_meta["teacher_sha256"] == [file_sha256(repo / t) for t in teachers]
    assert json.loads((repo / "reports/fast/train.json").read_text())["epochs_run"] == 1
    assert (repo / "reports/fast/figures/training_curves.png").stat().st_size > 0

    # reports/metrics.json: one entry per model of evaluate.models.
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert set(metrics) == set(MODELS), sorted(metrics)
    assert metrics["study"]["model"] == "baseline"
    assert metrics["fast"]["model"] == params["fast"]["model"]
    # The live model's second seed: the same recipe, other weights; the pair is their mean.
    second = lock["stages"]["train_fast_second"]["params"]["params.yaml"]
    assert second["fast_second.seed"] == params["fast_second"]["seed"] != params["seed"]
    assert (repo / "models/fast_second.pt").read_bytes() != (repo / "models/fast.pt").read_bytes()
    assert metrics["fast_pair"]["model"] == f"mean of 2× {params['fast']['model']}"
    for name in MODELS:
        entry = metrics[name]
        for split in ("val", "test"):
            assert 0.0 <= entry[split]["accuracy"] <= 1.0
            assert 0.0 <= entry[split]["balanced_accuracy"] <= 1.0
        assert entry["test"]["n"] == 8 * 40  # 40 real faces per class in the subset's test split
        # The FER+ reference protocol (data.votes) and the clean test were scored.
        for protocol in ("reference_private", "clean_test"):
            assert 0 < entry[protocol]["n"] <= 8 * 40, (name, protocol)
            assert 0.0 <= entry[protocol]["accuracy"] <= 1.0, (name, protocol)
        assert entry["calibration"]["temperature"] > 0
        assert (repo / f"reports/evaluation/{name}.json").is_file()
        figure = repo / f"reports/figures/evaluation/{name}_confusion_test.png"
        assert figure.stat().st_size > 10_000, figure
    assert len((repo / "reports/confusion_test.csv").read_text().splitlines()) == 8 * 40 + 1

    # The export stage: fp32 and int8 ONNX of every evaluated model, and its report.
    export = json.loads((repo / "reports/export.json").read_text())
    assert set(export) == set(MODELS), sorted(export)
    for name in MODELS:
        for precision, suffix in (("fp32", ".onnx"), ("int8", ".int8.onnx")):
            onnx_file = repo / "models/onnx" / f"{name}{suffix}"
            assert onnx_file.stat().st_size > 0, onnx_file
            assert export[name]["files"][precision] == f"models/onnx/{name}{suffix}"
            assert export[name]["ms_per_face_1_thread"][precision] > 0
            assert len(export[name]["sha256"][precision]) == 64
    # ... and it leaves the committed bundled model alone.
    assert bundled_status(repo) == "", bundled_status(repo)

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
    assert param("train_fast", "fast.train.epochs") == "1"
    assert param("download", "data.source") == str(subset_zip)
    # Evaluate logs metrics.json's entries under their dotted names.
    for name in MODELS:
        for key in ("test.accuracy", "reference_private.accuracy", "calibration.nll"):
            value = metric("evaluate", f"{name}.{key}")
            expected = metrics[name]
            for part in key.split("."):
                expected = expected[part]
            assert value == pytest.approx(expected), f"{name}.{key}"
    assert metric("evaluate", "test_accuracy") is None  # the old flat name is gone
    assert metric("train", "val_accuracy") is not None
    assert metric("train_fast", "val_accuracy") is not None
    # Each exported fp32 ONNX model is logged and registered in the model registry.
    versions = sorted(db.execute("SELECT name, version FROM model_versions").fetchall())
    assert versions == [("ferlab-expression", i + 1) for i in range(len(MODELS))], versions
    commit_tags = db.execute("SELECT DISTINCT value FROM tags WHERE key='git_commit'").fetchall()
    assert len(commit_tags) == 1 and len(commit_tags[0][0]) == 40

    # Nothing changed, nothing reruns: the pipeline is reproducible as recorded.
    status = run(["dvc", "status", "export"], repo)
    assert "up to date" in status.stdout.lower() or status.stdout.strip() == "", status.stdout
    assert params["model"]["name"] == "baseline"

    # `ferlab bundle` refuses this run's models: a 2-epoch model on 40 faces a class is near
    # chance. --max-ms lifts the speed limit, so the chance guard is what refuses.
    from ferlab.evaluation.metrics import near_chance

    counts = json.loads((repo / "reports/split_counts.json").read_text())["counts"]["test"]
    for name in MODELS:
        accuracy = metrics[name]["test"]["accuracy"]
        assert near_chance(accuracy, counts), f"{name}: {accuracy} is not near chance"
    done = subprocess.run(
        [sys.executable, "-m", "ferlab.cli", "bundle", "--max-ms", "1000000"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert "near chance" in errors[0] and "NOT bundled" in errors[0], errors[0]
    assert bundled_status(repo) == "", bundled_status(repo)
    bundled_after = {
        p.name: p.read_bytes() for p in (repo / "src/ferlab/bundled").iterdir() if p.is_file()
    }
    assert bundled_after == bundled_before
