"""The validate stage: manifest, great-expectations suites from JSON, reports, failure behaviour."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from ferlab.classes import CLASS_TO_INDEX, CLASSES
from ferlab.data import DataError
from ferlab.data.download import prepare_raw
from ferlab.data.manifest import MANIFEST_COLUMNS, read_manifest
from ferlab.data.validation import EXPECTATIONS_DIR, failure_message, validate_raw

ROOT = Path(__file__).resolve().parents[1]


def subset_params() -> dict:
    """The project's validate params with count bounds that suit 40 images per class."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    vparams = copy.deepcopy(params["validate"])
    vparams["min_per_class"] = {"train": 20, "test": 20}
    return vparams


@pytest.fixture
def project(tmp_path: Path, subset_zip: Path) -> Path:
    """A project folder whose data/raw holds the real 40-per-class subset, and dvc.yaml."""
    prepare_raw(str(subset_zip), target=tmp_path / "data/raw")
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")  # which params the stage logs
    return tmp_path


def run(project: Path, vparams: dict | None = None, **kwargs: object) -> dict:
    return validate_raw(
        vparams or subset_params(),
        raw=project / "data/raw",
        reports=project / "reports",
        manifest_path=project / "data/manifest.csv",
        base=project,
        **kwargs,
    )


def failed(report: dict, notes_start: str) -> dict:
    matches = [f for f in report["failed"] if f["notes"].startswith(notes_start)]
    assert matches, (
        f"no failed expectation {notes_start!r} in {[f['notes'] for f in report['failed']]}"
    )
    return matches[0]


def test_real_subset_passes_and_writes_the_manifest(project: Path) -> None:
    report = run(project)
    assert report["success"], report["failed"]
    assert report["expectations"]["failed"] == 0 and report["expectations"]["evaluated"] >= 14
    assert report["counts"]["train"] == dict.fromkeys(CLASSES, 40)
    assert report["totals"] == {"train": 320, "test": 320}

    manifest = read_manifest(project / "data/manifest.csv")
    assert tuple(manifest.columns) == MANIFEST_COLUMNS
    assert len(manifest) == 640
    row = manifest.iloc[0]
    assert row["path"].startswith("data/raw/test/anger/fer") and row["path"].endswith(".png")
    assert (project / row["path"]).is_file()
    assert (manifest["label_idx"] == manifest["label"].map(CLASS_TO_INDEX)).all()
    assert manifest["phash"].str.fullmatch(r"[0-9a-f]{16}").all()
    assert manifest["sha256"].str.fullmatch(r"[0-9a-f]{64}").all()
    assert (manifest[["width", "height"]] == 48).all().all() and (manifest["mode"] == "L").all()
    assert (manifest["subject_id"] == "").all() and not manifest["drop"].any()

    assert "# Data validation: PASSED" in (project / "reports/validation.md").read_text()
    leakage = json.loads((project / "reports/leakage.json").read_text())
    assert leakage["policy"] == "report" and "train_test" in leakage["exact"]
    assert cv2.imread(str(project / "reports/figures/leakage_examples.png")) is not None


def test_synthetic_layout_passes_without_the_real_data(tmp_path: Path) -> None:
    """Runs everywhere (no FERLAB_SHARED_DATA): 8 classes of real PNG files, noise content."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in CLASSES:
            folder = tmp_path / "data/raw" / split / label
            folder.mkdir(parents=True)
            for k in range(20):
                image = rng.integers(0, 256, (48, 48), dtype=np.uint8)
                cv2.imwrite(str(folder / f"{label}{k:02d}.png"), image)
    report = run(tmp_path)
    assert report["success"], report["failed"]
    assert report["leakage"]["exact_train_test_pairs"] == 0
    assert len(read_manifest(tmp_path / "data/manifest.csv")) == 320


def test_missing_class_fails_with_a_readable_report_and_no_manifest(project: Path) -> None:
    shutil.rmtree(project / "data/raw/test/contempt")
    (project / "data/manifest.csv").write_text("stale manifest from an earlier run\n")
    report = run(project)
    assert not report["success"]
    assert not (project / "data/manifest.csv").exists()

    classes = failed(report, "The test split has exactly the 8 classes")
    assert classes["missing_values"] == ["contempt"]
    counts = failed(report, "Every class of the test split")
    assert {"split": "test", "label": "contempt", "count": 0} in counts["failing_rows"]

    saved = json.loads((project / "reports/validation.json").read_text())
    assert saved["success"] is False and saved["counts"]["test"]["contempt"] == 0
    md = (project / "reports/validation.md").read_text()
    assert "# Data validation: FAILED" in md
    assert 'missing: ["contempt"]' in md and "fix: A class folder is missing" in md
    assert "| contempt | 40 | 0 |" in md
    message = failure_message(report, "reports/validation.md")
    assert "missing contempt" in message and message.endswith("see reports/validation.md")


def test_corrupt_png_is_named(project: Path) -> None:
    victim = sorted((project / "data/raw/train/fear").glob("*.png"))[3]
    victim.write_bytes(victim.read_bytes()[:60])  # truncated mid-stream
    report = run(project)
    assert not report["success"]
    decode = failed(report, "Every image decodes")
    rel = victim.relative_to(project).as_posix()
    assert decode["unexpected_count"] == 1 and decode["failing_rows"][0]["path"] == rel
    assert rel in failure_message(report, "reports/validation.md")
    assert rel in (project / "reports/validation.md").read_text()


def test_wrong_size_and_colour_image_is_named(project: Path) -> None:
    victim = sorted((project / "data/raw/test/happiness").glob("*.png"))[0]
    colour = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    cv2.imwrite(str(victim), colour)
    report = run(project)
    rel = victim.relative_to(project).as_posix()
    for notes in ("Every image is validate.image_size pixels wide", "Every image has the mode"):
        item = failed(report, notes)
        assert item["unexpected_count"] == 1 and item["failing_rows"][0]["path"] == rel
    assert failed(report, "Every image has the mode")["unexpected_values"] == ["RGB"]


def test_unknown_class_folder_fails(project: Path) -> None:
    (project / "data/raw/train/confused").mkdir()
    face = next((project / "data/raw/train/anger").glob("*.png"))
    shutil.copyfile(face, project / "data/raw/train/confused/x.png")
    report = run(project)
    assert failed(report, "Every class folder is one of the 8")["unexpected_values"] == ["confused"]
    assert "confused" in failed(report, "The train split has exactly")["unexpected_values"]


def test_count_bounds_come_from_params(project: Path) -> None:
    vparams = subset_params()
    vparams["max_per_class"]["train"] = 39
    report = run(project, vparams)
    item = failed(report, "Every class of the train split")
    assert item["expected"] == {"min_value": 20, "max_value": 39}
    assert item["unexpected_count"] == 8
    assert "train 20–39" in (project / "reports/validation.md").read_text()


def test_leakage_policy_fail_stops_and_drop_marks(project: Path) -> None:
    test_face = sorted((project / "data/raw/test/sadness").glob("*.png"))[0]
    leaked = project / "data/raw/train/sadness/leaked.png"
    shutil.copyfile(test_face, leaked)
    vparams = subset_params()

    vparams["leakage"]["policy"] = "fail"
    report = run(project, vparams)
    item = failed(report, "Train images that copy a test image")
    assert {"test_duplicate": True, "path": "data/raw/train/sadness/leaked.png"} in item[
        "failing_rows"
    ]
    assert not (project / "data/manifest.csv").exists()

    vparams["leakage"]["policy"] = "drop"
    report = run(project, vparams)
    assert report["success"]
    manifest = read_manifest(project / "data/manifest.csv")
    assert "data/raw/train/sadness/leaked.png" in set(manifest.loc[manifest["drop"], "path"])
    assert manifest.loc[manifest["drop"], "split"].eq("train").all()
    assert report["leakage"]["dropped_train_images"] == int(manifest["drop"].sum()) >= 1


def test_suite_with_an_unknown_parameter_is_named(project: Path, tmp_path: Path) -> None:
    suites = tmp_path / "suites"
    shutil.copytree(EXPECTATIONS_DIR, suites)
    spec = json.loads((suites / "images.json").read_text())
    spec["expectations"][7]["kwargs"]["min_value"] = {"$PARAMETER": "image_sise"}
    (suites / "images.json").write_text(json.dumps(spec))
    with pytest.raises(DataError, match=r"images\.json: unknown \$PARAMETER image_sise"):
        run(project, suites_dir=suites)


def test_suites_are_documented_for_editing() -> None:
    for path in EXPECTATIONS_DIR.glob("*.json"):
        spec = json.loads(path.read_text())
        assert "$PARAMETER" in " ".join(spec["meta"]["notes"]), path
        for expectation in spec["expectations"]:
            assert expectation["notes"] and expectation["meta"]["fix"], (path, expectation)


def test_validate_stage_script_fails_with_one_message(project: Path) -> None:
    """The real stage script: exit 1, one line naming the report, reports kept, run FAILED."""
    shutil.rmtree(project / "data/raw/train/disgust")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["validate"] = subset_params()
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    db = f"sqlite:///{project / 'mlflow.db'}"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "stages/validate.py")],
        cwd=project,
        env={**os.environ, "MLFLOW_TRACKING_URI": db},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("validate failed: data validation failed")
    assert "missing disgust" in last and last.endswith("see reports/validation.md")
    assert not (project / "data/manifest.csv").exists()
    assert (project / "reports/validation.md").is_file()

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=db)
    (run_info,) = client.search_runs(
        [client.get_experiment_by_name(params["mlflow"]["experiment"]).experiment_id]
    )
    assert run_info.info.status == "FAILED"
    assert run_info.data.metrics["validation_success"] == 0
    assert run_info.data.metrics["count_train_disgust"] == 0
    assert run_info.data.params["validate.leakage.policy"] == "report"
