"""MLflow runs as a user compares them: named apart, with the params dvc.yaml declares."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from ferlab import tracking


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    dvc_yaml = {
        "stages": {
            "train": {"cmd": "true", "params": ["seed", "train.lr", "model"]},
            "report": {"cmd": "true"},
        }
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml))
    params = {
        "seed": 3,
        "train": {"lr": 0.01, "epochs": 4},
        "model": {"name": "sepnet", "sepnet": {"width": 0.5}},
        "evaluate": {"batch_size": 8},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("DVC_EXP_NAME", "exp-lr001")
    return params


def test_a_stage_logs_exactly_the_params_dvc_yaml_declares(project: dict) -> None:
    assert tracking.stage_params("train", project) == {
        "seed": 3,
        "train.lr": 0.01,
        "model.name": "sepnet",
        "model.sepnet.width": 0.5,
    }
    assert tracking.stage_params("report", project) == {}


def test_runs_are_named_apart_and_the_experiment_opens_on_runs(project: dict) -> None:
    import mlflow

    with tracking.stage_run("train", project, experiment="ferlab-test") as run:
        tracking.log_metrics({"study.test.accuracy": 0.5, "note": "skipped"})
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    found = client.get_run(run.info.run_id)
    # Not a git checkout: no committed params to compare with, so a short params hash.
    assert found.info.run_name.startswith("train · exp-lr001 · ")
    assert found.data.params == {
        "seed": "3",
        "train.lr": "0.01",
        "model.name": "sepnet",
        "model.sepnet.width": "0.5",
    }
    assert found.data.tags["dvc_experiment"] == "exp-lr001"
    assert found.data.metrics == {"study.test.accuracy": 0.5}
    experiment = client.get_experiment_by_name("ferlab-test")
    assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_a_stage_that_fails_ends_its_run_failed(project: dict) -> None:
    import mlflow

    with pytest.raises(RuntimeError), tracking.stage_run("train", project, "ferlab-test") as run:
        raise RuntimeError("boom")
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    assert client.get_run(run.info.run_id).info.status == "FAILED"


def test_run_names_carry_the_params_that_differ_from_the_commit(project: dict) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True)

    git("init", "-q")
    git("add", "dvc.yaml", "params.yaml")
    git("commit", "-qm", "main")
    assert tracking.changed_params("train", project) == {}
    changed = {**project, "train": {"lr": 0.001, "epochs": 9}}  # epochs: not train's param
    Path("params.yaml").write_text(yaml.safe_dump(changed))
    assert tracking.changed_params("train", changed) == {"train.lr": 0.001}
    assert tracking.run_name("train", {"train.lr": 0.001}) == "train · exp-lr001 · train.lr=0.001"
    long = tracking.run_name("train", {f"k{i}": "x" * 20 for i in range(20)})
    assert len(long) == 240 and long.endswith("…")
