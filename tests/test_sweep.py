"""scripts/sweep.sh: a queued grid of real DVC experiments, each one logged to MLflow."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pipeline_helpers import TEST_PROFILE, clone_baseline, git, set_args, small_baseline
from test_pipeline_e2e import run

ROOT = Path(__file__).resolve().parents[1]


def sweep(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """The scripts alone in an empty folder: a bad argument must stop them before any dvc call."""
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts", dirs_exist_ok=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        ["bash", "scripts/sweep.sh", *args], cwd=tmp_path, env=env, capture_output=True, text=True
    )


@pytest.mark.slow
def test_queued_two_by_one_sweep_gives_two_experiments_and_mlflow_runs(
    subset_zip: Path,
    shared_data: Path,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
) -> None:
    baseline_repo = small_baseline(subset_zip, shared_data / "ferplus_votes.csv", tmp_path_factory)
    repo = clone_baseline(baseline_repo, tmp_path / "repo")
    train = yaml.safe_load((repo / "params.yaml").read_text())["train"]
    # Values the baseline did not run: DVC restores a stage it has already run with the same
    # code, data and params from its run-cache, and a restored stage logs no new MLflow run.
    # A 2×1 grid: two axes (their product is what the script queues), two experiments, so
    # the CI minutes stay small.
    lrs = [lr for lr in (0.03, 0.003, 0.0003) if lr != train["lr"]][:2]
    batches = [b for b in (16, 48, 24) if b != train["batch_size"]][:1]
    axes = [f"train.lr={lrs[0]},{lrs[1]}", f"train.batch_size={batches[0]}"]

    run(["bash", "scripts/sweep.sh", "--profile", "small", *set_args(TEST_PROFILE), *axes], repo)

    # dvc exp show: two finished experiments on the baseline commit, one per grid point.
    head = git(repo, "rev-parse", "HEAD").strip()
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    baseline = next(entry for entry in shown if entry["rev"] == head)
    experiments: dict[str, tuple[float, int]] = {}
    test_accuracy: dict[str, float] = {}
    for exp in baseline["experiments"]:
        data = exp["revs"][0]["data"]
        params = data["params"]["params.yaml"]["data"]
        experiments[exp["name"]] = (params["train"]["lr"], params["train"]["batch_size"])
        metrics = data["metrics"]["reports/metrics.json"]["data"]
        test_accuracy[exp["name"]] = metrics["study"]["test"]["accuracy"]
        assert params["split"]["max_per_class"] == 20  # the profile applied to every one
    assert len(experiments) == 2, experiments
    # Queued experiments run in temporary copies: the committed reports and the bundled model
    # in the workspace are left as they were.
    changed = git(repo, "status", "--porcelain", "--", "reports", "src/ferlab/bundled")
    assert changed.strip() == "", changed
    assert sorted(experiments.values()) == sorted(itertools.product(lrs, batches))

    # MLflow: the queued runs (in .dvc/tmp/exps copies) all landed in the project's store, each
    # train and evaluate run tagged with its experiment's name and carrying its params.
    db = sqlite3.connect(repo / "mlflow.db")
    rows = db.execute(
        "SELECT r.run_uuid, s.value, x.value, r.status FROM runs r "
        "JOIN tags s ON s.run_uuid = r.run_uuid AND s.key = 'stage' "
        "JOIN tags x ON x.run_uuid = r.run_uuid AND x.key = 'dvc_experiment'"
    ).fetchall()
    by_stage: dict[str, dict[str, str]] = {"train": {}, "evaluate": {}}
    for run_id, stage, name, status in rows:
        if name in experiments and stage in by_stage:
            assert name not in by_stage[stage], f"two {stage} runs for {name}"
            assert status == "FINISHED"
            by_stage[stage][name] = run_id
    assert set(by_stage["train"]) == set(experiments)
    assert set(by_stage["evaluate"]) == set(experiments)

    def param(run_id: str, key: str) -> str:
        query = "SELECT value FROM params WHERE run_uuid = ? AND key = ?"
        return db.execute(query, (run_id, key)).fetchone()[0]

    logged = {
        name: (float(param(run_id, "train.lr")), int(param(run_id, "train.batch_size")))
        for name, run_id in by_stage["train"].items()
    }
    assert logged == experiments  # two runs, two distinct (lr, batch size) pairs
    for name, run_id in by_stage["evaluate"].items():
        # The evaluate stage logs metrics.json's entries under their dotted names.
        query = "SELECT value FROM latest_metrics WHERE run_uuid = ? AND key = ?"
        value = db.execute(query, (run_id, "study.test.accuracy")).fetchone()[0]
        assert value == pytest.approx(test_accuracy[name])


def test_default_grid_names_existing_params(tmp_path: Path) -> None:
    from ferlab.models import check_common, model_options
    from ferlab.training.loop import TrainConfig

    shown = sweep(tmp_path, "--show-grid")
    assert shown.returncode == 0
    lines = shown.stdout.split()
    axes = dict(axis.partition("=")[::2] for axis in lines)
    assert len(axes) == len(lines), lines  # one axis per key
    assert set(axes) == {
        "model.ddamfn.heads",
        "model.ddamfn.activation",
        "train.lr",
        "train.batch_size",
        "train.optimizer",
    }
    assert axes["train.optimizer"].split(",") == ["adamw", "sgd"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, values in axes.items():
        # The key exists in params.yaml (a renamed key would make every point a no-op or fail).
        node = params
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, key
            node = node[part]
        choices = [yaml.safe_load(v) for v in values.split(",")]
        assert len(choices) == 2 and choices[0] != choices[1], key
        # Every value is one the stage accepts (DVC parses `-S` values as YAML, as here).
        group, *rest = key.split(".")
        for value in choices:
            if group == "model":
                name, option = rest
                assert option in model_options(name), key
                check_common(name, **{option: value})
            else:
                TrainConfig.from_params({**params["train"], rest[0]: value}, seed=0)


def test_bad_arguments_are_refused_before_queueing(tmp_path: Path) -> None:
    not_an_axis = sweep(tmp_path, "train.lr")
    assert not_an_axis.returncode == 2 and "group.key=v1,v2" in not_an_axis.stderr
    bad_jobs = sweep(tmp_path, "-j", "0", "train.lr=0.1,0.01")
    assert bad_jobs.returncode == 2 and "positive integer" in bad_jobs.stderr
    bad_profile = sweep(tmp_path, "--profile", "tiny", "train.lr=0.1,0.01")
    assert bad_profile.returncode == 2 and "'small' or 'full'" in bad_profile.stderr


def test_data_outside_the_project_is_found_from_a_queued_experiments_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DVC runs queued experiments in <project>/.dvc/tmp/exps/<name>/: params' ../shared/...
    paths must still name the data beside the project, not a folder inside .dvc/tmp."""
    from ferlab.config import data_path

    votes = tmp_path / "shared" / "data" / "ferplus_votes.csv"
    votes.parent.mkdir(parents=True)
    votes.write_text("ferplus_split,image\n")
    project = tmp_path / "project"
    queued = project / ".dvc" / "tmp" / "exps" / "tmpa1b2c3"
    queued.mkdir(parents=True)
    relative = "../shared/data/ferplus_votes.csv"

    monkeypatch.chdir(queued)
    assert data_path(relative).resolve() == votes
    assert data_path(votes) == votes  # absolute paths are kept
    monkeypatch.chdir(project)
    assert data_path(relative) == Path(relative) and data_path(relative).is_file()
    # Outside a queued copy a missing file stays missing (the stage then says so).
    elsewhere = tmp_path / "elsewhere" / "deeper"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    assert not data_path(relative).exists()
