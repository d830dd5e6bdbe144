"""scripts/gpu_study.sh: the 112-px DDAMFN study in one command (smoke-run here on the CPU)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
import torch
from pipeline_helpers import clone_baseline, run_script, small_baseline

ROOT = Path(__file__).resolve().parents[1]


def script(repo: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the repo's GPU study script; the result, unchecked."""
    return run_script(repo, "gpu_study.sh", *args)


@pytest.mark.slow
def test_cpu_smoke_run_trains_scores_and_times_ddamfn_at_112(
    subset_zip: Path,
    shared_data: Path,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
) -> None:
    """The whole script on a committed small-profile repo: data stages up to date, then one
    epoch of DDAMFN at 112 px, scored, exported and timed; a later -S wins over the script's
    recipe (here compile off, minutes of warm-up on a CPU, and width 0.25 instead of the
    paper's 1.0, which would make this smoke run the slowest test of the suite)."""
    baseline = small_baseline(subset_zip, shared_data / "ferplus_votes.csv", tmp_path_factory)
    repo = clone_baseline(baseline, tmp_path / "repo")
    args = ["--device", "cpu", "--epochs", "1", "--name", "smoke", "-S", "train.compile=false"]
    args += ["-S", "model.ddamfn.width=0.25"]
    done = script(repo, *args)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    run = json.loads((repo / "reports/runs/smoke/run.json").read_text())
    assert run["model"] == "ddamfn" and run["input_size"] == 112
    assert run["options"]["width"] == 0.25
    # The params the run trained with, as logged to the copy's MLflow store: the script's
    # recipe, and the caller's -S over it.
    with sqlite3.connect(repo / "mlflow.db") as db:
        logged = dict(
            db.execute(
                "SELECT p.key, p.value FROM params p JOIN runs r ON p.run_uuid = r.run_uuid "
                "WHERE r.name LIKE 'train-run smoke%' AND r.status = 'FINISHED'"
            ).fetchall()
        )
    assert logged["model.input_size"] == "112" and logged["model.ddamfn.width"] == "0.25"
    assert logged["train.batch_size"] == "256" and logged["train.epochs"] == "1"
    assert logged["train.device"] == "cpu" and logged["train.compile"] == "False"
    metrics = json.loads((repo / "reports/runs/smoke/metrics.json").read_text())
    assert 0.0 <= metrics["smoke"]["test"]["accuracy"] <= 1.0
    assert (repo / "models/runs/smoke/model.onnx").stat().st_size > 100_000

    timing = json.loads((repo / "reports/runs/smoke/timing.json").read_text())
    assert timing["device"] == "cpu" and timing["gpus"] == 0 and timing["processes"] == 1
    assert 0 <= timing["data_stages_s"] <= timing["total_s"]
    assert timing["train_evaluate_export_s"] == timing["total_s"] - timing["data_stages_s"]

    # The same name again is refused: an earlier run is never replaced without --force.
    again = script(repo, *args)
    assert again.returncode != 0 and "--force" in again.stderr
    assert json.loads((repo / "reports/runs/smoke/run.json").read_text()) == run


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_cuda_is_refused_before_any_work(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    done = script(tmp_path)
    assert done.returncode == 2
    assert "no CUDA device visible" in done.stderr and "--device cpu" in done.stderr
    assert not (tmp_path / "reports").exists()


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    for args, message in (
        (["--epochs", "0"], "--epochs 0"),
        (["--device", "tpu"], "--device tpu"),
        (["--bogus"], "unknown argument"),
        (["--processes", "0"], "--processes 0"),
        # The process count splits the batch and is recorded, so it has its own option.
        (["-S", "train.processes=2"], "use --processes 2"),
    ):
        done = script(tmp_path, *args)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
