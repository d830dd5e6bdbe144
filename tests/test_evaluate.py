"""Honest evaluation: the FER+ reference protocol, the clean test, calibration, the
prior-corrected decision, flip TTA, and the evaluate stage run for real in a scratch project."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import sample_members
from test_export import train_small

from ferlab.classes import CLASS_TO_INDEX, CLASSES
from ferlab.data import DataError
from ferlab.evaluation.calibration import fit_temperature, nll
from ferlab.evaluation.metrics import classification_metrics, expected_calibration_error
from ferlab.evaluation.protocols import (
    VOTE_COLUMNS,
    clean_test_mask,
    majority_labels,
    read_votes,
    reference_subset,
)
from ferlab.export import export_onnx
from ferlab.inference import OnnxClassifier, TorchClassifier, load_classifier, softmax
from ferlab.io import save_npz, write_json

ROOT = Path(__file__).resolve().parents[1]


def decode(fer_zip: zipfile.ZipFile, names: list[str]) -> np.ndarray:
    return np.stack(
        [
            cv2.imdecode(np.frombuffer(fer_zip.read(n), np.uint8), cv2.IMREAD_GRAYSCALE)
            for n in names
        ]
    )


# --------------------------------------------------------------------------------------------
# FER+ reference protocol


def votes_table(rows: dict[str, list[int]], split: str = "PrivateTest") -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"ferplus_split": split, "image": k, **dict(zip(VOTE_COLUMNS, v, strict=True))}
            for k, v in rows.items()
        ]
    )


def test_majority_rule_on_hand_made_votes() -> None:
    # Columns: neutral happiness surprise sadness anger disgust fear contempt unknown NF
    table = votes_table(
        {
            "clear.png": [0, 9, 0, 0, 0, 1, 0, 0, 0, 0],  # happiness 9 of 9 (the 1 is dropped)
            "half.png": [5, 0, 0, 5, 0, 0, 0, 0, 0, 0],  # 5 of 10 is not more than half
            "singles.png": [1, 1, 1, 1, 1, 1, 1, 1, 1, 1],  # every vote a single: nothing left
            "rescued.png": [0, 0, 3, 0, 1, 1, 1, 1, 0, 0],  # 3 of 3 after dropping the singles
            "unknown.png": [2, 0, 0, 0, 0, 0, 0, 0, 8, 0],  # majority "unknown": dropped
            "notface.png": [0, 0, 0, 0, 0, 0, 0, 2, 0, 8],  # majority "not a face": dropped
            "contempt.png": [0, 0, 0, 0, 2, 0, 0, 6, 0, 0],  # contempt 6 of 8
        }
    )
    got = dict(zip(table["image"], majority_labels(table), strict=True))
    assert got == {
        "clear.png": CLASS_TO_INDEX["happiness"],
        "half.png": -1,
        "singles.png": -1,
        "rescued.png": CLASS_TO_INDEX["surprise"],
        "unknown.png": -1,
        "notface.png": -1,
        "contempt.png": CLASS_TO_INDEX["contempt"],
    }


def test_reference_protocol_on_the_real_votes(shared_data: Path, fer_zip: zipfile.ZipFile) -> None:
    votes = read_votes(shared_data / "ferplus_votes.csv")
    labels = majority_labels(votes)
    split = votes["ferplus_split"].to_numpy()
    assert int(((split == "PrivateTest") & (labels >= 0)).sum()) == 3137
    assert int(((split == "PublicTest") & (labels >= 0)).sum()) == 3191

    by_name = dict(zip(votes["image"], labels, strict=True))
    # Rows of ferplus_votes.csv, votes in the order neutral happiness surprise sadness anger
    # disgust fear contempt unknown NF, worked out by hand:
    hand = {
        # 0 0 0 0 2 1 0 7 0 0: the single disgust vote goes; contempt 7 of 9 > 4.5 -> contempt
        "fer0032220.png": "contempt",
        # 3 0 0 5 0 0 0 0 2 0: sadness 5 of 10 is not > 5 -> dropped
        "fer0032222.png": None,
        # 0 0 4 0 1 2 3 0 0 0: anger's single goes; surprise 4 of 9 is not > 4.5 -> dropped
        "fer0032224.png": None,
        # 3 0 4 1 1 0 0 0 1 0: three singles go; surprise 4 of 7 > 3.5 -> surprise
        "fer0032245.png": "surprise",
        # 0 1 4 0 1 0 0 0 4 0: singles go; surprise 4 of 8 ties unknown, not > 4 -> dropped
        "fer0032256.png": None,
        # 2 0 1 0 0 0 0 0 6 1: singles go; unknown 6 of 8 is the majority -> dropped
        "fer0034757.png": None,
        # 0 10 0 0 0 0 0 0 0 0: happiness 10 of 10
        "fer0032227.png": "happiness",
        # 3 0 0 0 7 0 0 0 0 0: anger 7 of 10
        "fer0032242.png": "anger",
    }
    for image, expected in hand.items():
        got = by_name[image]
        assert (None if got < 0 else CLASSES[got]) == expected, image

    # Every kept image is in the archive's test split, filed under the same class.
    folder_of = {}
    for name in fer_zip.namelist():
        parts = name.split("/")
        if name.endswith(".png") and parts[-3] == "test":
            folder_of[parts[-1]] = parts[-2]
    test_paths = np.array(sorted(f"data/raw/test/{c}/{n}" for n, c in folder_of.items()))
    for ferplus_split, count in (("PrivateTest", 3137), ("PublicTest", 3191)):
        rows, reference, absent = reference_subset(votes, ferplus_split, test_paths)
        assert len(rows) == count and absent == 0
        archive = [CLASS_TO_INDEX[Path(p).parent.name] for p in test_paths[rows]]
        assert reference.tolist() == archive


def test_votes_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere\.csv.*data\.votes"):
        read_votes(tmp_path / "nowhere.csv")
    (tmp_path / "bad.csv").write_text("image,neutral\nfer0000000.png,3\n")
    with pytest.raises(DataError, match=r"bad\.csv: missing columns"):
        read_votes(tmp_path / "bad.csv")


# --------------------------------------------------------------------------------------------
# Clean test


@pytest.fixture(scope="module")
def full_manifest(fer_zip: zipfile.ZipFile, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/manifest.csv of the whole FER2013+ archive, built as the validate stage builds it."""
    from ferlab.data.archive import extract_zip
    from ferlab.data.manifest import build_manifest, write_manifest

    project = tmp_path_factory.mktemp("manifest")
    extract_zip(Path(fer_zip.filename), project / "data/raw", max_extract_mb=2048)
    write_manifest(build_manifest(project / "data/raw", project), project / "data/manifest.csv")
    return project / "data/manifest.csv"


def test_clean_test_is_what_the_leakage_report_counts(full_manifest: Path, tmp_path) -> None:
    manifest = pd.read_csv(full_manifest, dtype=str)
    test = manifest[manifest["split"] == "test"].reset_index(drop=True)
    train = manifest[manifest["split"] == "train"]
    mask = clean_test_mask(test["path"].to_numpy(), full_manifest, ROOT / "reports/leakage.json")

    # An independent count: exact = same sha256 as a train image; near = a train image whose
    # 64-bit pHash is within 4 bits and whose bytes differ.
    exact = test["sha256"].isin(set(train["sha256"])).to_numpy()
    test_hash = np.array([int(h, 16) for h in test["phash"]], dtype=np.uint64)
    train_hash = np.array([int(h, 16) for h in train["phash"]], dtype=np.uint64)
    train_sha = train["sha256"].to_numpy()
    near = np.zeros(len(test), bool)
    for start in range(0, len(test), 256):
        block = slice(start, start + 256)
        close = np.bitwise_count(test_hash[block, None] ^ train_hash[None, :]) <= 4
        differ = test["sha256"].to_numpy()[block, None] != train_sha[None, :]
        near[block] = (close & differ).any(axis=1)
    report = json.loads((ROOT / "reports/leakage.json").read_text())
    assert int(exact.sum()) == report["exact"]["train_test"]["test_images"]
    assert int(near.sum()) == report["near"]["train_test"]["test_images"]
    assert mask.tolist() == (~(exact | near)).tolist()
    assert 0 < (~mask).sum() < len(mask)

    # A report from another run is refused, not silently mixed with this manifest.
    report["near"]["train_test"]["test_images"] += 1
    write_json(tmp_path / "leakage.json", report)
    with pytest.raises(DataError, match="different runs"):
        clean_test_mask(test["path"].to_numpy(), full_manifest, tmp_path / "leakage.json")


# --------------------------------------------------------------------------------------------
# Metrics and calibration


def test_ece_on_a_hand_made_example() -> None:
    probs = np.array(
        [
            [0.90, 0.05, 0.03, 0.02],  # confidence 0.90, right
            [0.90, 0.04, 0.03, 0.03],  # confidence 0.90, wrong
            [0.10, 0.62, 0.18, 0.10],  # confidence 0.62, right
            [0.30, 0.25, 0.25, 0.20],  # confidence 0.30, wrong
        ]
    )
    labels = np.array([0, 1, 1, 2])
    # 15 bins: (0.867, 0.933] holds two faces, accuracy 0.5 vs confidence 0.9; (0.6, 0.667]
    # one, 1 vs 0.62; (0.267, 0.333] one, 0 vs 0.3. ECE = 2/4·0.4 + 1/4·0.38 + 1/4·0.3 = 0.37.
    assert expected_calibration_error(probs, labels) == pytest.approx(0.37)
    # One bin: |accuracy 0.5 − mean confidence 0.68| = 0.18.
    assert expected_calibration_error(probs, labels, n_bins=1) == pytest.approx(0.18)
    # Perfectly calibrated: confidence 1, always right.
    assert expected_calibration_error(np.eye(4), np.arange(4)) == 0.0


def test_classification_metrics_by_hand() -> None:
    labels = np.array([0, 0, 0, 1, 4, 4])
    preds = np.array([0, 0, 1, 1, 4, 0])
    probs = np.eye(8)[preds] * 0.9 + 0.1 / 8
    m = classification_metrics(labels, probs)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # Recall per present class: anger 2/3, contempt 1/1, happiness 1/2.
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
    assert m["per_class_precision"]["anger"] == pytest.approx(2 / 3)
    assert m["per_class_precision"]["fear"] is None  # never predicted
    assert m["per_class_recall"]["fear"] is None  # never present
    # F1: anger 2·(2/3·2/3)/(4/3) = 2/3, contempt 2·(1/2·1)/(3/2) = 2/3, happiness 2/3.
    assert m["macro_f1"] == pytest.approx(2 / 3)
    # Another decision rule is scored on its own predictions.
    assert classification_metrics(labels, probs, preds=labels)["accuracy"] == 1.0


@pytest.fixture(scope="module")
def trained(fer_zip: zipfile.ZipFile, tmp_path_factory: pytest.TempPathFactory):
    """A small model fitted hard on 10 real train faces per class, its ONNX export, and 24
    real test faces per class it has not seen (on which it is overconfident)."""
    train = sample_members(fer_zip, "train", 10)
    images = decode(fer_zip, [n for c in CLASSES for n in train[c]])
    labels = np.repeat(np.arange(len(CLASSES)), [len(train[c]) for c in CLASSES])
    folder = tmp_path_factory.mktemp("trained")
    checkpoint = train_small(images, labels, folder / "model.pt", epochs=30)
    onnx_path = folder / "model.onnx"
    export_onnx(checkpoint, onnx_path)
    held = sample_members(fer_zip, "test", 24)
    faces = decode(fer_zip, [n for c in CLASSES for n in held[c]])
    face_labels = np.repeat(np.arange(len(CLASSES)), [len(held[c]) for c in CLASSES])
    return checkpoint, onnx_path, faces, face_labels


def test_temperature_fit_lowers_held_out_nll(trained) -> None:
    checkpoint, _, faces, labels = trained
    logits = TorchClassifier.from_checkpoint(checkpoint).logits(faces)
    fit, check = np.arange(len(labels)) % 2 == 0, np.arange(len(labels)) % 2 == 1
    temperature = fit_temperature(logits[fit], labels[fit])
    assert temperature > 1.0  # fitted hard on a few faces: overconfident on new ones
    assert nll(logits[fit], labels[fit], temperature) < nll(logits[fit], labels[fit], 1.0)
    # It is the minimum of the fitting half's NLL, and it carries over to the other half.
    for other in (temperature * 0.9, temperature * 1.1):
        assert nll(logits[fit], labels[fit], temperature) < nll(logits[fit], labels[fit], other)
    assert nll(logits[check], labels[check], temperature) < nll(logits[check], labels[check])
    # The classifier applies it before the softmax; the decision does not change.
    model = TorchClassifier.from_checkpoint(checkpoint, temperature=temperature)
    assert np.allclose(model.predict_proba(faces), softmax(logits / temperature), atol=1e-6)
    assert (model.predict(faces) == logits.argmax(1)).all()


def test_tau_zero_is_the_plain_argmax_and_tau_favours_rare_classes(trained) -> None:
    checkpoint, onnx_path, faces, _ = trained
    prior = np.array([0.08, 0.005, 0.006, 0.02, 0.27, 0.36, 0.12, 0.13])  # FER+-like
    for model in (
        TorchClassifier.from_checkpoint(checkpoint, class_prior=prior),
        OnnxClassifier(onnx_path, class_prior=prior),
    ):
        logits = model.logits(faces)
        model.logit_adjust_tau = 0.0
        assert np.array_equal(model.predict(faces), logits.argmax(1))
        model.logit_adjust_tau = 1.0
        model.temperature = 2.0
        adjusted = model.predict(faces)
        assert np.array_equal(adjusted, (logits / 2.0 - np.log(prior)).argmax(1))
        assert (adjusted != logits.argmax(1)).any()  # it does change decisions
        assert (model.predict_proba(faces).argmax(1) == adjusted).all()
    with pytest.raises(ValueError, match="class prior"):
        TorchClassifier.from_checkpoint(checkpoint, class_prior=[0.5, 0.5])
    with pytest.raises(ValueError, match="needs the training class prior"):
        TorchClassifier.from_checkpoint(checkpoint, logit_adjust_tau=1.0).predict(faces[:2])


def test_flip_tta_averages_each_face_with_its_mirror(trained) -> None:
    checkpoint, onnx_path, faces, _ = trained
    for path in (checkpoint, onnx_path):
        plain = load_classifier(path)
        tta = load_classifier(path, tta_flip=True)
        expected = (plain.logits(faces) + plain.logits(faces[:, :, ::-1].copy())) / 2
        assert np.abs(tta.logits(faces, batch_size=7) - expected).max() < 1e-4
        assert not np.allclose(tta.logits(faces), plain.logits(faces))


# --------------------------------------------------------------------------------------------
# The evaluate stage in a scratch project


def _scratch_project(fer_zip: zipfile.ZipFile, trained, root: Path) -> tuple[Path, dict]:
    """A project with real faces: 20 train, 4 val and 12 test faces per class (test faces from
    both FER+ test halves), one test face copied into train, the manifest and leakage report
    the validate stage would write, and two independent models."""
    from ferlab.data.leakage import apply_policy, find_duplicates, leakage_report
    from ferlab.data.manifest import build_manifest, write_manifest

    project = root / "project"
    shutil.copytree(ROOT / "stages", project / "stages")
    shutil.copy2(ROOT / "dvc.yaml", project / "dvc.yaml")
    raw = project / "data/raw"
    train = sample_members(fer_zip, "train", 24)
    by_class: dict[str, list[str]] = {}
    for name in sorted(fer_zip.namelist()):
        parts = name.split("/")
        if name.endswith(".png") and parts[-3] == "test":
            by_class.setdefault(parts[-2], []).append(name)
    test = {c: names[:6] + names[-6:] for c, names in by_class.items()}  # Public + Private
    for split, members in (("train", train), ("test", test)):
        for c, names in members.items():
            for n in names:
                (raw / split / c).mkdir(parents=True, exist_ok=True)
                (raw / split / c / Path(n).name).write_bytes(fer_zip.read(n))
    leaked = raw / "test/happiness" / Path(test["happiness"][0]).name
    shutil.copy2(leaked, raw / "train/happiness/copy_of_test.png")

    frame = build_manifest(raw, project)
    duplicates = find_duplicates(frame, 4)
    frame = apply_policy(frame, duplicates, "report")
    write_manifest(frame, project / "data/manifest.csv")
    write_json(project / "reports/leakage.json", leakage_report(frame, duplicates, 4, "report"))
    test_counts = frame[frame["split"] == "test"]["label"].value_counts().to_dict()
    write_json(project / "reports/split_counts.json", {"counts": {"test": test_counts}})

    rows = frame[frame["split"] == "train"].reset_index(drop=True)
    val = rows.groupby("label").head(4).index.to_numpy()
    splits = {"train": rows.drop(index=val), "val": rows.loc[val]}
    splits["test"] = frame[frame["split"] == "test"]
    for split, part in splits.items():
        paths = part["path"].to_numpy(dtype=str)
        save_npz(
            project / f"data/arrays/original_{split}.npz",
            images=np.stack([cv2.imread(str(project / p), cv2.IMREAD_GRAYSCALE) for p in paths]),
            labels=part["label_idx"].to_numpy(dtype=np.int64),
            paths=paths,
            face_found=np.ones(len(paths), bool),
        )
    checkpoint, _, _, _ = trained
    (project / "models").mkdir()
    shutil.copy2(checkpoint, project / "models/model.pt")
    images, labels, _ = (
        np.load(project / "data/arrays/original_train.npz")[k]
        for k in ("images", "labels", "paths")
    )
    train_small(images, labels, project / "models/fast.pt", epochs=3)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["votes"] = str(Path(fer_zip.filename).parent / "ferplus_votes.csv")
    params["evaluate"] = {
        "batch_size": 64,
        # a list is one model: the mean of its checkpoints' probabilities
        "models": {
            "tiny": "models/model.pt",
            "fast": "models/fast.pt",
            "pair": ["models/model.pt", "models/fast.pt"],
        },
        "tta_flip": True,
        "logit_adjust_tau": 1.0,
    }
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return project, {"leaked": leaked.name, "test": splits["test"]}


def _run(project: Path, stage: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    return subprocess.run(
        [sys.executable, str(project / "stages" / f"{stage}.py")],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.parametrize("crops", [[1.0, 1.5], "half", []])
def test_evaluate_refuses_test_time_crops_that_are_no_centre_crop(crops) -> None:
    from ferlab.evaluation.evaluate import EvaluateSettings

    with pytest.raises(DataError, match=r"params\.yaml evaluate\.tta_crops"):
        EvaluateSettings.from_params({"evaluate": {"tta_crops": crops}})
    chosen = EvaluateSettings.from_params({"evaluate": {"tta_crops": [1.0, 0.92]}})
    assert chosen.views_for("study").count == 4  # two crops and their mirrors (tta_flip on)


def test_a_model_can_have_test_time_crops_of_its_own() -> None:
    from ferlab.evaluation.evaluate import EvaluateSettings

    models = {"study": "models/model.pt", "fast": "models/fast.pt"}
    group = {"models": models, "tta_crops": [1.0], "tta_crops_by_model": {"study": [1.0, 0.92]}}
    settings = EvaluateSettings.from_params({"evaluate": group})
    assert settings.views_for("study").crops == (1.0, 0.92)
    assert settings.views_for("fast").crops == (1.0,)
    assert settings.views_for("other").crops == (1.0,)  # not listed: the common views
    # A run or an ensemble member is scored like the listed model whose checkpoint it is.
    assert settings.views_of_checkpoint("models/model.pt").crops == (1.0, 0.92)
    assert settings.views_of_checkpoint("models/runs/x/model.pt").crops == (1.0,)
    for bad, message in (
        ({"stduy": [1.0, 0.92]}, r"tta_crops_by_model\.stduy: no such model .*study, fast"),
        ({"study": [1.0, 0.3]}, r"tta_crops_by_model\.study: test-time crops"),
        ([1.0, 0.92], r"tta_crops_by_model must map model names"),
        ({"study": 0.92}, r"tta_crops_by_model\.study = 0\.92 must be a list of crops"),
    ):
        with pytest.raises(DataError, match=message):
            EvaluateSettings.from_params({"evaluate": {**group, "tta_crops_by_model": bad}})


def test_evaluate_stage_scores_every_listed_model(fer_zip, trained, tmp_path: Path) -> None:
    project, facts = _scratch_project(fer_zip, trained, tmp_path)
    done = _run(project, "evaluate")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert list(metrics) == ["tiny", "fast", "pair"]
    n_test = len(facts["test"])
    votes = read_votes(Path(fer_zip.filename).parent / "ferplus_votes.csv")
    expected_private = len(reference_subset(votes, "PrivateTest", facts["test"]["path"])[0])
    report = json.loads((project / "reports/leakage.json").read_text())
    leaked = {k: report[k]["train_test"]["test_images"] for k in ("exact", "near")}
    assert leaked["exact"] >= 1
    for name, m in metrics.items():
        assert m["test"]["n"] == n_test == 96
        # Out of the clean test: the face copied into train, and the subset's own duplicates
        # (counted in the leakage report; exact and near sets may overlap).
        left_out = n_test - m["clean_test"]["n"]
        assert max(leaked.values()) <= left_out <= sum(leaked.values())
        assert m["reference_private"]["n"] == expected_private > 0
        assert 0 < m["reference_public"]["n"] < n_test
        for protocol in ("test", "reference_private", "reference_public", "clean_test"):
            for key in (
                "accuracy",
                "balanced_accuracy",
                "macro_f1",
                "prior_corrected_balanced_accuracy",
            ):
                assert 0.0 <= m[protocol][key] <= 1.0
        cal = m["calibration"]
        assert cal["temperature"] > 0
        assert 0.0 <= cal["ece"] <= 1.0 and 0.0 <= cal["ece_calibrated"] <= 1.0
        detail = json.loads((project / f"reports/evaluation/{name}.json").read_text())
        assert detail["class_prior_source"] == "train split"
        assert detail["views"] == {"crops": [1.0], "flip": True}
        assert 0.0 <= detail["val_no_tta"]["accuracy"] <= 1.0  # the same weights, no views
        confusion = np.array(detail["protocols"]["clean_test"]["confusion"])
        assert confusion.shape == (8, 8) and confusion.sum() == m["clean_test"]["n"]
        predictions = pd.read_csv(project / f"reports/evaluation/{name}_predictions_test.csv")
        assert len(predictions) == n_test
        out = predictions[predictions["path"].str.endswith(facts["leaked"])]
        assert out["in_clean_test"].tolist() == [0]
        assert predictions["in_clean_test"].sum() == m["clean_test"]["n"]
        assert predictions["in_reference_private"].sum() == expected_private
        per_class = pd.read_csv(project / f"reports/evaluation/{name}_per_class.csv")
        assert len(per_class) == 4 * 2 * 8
        for figure in (
            "confusion_test",
            "confusion_reference_private",
            "confusion_clean_test",
            "reliability",
            "attention_maps",
        ):
            assert (project / f"reports/figures/evaluation/{name}_{figure}.png").stat().st_size
    # The models are scored independently: different numbers, not one copied.
    assert metrics["tiny"]["test"] != metrics["fast"]["test"]
    assert metrics["pair"]["test"] not in (metrics["tiny"]["test"], metrics["fast"]["test"])
    pair = json.loads((project / "reports/evaluation/pair.json").read_text())
    assert pair["checkpoint"] == ["models/model.pt", "models/fast.pt"]
    assert pair["model"].startswith("mean of ")
    confusion_csv = pd.read_csv(project / "reports/confusion_test.csv")
    assert list(confusion_csv.columns) == ["actual", "predicted"] and len(confusion_csv) == n_test

    # MLflow has the same numbers under the same dotted names.
    db = sqlite3.connect(project / "mlflow.db")
    logged = dict(db.execute("SELECT key, value FROM latest_metrics").fetchall())
    for key in (
        "tiny.clean_test.accuracy",
        "fast.reference_private.balanced_accuracy",
        "tiny.calibration.ece",
        "fast.test.prior_corrected_balanced_accuracy",
    ):
        name, protocol, metric = key.split(".")
        assert logged[key] == pytest.approx(metrics[name][protocol][metric])

    # A listed model without its file is one line naming it and the stage that writes it.
    (project / "models/fast.pt").unlink()
    done = _run(project, "evaluate")
    assert done.returncode == 1
    message = done.stderr.strip()
    assert "\n" not in message and "Traceback" not in done.stderr
    assert "models/fast.pt" in message and "evaluate.models.fast" in message


def test_export_stores_the_fitted_temperature_and_prior(fer_zip, trained, tmp_path) -> None:
    project, _ = _scratch_project(fer_zip, trained, tmp_path)
    params = yaml.safe_load((project / "params.yaml").read_text())
    # Its own crops (as the study model has): scored by evaluate, then put in its graph.
    params["evaluate"].update(
        models={"tiny": "models/model.pt"},
        tta_crops=[1.0],
        tta_crops_by_model={"tiny": [1.0, 0.92]},
    )
    params["realtime"].update(export_test_images=40, calibration_images=16)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _run(project, "evaluate").returncode == 0
    done = _run(project, "export")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = json.loads((project / "reports/metrics.json").read_text())
    onnx_model = OnnxClassifier(project / "models/onnx/tiny.onnx")
    # the export is the evaluated model: its views, its temperature, its answers
    assert onnx_model.temperature == pytest.approx(metrics["tiny"]["calibration"]["temperature"])
    assert onnx_model.meta["views"] == {"crops": [1.0, 0.92], "flip": True}
    detail = json.loads((project / "reports/evaluation/tiny.json").read_text())
    assert detail["views"] == onnx_model.meta["views"]
    test_faces = np.load(project / "data/arrays/original_test.npz")["images"]
    evaluated = pd.read_csv(project / "reports/evaluation/tiny_predictions_test.csv")
    deployed = [CLASSES[i] for i in onnx_model.predict(test_faces)]
    assert (np.array(deployed) != evaluated["predicted"].to_numpy()).sum() <= 1
    train_labels = np.load(project / "data/arrays/original_train.npz")["labels"]
    frequencies = np.bincount(train_labels, minlength=8) / len(train_labels)
    assert np.allclose(onnx_model.class_prior, frequencies)
    report = json.loads((project / "reports/export.json").read_text())
    assert report["tiny"]["fp32_max_prob_diff"] < 1e-4  # compared at the same temperature
