"""The generated study report, and the study stages run for real in a scratch project."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ferlab.classes import CLASSES
from ferlab.evaluation.report import build_report
from ferlab.io import save_npz, write_json

ROOT = Path(__file__).resolve().parents[1]
TINY = {"name": "baseline", "width": 0.25, "dropout": 0.0, "activation": "relu"}


def test_report_renders_with_no_reports_at_all(tmp_path: Path) -> None:
    text = build_report(tmp_path)
    assert text.startswith("# FER2013+ study report")
    assert "81.08%" in text and "82.62%" in text
    for name, stage in [
        ("metrics.json", "evaluate"),
        ("detection.json", "preprocess"),
        ("study_resize.json", "study_resize"),
        ("study_age.json", "study_age"),
        ("leakage.json", "validate"),
    ]:
        assert f"`reports/{name}` is missing; run `dvc repro {stage}`" in text


def test_report_uses_the_reports_that_exist(real_faces, tmp_path: Path) -> None:
    from ferlab.evaluation.evaluate import headline, protocol_metrics
    from ferlab.inference import FaceClassifier

    _, labels = real_faces
    logits = np.log(np.eye(8)[labels] * 0.9 + 0.0125)
    logits[::4] = np.roll(logits[::4], 1, axis=1)  # a quarter wrong: 75% accuracy
    decider = FaceClassifier(
        classes=CLASSES, temperature=1.3, class_prior=np.full(8, 1 / 8), logit_adjust_tau=1.0
    )
    clean = np.arange(len(labels)) % 8 != 0  # 84 of the 96 faces have no copy in train
    protocols = {
        "test": protocol_metrics(decider, logits, labels),
        "clean_test": protocol_metrics(decider, logits[clean], labels[clean]),
        "reference_private": protocol_metrics(decider, logits[:40], labels[:40]),
    }
    detail = {
        "model": "ddamfn",
        "variant": "original",
        "temperature": 1.3,
        "val": protocols["test"],
        "protocols": protocols,
    }
    write_json(tmp_path / "metrics.json", {"ddamfn": headline(detail)})
    write_json(tmp_path / "evaluation/ddamfn.json", detail)
    write_json(tmp_path / "split_counts.json", {"train": {"anger": 5, "happiness": 7}})
    scope = {"pairs": 3, "images": 5, "label_conflicts": 1}
    leakage = {"phash_max_distance": 4, "policy": "report", "train_images_duplicating_test": 9}
    leakage |= {"exact": {"train_test": scope}, "near": {"train_test": scope}}
    write_json(tmp_path / "leakage.json", leakage)
    (tmp_path / "figures/evaluation").mkdir(parents=True)
    (tmp_path / "figures/evaluation/ddamfn_confusion_clean_test.png").write_bytes(b"\x89PNG")
    text = build_report(tmp_path)

    # The headline comes first, clean test and reference protocol before the plurality figure.
    headline_at = text.index("## Headline results")
    assert headline_at < text.index("## Dataset")
    table = text[headline_at : text.index("## Dataset")]
    # First the one-line-per-model summary the README embeds, then each model's protocols.
    summary = table[: table.index("### `ddamfn`")]
    assert "| `ddamfn`: ddamfn | 75.00% |" in summary
    per_model = table[table.index("### `ddamfn`") :]
    rows = [line for line in per_model.splitlines() if line.startswith("| ")]
    assert rows[1].startswith("| clean test (no copy in train) | 84 | ")
    assert rows[2].startswith("| FER+ PrivateTest, reference majority protocol | 40 | ")
    assert "FER+ PublicTest" in rows[3] and "not scored" in rows[3]
    assert rows[4].startswith("| all 7,100 test images, plurality labels | 96 | 75.00 |")
    assert "includes 12 test images (12.5%) that have an exact or near copy" in table
    assert "T = 1.3" in table
    assert "6.08 points below 81.08%" in text
    assert (
        "![ddamfn clean_test confusion](figures/evaluation/ddamfn_confusion_clean_test.png)" in text
    )
    assert "Figure `reports/figures/evaluation/ddamfn_reliability.png` not found" in text
    assert "| train | 5 | 7 |" in text  # a count grid, classes in canonical order
    assert "| train ↔ test | 3 | 5 | 1 | 3 | 5 | 1 |" in text
    assert "9 training images duplicate a test image" in text
    assert "`reports/validation.json` is missing" in text
    assert "`reports/train.json` is missing" in text


def test_report_names_an_old_metrics_layout(tmp_path: Path) -> None:
    write_json(tmp_path / "metrics.json", {"test": {"accuracy": 0.7, "n": 10}})
    text = build_report(tmp_path)
    assert "predates the protocol evaluation" in text and "dvc repro evaluate" in text


def test_report_names_a_corrupt_report(tmp_path: Path) -> None:
    (tmp_path / "train.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"train\.json"):
        build_report(tmp_path)


def _run_stage(project: Path, name: str) -> str:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    proc = subprocess.run(
        [sys.executable, str(project / "stages" / f"{name}.py")],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_study_stages_end_to_end(real_faces, tmp_path: Path) -> None:
    """study_resize, tag_age (with a hand label), study_age and report on a scratch project."""
    import torch

    from ferlab.checkpoint import save_checkpoint
    from ferlab.models import build_model
    from ferlab.training.loop import TrainConfig, fit

    images, labels = real_faces
    project = tmp_path / "project"
    shutil.copytree(ROOT / "stages", project / "stages")
    paths = np.array([f"data/raw/fer2013plus/test/x/fer{i:07d}.png" for i in range(len(labels))])
    save_npz(project / "data/arrays/original_test.npz", images=images, labels=labels, paths=paths)
    spec = dict(TINY)
    name = spec.pop("name")
    config = TrainConfig(
        epochs=10, batch_size=16, lr=3e-3, scheduler="none", augment=False, bf16=False, threads=1
    )
    model = build_model(name, input_size=48, **spec)
    meta = {"model": TINY, "input_size": 48, "variant": "original"}
    fit(
        model,
        images,
        labels,
        images,
        labels,
        config,
        project / "models/model.pt",
        meta,
        log=lambda _m: None,
    )
    torch.manual_seed(0)
    age_model = build_model(name, input_size=48, num_classes=2, **spec)
    save_checkpoint(
        project / "models/age.pt",
        age_model,
        {"model": TINY, "input_size": 48, "classes": ["kid", "adult"]},
    )
    pd.DataFrame({"path": [paths[5]], "age_group": ["kid"]}).to_csv(
        project / "hand.csv", index=False
    )
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["age"]["labels_override"] = "hand.csv"
    params["study_resize"]["sizes"] = [96, 48, 14]
    params["study_resize"]["max_images"] = 48  # a stratified half: 6 faces per class
    (project / "params.yaml").write_text(yaml.safe_dump(params))

    _run_stage(project, "study_resize")
    resize = json.loads((project / "reports/study_resize.json").read_text())
    assert resize["n"] == 48 and resize["test_images"] == len(labels)
    assert resize["sizes"] == [96, 48, 14]
    for method in params["study_resize"]["methods"]:
        assert resize["accuracy"][method]["48"] == resize["baseline"]["accuracy"]
    csv = (project / "reports/study_resize.csv").read_text().splitlines()
    assert len(csv) == 1 + len(params["study_resize"]["methods"])
    assert (project / "reports/figures/study_resize.png").is_file()

    _run_stage(project, "tag_age")
    tags = pd.read_csv(project / "data/age_tags.csv")
    assert len(tags) == len(labels) and tags["path"].tolist() == paths.tolist()
    assert tags.loc[5, "age_group"] == "kid" and tags.loc[5, "source"] == "manual"

    _run_stage(project, "study_age")
    study = json.loads((project / "reports/study_age.json").read_text())
    kids, adults = study["groups"]["kid"]["n"], study["groups"]["adult"]["n"]
    assert kids >= 1 and kids + adults == len(labels)
    counts = pd.read_csv(project / "reports/study_age_counts.csv", index_col=0)
    assert list(counts.index) == ["Kids", "Adults"] and counts["Total"].sum() == len(labels)
    assert (project / "reports/figures/study_age_confusion.png").is_file()

    _run_stage(project, "report")
    text = (project / "reports/study.md").read_text()
    assert "## Test-time resize study" in text and "## Kids vs adults" in text
    assert f"| Kids | {kids:,} |" in text
    assert "`reports/metrics.json` is missing" in text


def test_summary_rows_take_training_figures_from_the_evaluated_checkpoints(tmp_path: Path) -> None:
    """A model of evaluate.models under any name finds its training reports through the
    checkpoint(s) its evaluation names: a mean of two models shows both runs and their sum."""
    from ferlab.evaluation.report import summary_table

    scores = {"accuracy": 0.87, "balanced_accuracy": 0.6}
    entry = {
        "model": "mean of 2× baseline",
        **{p: scores for p in ("reference_private", "clean_test", "test")},
        "calibration": {"temperature": 1.0},
    }
    write_json(tmp_path / "metrics.json", {"my_pair": entry, "other": entry})
    write_json(
        tmp_path / "evaluation/my_pair.json",
        {"checkpoint": ["models/fast.pt", "models/fast_second.pt"]},
    )
    write_json(tmp_path / "fast/train.json", {"epochs_run": 40, "train_minutes": 14.3})
    write_json(tmp_path / "fast_second/train.json", {"epochs_run": 40, "train_minutes": 14.0})
    # the export stage's cost of a face, fp32 and int8, each with the graph's test-time views
    write_json(
        tmp_path / "export.json",
        {"my_pair": {"ms_per_face_1_thread": {"fp32": 2.857, "int8": 1.362}}},
    )
    rows = summary_table(tmp_path)
    assert rows[2].startswith("| `my_pair`: mean of 2× baseline |")
    assert rows[2].endswith("| 40 + 40 | 28 | 2.86 / 1.36 |")
    # A model whose evaluation names no known checkpoint has no training figures.
    assert "| – | – |" in rows[3]
