"""Kids-vs-adults classifier: training on age-labelled faces and tagging FER2013+ faces."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ferlab.age.data import AGE_CLASSES, AgeFaces, age_groups, stratified_split
from ferlab.evaluation.metrics import confusion_matrix
from ferlab.inference import Classifier

TAG_COLUMNS = ["path", "age_group", "confidence", "source"]


def binary_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """Accuracy, balanced accuracy, per-group recall and the 2×2 confusion matrix."""
    preds = probs.argmax(axis=1)
    matrix = confusion_matrix(labels, preds, n=len(AGE_CLASSES))
    support = matrix.sum(axis=1)
    recall = np.diag(matrix) / np.maximum(support, 1)
    return {
        "n": len(labels),
        "accuracy": float((preds == labels).mean()),
        "balanced_accuracy": float(recall[support > 0].mean()),
        "recall": {name: float(recall[i]) for i, name in enumerate(AGE_CLASSES)},
        "support": {name: int(support[i]) for i, name in enumerate(AGE_CLASSES)},
        "confusion": matrix.tolist(),
    }


def train_age_model(
    faces: AgeFaces,
    age_params: dict[str, Any],
    train_params: dict[str, Any],
    seed: int,
    checkpoint_path: str | Path,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Split, train and evaluate the kids/adults model; the best checkpoint goes to
    `checkpoint_path`. Returns the report (data counts, held-out metrics, history)."""
    from ferlab.models import build_model, model_options
    from ferlab.training.loop import TrainConfig, fit, seed_everything

    groups = age_groups(faces.ages, int(age_params["kids_max_age"]))
    train_idx, val_idx = stratified_split(groups, float(age_params["val_fraction"]), seed)
    # The age group's keys override the expression model's training defaults.
    config = TrainConfig.from_params({**train_params, **age_params}, seed)
    size = int(age_params["size"])
    # Every hyper-parameter is written into the checkpoint, so later changes to the registry's
    # defaults cannot change what the checkpoint rebuilds.
    name = age_params.get("model", "baseline")
    hparams = {**model_options(name), **(age_params.get("hparams") or {})}
    spec = {"name": name, **hparams}
    seed_everything(seed)  # the initial weights come from the seed, not from whatever ran before
    model = build_model(name, input_size=size, num_classes=len(AGE_CLASSES), **hparams)
    log(
        f"age model {spec['name']}: {len(train_idx)} train / {len(val_idx)} held-out faces, "
        f"{int((groups == 0).sum())} kids (age ≤ {age_params['kids_max_age']}), "
        f"{int((groups == 1).sum())} adults"
    )
    meta = {
        "model": spec,
        "input_size": size,
        "classes": list(AGE_CLASSES),
        "kids_max_age": int(age_params["kids_max_age"]),
        "crop": {"scale": age_params["crop_scale"], "center_y": age_params["crop_center_y"]},
    }
    result = fit(
        model,
        faces.images[train_idx],
        groups[train_idx],
        faces.images[val_idx],
        groups[val_idx],
        config,
        checkpoint_path=checkpoint_path,
        meta=meta,
        num_classes=len(AGE_CLASSES),
        log=log,
    )
    best = Classifier.from_checkpoint(checkpoint_path, expected_classes=AGE_CLASSES)
    val_probs = best.predict_proba(faces.images[val_idx])
    held_out = binary_metrics(groups[val_idx], val_probs)
    ages = faces.ages[val_idx]
    # Accuracy by age band on the held-out part: where the boundary is, errors gather.
    bands = [(0, 2), (3, 7), (8, 12), (13, 17), (18, 29), (30, 59), (60, 200)]
    preds = val_probs.argmax(axis=1)
    by_band = {}
    for lo, hi in bands:
        mask = (ages >= lo) & (ages <= hi)
        if mask.any():
            by_band[f"{lo}-{hi}" if hi < 200 else f"{lo}+"] = {
                "n": int(mask.sum()),
                "accuracy": float((preds[mask] == groups[val_idx][mask]).mean()),
            }
    return {
        "classes": list(AGE_CLASSES),
        "kids_max_age": int(age_params["kids_max_age"]),
        "data": {
            "faces": len(faces.ages),
            "kids": int((groups == 0).sum()),
            "adults": int((groups == 1).sum()),
            "skipped_malformed_names": len(faces.skipped),
            "skipped_examples": faces.skipped[:5],
            "train": len(train_idx),
            "val": len(val_idx),
        },
        "model": spec,
        "input_size": size,
        "val": held_out,
        "val_by_age": by_band,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "stop_reason": result.stop_reason,
        "train_seconds": result.seconds,
        "history": result.history,
    }


def read_override(path: str | Path) -> pd.DataFrame:
    """Hand-checked labels: CSV with columns path, age_group (kid|adult)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: age.labels_override names a missing file; fix or clear it"
        )
    table = pd.read_csv(path, dtype=str)
    missing = {"path", "age_group"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: needs columns path,age_group; missing {sorted(missing)}")
    table["age_group"] = table["age_group"].str.strip().str.lower()
    bad = table.loc[~table["age_group"].isin(AGE_CLASSES)]
    if len(bad):
        row = bad.iloc[0]
        raise ValueError(
            f"{path}: age_group {row['age_group']!r} for {row['path']} is not kid or adult"
        )
    dupes = table["path"][table["path"].duplicated()]
    if len(dupes):
        raise ValueError(f"{path}: {dupes.iloc[0]} is listed more than once")
    return table[["path", "age_group"]]


def tag_faces(
    classifier: Classifier,
    images: np.ndarray,
    paths: list[str] | np.ndarray,
    override: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Age group and confidence for each face; hand-checked labels replace the model's.

    Override rows get confidence 1.0 and source `manual`. A listed path that is not among
    `paths` is an error (a typo would otherwise be silently ignored).
    """
    if list(classifier.classes) != list(AGE_CLASSES):
        raise ValueError(f"the age model's classes are {classifier.classes}, not {AGE_CLASSES}")
    probs = classifier.predict_proba(images)
    tags = pd.DataFrame(
        {
            "path": [str(p) for p in paths],
            "age_group": [AGE_CLASSES[i] for i in probs.argmax(axis=1)],
            "confidence": probs.max(axis=1).round(4),
            "source": "model",
        }
    )
    if override is not None and len(override):
        unknown = sorted(set(override["path"]) - set(tags["path"]))
        if unknown:
            raise ValueError(
                f"age.labels_override lists {len(unknown)} path(s) not in the test split, "
                f"e.g. {unknown[0]}; paths must match data/split.csv"
            )
        manual = dict(zip(override["path"], override["age_group"], strict=True))
        hit = tags["path"].isin(manual)
        tags.loc[hit, "age_group"] = tags.loc[hit, "path"].map(manual)
        tags.loc[hit, "confidence"] = 1.0
        tags.loc[hit, "source"] = "manual"
    return tags[TAG_COLUMNS]
