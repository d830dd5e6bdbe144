"""A committed small-profile baseline run, shared by the retraining and sweep tests.

Built once per test session (the real `dvc repro` takes a minute or two on two cores), then
copied whole (git history, DVC cache, MLflow store) for each test that changes it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_pipeline_e2e import project_copy, run, small_profile

# The smallest profile that still runs the real pipeline, passed to the scripts as -S
# overrides on top of their small profile: 20 faces per class and split, one epoch of a narrow
# baseline study model (its options live under model.baseline) and one of the fast model.
TEST_PROFILE = (
    "split.max_per_class=20",
    "train.epochs=1",
    "model.baseline.width=0.25",
    "fast.train.epochs=1",
)

_baselines: dict[str, Path] = {}


def run_script(repo: Path, name: str, *args: str) -> subprocess.CompletedProcess:
    """Run `scripts/<name>` in `repo` with the venv's tools (dvc, ferlab) on PATH and the
    repo's own MLflow store, as a user of a fresh clone would; the result, unchecked."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("GITHUB_BASE_REF", None)  # on CI pull requests it would change retrain.sh's base
    return subprocess.run(
        ["bash", f"scripts/{name}", *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )


def set_args(overrides: tuple[str, ...] | list[str]) -> list[str]:
    """["a=1", "b=2"] -> ["-S", "a=1", "-S", "b=2"]."""
    return [arg for item in overrides for arg in ("-S", item)]


def git(repo: Path, *args: str) -> str:
    """Run git in `repo` with a fixed identity; its stdout."""
    identity = ["-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    done = subprocess.run(
        ["git", *identity, *args], cwd=repo, capture_output=True, text=True, check=True
    )
    return done.stdout


def small_baseline(source_zip: Path, votes_csv: Path, factory: pytest.TempPathFactory) -> Path:
    """A repo copy whose branch `main` holds a committed small-profile run of the pipeline.

    The run is the retraining script's own (`scripts/retrain.sh --profile small`), so params.yaml
    at `main` already carries TEST_PROFILE's values, as a base branch that ran the profile would.
    `votes_csv` (the shared FER+ votes) feeds the reference protocols of the evaluate stage.
    """
    key = f"{source_zip}|{votes_csv}"
    if key not in _baselines:
        repo = project_copy(factory.mktemp("baseline") / "repo")
        small_profile(repo / "params.yaml", source_zip, votes_csv)
        # The CI report is a by-product of each run, never part of the baseline commit.
        with (repo / ".git/info/exclude").open("a") as f:
            f.write("/reports/ci_*\n")
        git(repo, "commit", "-qam", "small data source")
        retrain = ["bash", "scripts/retrain.sh", "--base", "HEAD", *set_args(TEST_PROFILE)]
        run(retrain, repo)
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "baseline run")
        git(repo, "branch", "-M", "main")
        _baselines[key] = repo
    return _baselines[key]


def clone_baseline(baseline: Path, target: Path) -> Path:
    """A full copy of the baseline repo (so a test's runs leave the shared one untouched)."""
    shutil.copytree(baseline, target, symlinks=True)
    return target
