"""The GitHub workflows: valid against GitHub's schema, and wired the way the docs say."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
TESTS = WORKFLOWS / "tests.yml"
RETRAIN = WORKFLOWS / "retrain.yml"
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"
PIPELINE_PATHS = {"params.yaml", "dvc.yaml", "stages/**", "src/**"}


def load(path: Path) -> dict[str, Any]:
    workflow = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the key `on` as True.
    workflow["on"] = workflow.pop(True, workflow.get("on"))
    return workflow


def steps(workflow: dict[str, Any], job: str) -> list[dict[str, Any]]:
    return workflow["jobs"][job]["steps"]


def step_using(workflow: dict[str, Any], job: str, action: str) -> dict[str, Any]:
    return next(s for s in steps(workflow, job) if s.get("uses", "").startswith(action))


def check_schema(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.github-workflows", *map(str, paths)],
        capture_output=True,
        text=True,
    )


def test_workflows_match_githubs_schema() -> None:
    done = check_schema(TESTS, RETRAIN)
    assert done.returncode == 0, done.stdout + done.stderr


def test_schema_check_catches_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "retrain.yml"
    text = RETRAIN.read_text()
    assert "    runs-on: ${{ fromJSON(" in text
    broken.write_text(text.replace("    runs-on: ${{ fromJSON(", "    run-on: ${{ fromJSON("))
    done = check_schema(broken)
    assert done.returncode != 0
    assert "run-on" in done.stdout + done.stderr


def test_tests_workflow_runs_make_test_on_python_311() -> None:
    workflow = load(TESTS)
    assert {"push", "pull_request"} <= set(workflow["on"])
    python = step_using(workflow, "test", "actions/setup-python@")["with"]
    assert str(python["python-version"]) == "3.11"
    assert python["cache"] == "pip" and python["cache-dependency-path"] == "pyproject.toml"
    assert any(s.get("run", "").strip() == "make test" for s in steps(workflow, "test"))
    # The Makefile's torch install picks the CPU wheel from this index.
    assert "whl/cpu" in workflow["jobs"]["test"]["env"]["PIP_EXTRA_INDEX_URL"]
    # The real-data tests run only when a secret provides the data, which the step unpacks.
    data = next(s for s in steps(workflow, "test") if "FERLAB_SHARED_DATA" in s.get("run", ""))
    assert data["if"] == "env.FERLAB_DATA_URL != ''"
    assert workflow["jobs"]["test"]["env"]["FERLAB_DATA_URL"] == "${{ secrets.FERLAB_DATA_URL }}"


def test_retrain_triggers_on_pipeline_changes_and_by_hand() -> None:
    on = load(RETRAIN)["on"]
    assert set(on["push"]["paths"]) == PIPELINE_PATHS
    assert set(on["pull_request"]["paths"]) == PIPELINE_PATHS
    assert on["push"]["branches"] == ["main"]
    assert "labeled" in on["pull_request"]["types"]  # adding `full-retrain` starts a full run
    profile = on["workflow_dispatch"]["inputs"]["profile"]
    assert profile["type"] == "choice" and profile["options"] == ["small", "full"]
    assert profile["default"] == "small"


def test_path_filters_match_files_of_the_repo() -> None:
    """A renamed folder would silently stop the retraining: every filter must match a file."""
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for pattern in PIPELINE_PATHS:
        assert any(fnmatch.fnmatch(name, pattern) for name in tracked), pattern


def run_plan(tmp_path: Path, **env: str) -> tuple[str, Any]:
    """Run the plan job's shell step as GitHub would; (profile, runs-on) it outputs."""
    script = next(s for s in steps(load(RETRAIN), "plan") if s.get("id") == "pick")["run"]
    output = tmp_path / "github_output"
    output.write_text("")
    values = {"INPUT_PROFILE": "", "FULL_LABEL": "false", **env}
    subprocess.run(
        ["bash", "-e", "-c", script],
        env={**os.environ, **values, "GITHUB_OUTPUT": str(output)},
        check=True,
        capture_output=True,
    )
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines())
    return outputs["profile"], json.loads(outputs["runner"])


@pytest.mark.parametrize(
    ("env", "profile", "runner"),
    [
        ({}, "small", "ubuntu-latest"),
        ({"INPUT_PROFILE": "small"}, "small", "ubuntu-latest"),
        ({"INPUT_PROFILE": "full"}, "full", ["self-hosted", "gpu"]),
        ({"FULL_LABEL": "true"}, "full", ["self-hosted", "gpu"]),
    ],
)
def test_full_profile_runs_on_the_gpu_runner(
    tmp_path: Path, env: dict[str, str], profile: str, runner: Any
) -> None:
    assert run_plan(tmp_path, **env) == (profile, runner)


def test_retrain_job_follows_the_plan_and_runs_the_script() -> None:
    workflow = load(RETRAIN)
    job = workflow["jobs"]["retrain"]
    assert job["runs-on"] == "${{ fromJSON(needs.plan.outputs.runner) }}"
    assert job["env"]["PROFILE"] == "${{ needs.plan.outputs.profile }}"
    pick = next(s for s in steps(workflow, "plan") if s.get("id") == "pick")
    label = "contains(github.event.pull_request.labels.*.name, 'full-retrain')"
    assert pick["env"]["FULL_LABEL"] == "${{ " + label + " }}"
    assert pick["env"]["INPUT_PROFILE"] == "${{ inputs.profile }}"
    # The diffs need the base ref's history.
    assert step_using(workflow, "retrain", "actions/checkout@")["with"]["fetch-depth"] == 0
    retrain = next(s for s in job["steps"] if "scripts/retrain.sh" in s.get("run", ""))
    command = retrain["run"]
    assert '--profile "$PROFILE"' in command and "--report reports/ci_report.md" in command
    assert os.access(ROOT / "scripts/retrain.sh", os.X_OK)  # called as a program
    # The reports folder (report, plots, log) is uploaded even when the run fails.
    upload = step_using(workflow, "retrain", "actions/upload-artifact@")
    assert upload["with"]["path"] == "reports/" and upload["if"] == "always()"
    # The report is posted to the pull request.
    comment = next(s for s in job["steps"] if "gh pr comment" in s.get("run", ""))
    assert "github.event_name == 'pull_request'" in comment["if"]
    assert "cat reports/ci_report.md" in comment["run"] and "--body-file" in comment["run"]
    assert comment["env"]["GH_TOKEN"] == "${{ github.token }}"
    assert workflow["permissions"]["pull-requests"] == "write"


def test_credentials_come_from_secrets_only() -> None:
    secret_like = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|USERNAME|REMOTE_URL|DATA_URL")
    seen: dict[str, str] = {}
    for path in (TESTS, RETRAIN):
        workflow = load(path)
        envs = [workflow.get("env", {})]
        for job in workflow["jobs"].values():
            envs.append(job.get("env", {}))
            envs += [s.get("env", {}) for s in job["steps"]]
        for env in envs:
            for name, value in env.items():
                if secret_like.search(name):
                    assert re.fullmatch(r"\$\{\{ (secrets\.\w+|github\.token) \}\}", value), (
                        f"{path.name}: {name} must come from a secret, not {value!r}"
                    )
                    seen[name] = value
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "DVC_REMOTE_URL"):
        assert seen[name] == "${{ secrets." + name + " }}"
    # The remote's address is added to the untracked local config, never the committed one.
    script = (ROOT / "scripts/retrain.sh").read_text()
    assert 'dvc remote add --local --force --default ci "$DVC_REMOTE_URL"' in script
