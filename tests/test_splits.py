"""Train / val / test assignment from the manifest, and the three data stages under real DVC."""

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
from ferlab.data import DataError
from ferlab.data.manifest import MANIFEST_COLUMNS, write_manifest
from ferlab.data.splits import SPLIT_COLUMNS, make_splits, read_split, run_split

ROOT = Path(__file__).resolve().parents[1]
SPLIT_PARAMS = {"val_fraction": 0.1, "max_per_class": 0, "by_subject_fractions": None}


def manifest(per_class: dict[str, tuple[int, int]], subjects: int = 0) -> pd.DataFrame:
    """A manifest table: (train, test) images per class; `subjects` > 0 adds person ids."""
    rows = []
    rng = np.random.default_rng(7)
    for label, (n_train, n_test) in per_class.items():
        for split, n in (("train", n_train), ("test", n_test)):
            for k in range(n):
                rows.append(
                    {
                        "path": f"data/raw/{split}/{label}/{label}{k:05d}.png",
                        "split": split,
                        "label": label,
                        "label_idx": CLASSES.index(label),
                        "sha256": f"{len(rows):064x}",
                        "phash": f"{len(rows):016x}",
                        "width": 48,
                        "height": 48,
                        "mode": "L",
                        "subject_id": f"p{rng.integers(subjects):03d}" if subjects else "",
                        "drop": False,
                    }
                )
    return pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))


FER_LIKE = {"anger": (246, 64), "contempt": (17, 5), "happiness": (753, 183), "fear": (65, 17)}


def split(frame: pd.DataFrame, seed: int = 42, **overrides: object) -> pd.DataFrame:
    params = {**SPLIT_PARAMS, **overrides}
    out, _ = make_splits(frame, seed=seed, **params)
    return out


def test_stratified_val_is_carved_from_train_per_class() -> None:
    frame = manifest(FER_LIKE)
    out = split(frame)
    assert len(out) == len(frame) and set(out["path"]) == set(frame["path"])
    assert list(out.columns) == list(SPLIT_COLUMNS)
    for label, (n_train, n_test) in FER_LIKE.items():
        rows = out[out["label"] == label]
        assert (rows["split"] == "val").sum() == round(n_train * 0.1)
        assert (rows["split"] == "test").sum() == n_test
    # The archive's test split is untouched, val comes only from train.
    assert (out.loc[out["split"] == "test", "source_split"] == "test").all()
    assert (out.loc[out["split"] == "val", "source_split"] == "train").all()


def test_split_is_deterministic_by_seed_and_per_class() -> None:
    frame = manifest(FER_LIKE)
    val = set(split(frame).query("split == 'val'")["path"])
    assert val == set(split(frame.sample(frac=1, random_state=3)).query("split == 'val'")["path"])
    assert val != set(split(frame, seed=43).query("split == 'val'")["path"])
    # Removing one class does not reshuffle the others.
    without_fear = split(frame[frame["label"] != "fear"]).query("split == 'val'")
    assert set(without_fear["path"]) == {p for p in val if "/fear/" not in p}


def test_rows_flagged_drop_are_removed_and_counted() -> None:
    frame = manifest(FER_LIKE)
    flagged = frame.index[(frame["split"] == "train")][:5]
    frame.loc[flagged, "drop"] = True
    out, info = make_splits(frame, seed=42, **SPLIT_PARAMS)
    assert info["dropped_duplicates"] == 5
    assert not set(frame.loc[flagged, "path"]) & set(out["path"])
    assert len(out) == len(frame) - 5


def test_max_per_class_caps_every_split_and_class() -> None:
    frame = manifest(FER_LIKE)
    out = split(frame, max_per_class=20)
    sizes = out.groupby(["split", "label"]).size()
    assert sizes.max() == 20
    assert sizes[("val", "contempt")] == 2 and sizes[("test", "contempt")] == 5  # small stay
    assert out.equals(split(frame, max_per_class=20))


def test_subjects_never_cross_splits() -> None:
    frame = manifest(FER_LIKE, subjects=150)
    fractions = {"train": 0.7, "val": 0.2, "test": 0.1}
    out, info = make_splits(frame, seed=42, val_fraction=0.1, by_subject_fractions=fractions)
    assert info["mode"] == "by_subject"
    per_subject = out.groupby("subject_id")["split"].nunique()
    assert (per_subject == 1).all()
    shares = out["split"].value_counts(normalize=True)
    for name, share in fractions.items():
        assert abs(shares[name] - share) < 0.05, shares
    assert sum(info["subjects"].values()) == 150
    again, _ = make_splits(frame, seed=42, val_fraction=0.1, by_subject_fractions=fractions)
    assert out.equals(again)


def test_bad_fractions_are_one_clear_error() -> None:
    with pytest.raises(DataError, match="by_subject_fractions"):
        make_splits(
            manifest(FER_LIKE, subjects=10),
            seed=1,
            val_fraction=0.1,
            by_subject_fractions={"train": 0.8, "test": 0.1},
        )
    with pytest.raises(DataError, match="val_fraction"):
        split(manifest(FER_LIKE), val_fraction=1.5)


def test_run_split_reads_the_written_manifest(tmp_path: Path) -> None:
    write_manifest(manifest(FER_LIKE), tmp_path / "manifest.csv")
    report = run_split(SPLIT_PARAMS, 42, tmp_path / "manifest.csv", tmp_path / "split.csv")
    table = read_split(tmp_path / "split.csv")
    assert (table["subject_id"] == "").all()  # empty ids stay empty, not NaN
    assert report["totals"] == table["split"].value_counts().to_dict()
    assert report["counts"]["val"]["anger"] == 25
    assert report["mode"] == "stratified"


def test_missing_manifest_names_the_stage_to_run(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"run the validate stage first \(dvc repro validate\)"):
        run_split(SPLIT_PARAMS, 42, tmp_path / "manifest.csv", tmp_path / "split.csv")


@pytest.mark.slow
def test_download_validate_split_under_dvc(tmp_path: Path, subset_zip: Path) -> None:
    """`dvc repro split` on a copy of the project: real DVC, real stage scripts, real MLflow."""
    # The project's own blocks of dvc.yaml for these three stages (the rest is not needed).
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    keep = {name: pipeline["stages"][name] for name in ("download", "validate", "split")}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": keep}, sort_keys=False))
    for rel in ("stages/download.py", "stages/validate.py", "stages/split.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    # The whole package: dvc.yaml's deps name the shared modules these stages import.
    shutil.copytree(
        ROOT / "src/ferlab", tmp_path / "src/ferlab", ignore=shutil.ignore_patterns("__pycache__")
    )
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(source=str(subset_zip), local_copies=[])
    params["validate"]["min_per_class"] = {"train": 20, "test": 20}
    params["split"]["max_per_class"] = 30
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "DVC_NO_ANALYTICS": "1",
    }

    def sh(*args: str) -> str:
        proc = subprocess.run(
            args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    sh("git", "init", "-q")
    sh(sys.executable, "-m", "dvc", "init", "-q")
    sh(sys.executable, "-m", "dvc", "repro", "split")
    counts = json.loads((tmp_path / "reports/split_counts.json").read_text())
    assert counts["totals"] == {"train": 240, "val": 32, "test": 240}  # 30 × 8, 4 × 8, 30 × 8
    table = read_split(tmp_path / "data/split.csv")
    assert (tmp_path / table["path"].iloc[0]).is_file()
    assert json.loads((tmp_path / "reports/validation.json").read_text())["success"]
    lock = yaml.safe_load((tmp_path / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"download", "validate", "split"}
    metrics = sh(sys.executable, "-m", "dvc", "metrics", "show", "--json")
    assert '"totals"' in metrics and '"exact"' in metrics
    show = [sys.executable, "-m", "dvc", "plots", "show", "-o", str(tmp_path / "plots")]
    plots = subprocess.run(show, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert plots.returncode == 0 and "failed to load" not in plots.stdout + plots.stderr

    # Nothing changed: nothing reruns. A split param changed: only split reruns.
    assert "Running stage" not in sh(sys.executable, "-m", "dvc", "repro", "split")
    params["split"]["val_fraction"] = 0.2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = sh(sys.executable, "-m", "dvc", "repro", "split")
    assert "Running stage 'split'" in out and "Running stage 'validate'" not in out

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(params["mlflow"]["experiment"])
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags["stage"] for r in runs) == ["download", "split", "split", "validate"]
    assert all(r.info.status == "FINISHED" for r in runs)
    validate_run = next(r for r in runs if r.data.tags["stage"] == "validate")
    assert validate_run.data.metrics["count_test_contempt"] == 40
    artifacts = {a.path for a in client.list_artifacts(validate_run.info.run_id)}
    assert {"validation.md", "leakage.json", "leakage_examples.png"} <= artifacts
