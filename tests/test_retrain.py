"""scripts/retrain.sh: the real small-profile retraining and its Markdown report."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from pipeline_helpers import TEST_PROFILE, clone_baseline, git, run_script, set_args, small_baseline

ROOT = Path(__file__).resolve().parents[1]


def script(repo: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the repo's retraining script; the result, unchecked."""
    return run_script(repo, "retrain.sh", *args)


def table_rows(markdown: str) -> list[list[str]]:
    """The cells of every Markdown table row (header and separator rows included)."""
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in markdown.splitlines()
        if line.startswith("|")
    ]


def set_param(params_file: Path, group: str, key: str, value: object) -> None:
    params = yaml.safe_load(params_file.read_text())
    params[group][key] = value
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture
def repo(
    subset_zip: Path,
    shared_data: Path,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
) -> Path:
    """A copy of the committed baseline on a new branch `change`, as a pull request has it."""
    baseline = small_baseline(subset_zip, shared_data / "ferplus_votes.csv", tmp_path_factory)
    repo = clone_baseline(baseline, tmp_path / "repo")
    git(repo, "checkout", "-qb", "change")
    return repo


@pytest.mark.slow
def test_changed_param_is_retrained_and_reported_against_base(repo: Path) -> None:
    before = json.loads((repo / "reports/metrics.json").read_text())
    old_lr = yaml.safe_load((repo / "params.yaml").read_text())["train"]["lr"]
    new_lr = 0.03 if old_lr != 0.03 else 0.003
    set_param(repo / "params.yaml", "train", "lr", new_lr)
    git(repo, "commit", "-qam", "change the learning rate")

    done = script(repo, "--profile", "small", "--base", "main", *set_args(TEST_PROFILE))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # The pipeline really reran with the new value (dvc.lock keeps dotted params flat).
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert lock["stages"]["train"]["params"]["params.yaml"]["train.lr"] == new_lr
    after = json.loads((repo / "reports/metrics.json").read_text())
    # The study model's test NLL: a number any change of its weights moves.
    assert after["study"]["calibration"]["nll"] != before["study"]["calibration"]["nll"]

    report = (repo / "reports/ci_report.md").read_text()
    rows = table_rows(report)
    # Params diff: the changed key with its old and new value; the profile's overrides have
    # the same values at both revisions (later -S win), so they are not listed.
    assert ["params.yaml", "train.lr", str(old_lr), str(new_lr)] in rows, report
    changed = {row[1] for row in rows if row[0] == "params.yaml"}
    assert changed == {"train.lr"}, report
    # Metrics diff: the base's committed numbers next to this run's.
    header = next(row for row in rows if row[:2] == ["Path", "Metric"])
    assert header[2:4] == ["main", "workspace"]
    # (It flattens metrics.json's nested entries with dots: `study.calibration.nll`.)
    nll = next(row for row in rows if row[:2] == ["reports/metrics.json", "study.calibration.nll"])
    assert float(nll[2]) == pytest.approx(before["study"]["calibration"]["nll"], abs=1e-4)
    assert float(nll[3]) == pytest.approx(after["study"]["calibration"]["nll"], abs=1e-4)
    # Confusion-matrix plot diff: an HTML page and the two revisions' images, linked.
    assert "(ci_plots/index.html)" in report
    assert (repo / "reports/ci_plots/index.html").is_file()
    images = sorted(p.name for p in (repo / "reports/ci_plots/static").glob("*.png"))
    assert len(images) == 2 and any(n.startswith("main") for n in images), images
    # Both are the study model's test confusion figure (reports/figures/evaluation/).
    assert all(n.endswith("study_confusion_test.png") for n in images), images
    assert all(f"(ci_plots/static/{name})" in report for name in images)
    # The effective overrides are stated: the profile's, with the later -S values winning.
    overrides = next(line for line in report.splitlines() if line.startswith("- overrides:"))
    assert "`model.name=baseline`" in overrides and "`split.max_per_class=20`" in overrides
    assert "`model.baseline.width=0.25`" in overrides and "`fast.train.epochs=1`" in overrides
    assert "split.max_per_class=200" not in overrides and "fast.train.epochs=3" not in overrides


@pytest.mark.slow
def test_failed_retrain_still_writes_a_report_and_fails(repo: Path) -> None:
    done = script(repo, "--base", "main", *set_args(TEST_PROFILE), "-S", "model.name=no_such_model")
    assert done.returncode != 0
    report = (repo / "reports/ci_report.md").read_text()
    assert "### Retraining failed" in report
    assert "no_such_model" in report  # the failing stage's message, and the params diff
    assert ["params.yaml", "model.name", "baseline", "no_such_model"] in table_rows(report)
    assert (repo / "reports/ci_retrain.log").stat().st_size > 0


def test_unknown_base_ref_stops_before_running(tmp_path: Path) -> None:
    # In a fresh one-commit repo holding only the scripts: nothing there for dvc to run.
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "scripts")
    git(tmp_path, "commit", "-qm", "scripts")
    done = script(tmp_path, "--base", "no-such-ref-0f3a", "--report", str(tmp_path / "r.md"))
    assert done.returncode == 2
    assert "base ref 'no-such-ref-0f3a'" in done.stderr and "fetch-depth: 0" in done.stderr
    assert not (tmp_path / "r.md").exists()


def test_bad_options_are_refused(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    bad_profile = script(tmp_path, "--profile", "huge", "--report", str(tmp_path / "r.md"))
    assert bad_profile.returncode == 2 and "'small' or 'full'" in bad_profile.stderr
    bad_override = script(tmp_path, "-S", "train.lr", "--report", str(tmp_path / "r.md"))
    assert bad_override.returncode == 2 and "group.key=value" in bad_override.stderr
    assert not (tmp_path / "r.md").exists()


def test_small_profile_is_the_readmes() -> None:
    shown = script(ROOT, "--show-profile")
    assert shown.returncode == 0
    overrides = shown.stdout.split()
    assert "model.name=baseline" in overrides
    # The fast model is trained (and evaluated) in the small profile too: kept short.
    assert any(item.startswith("fast.train.epochs=") for item in overrides), overrides
    # Every override names an existing key of params.yaml (a renamed key would break CI).
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for item in overrides:
        node = params
        for part in item.partition("=")[0].split("."):
            assert isinstance(node, dict) and part in node, item
            node = node[part]
