"""The evaluate stage's work: every listed model, scored side by side under each test protocol.

Per model: logits on val and test of the model with its test-time views (`evaluate.tta_flip`,
`evaluate.tta_crops`, or the model's own crops in `evaluate.tta_crops_by_model`: the views the
export stage puts in its ONNX graph, so what is scored here is what is deployed), and on val
without them for comparison; a temperature fitted on val by NLL;
then for each protocol (plurality test, FER+ reference PrivateTest and PublicTest, clean test)
accuracy, balanced accuracy, macro-F1, per-class precision and recall and the confusion
matrix, under the plain argmax and under the prior-corrected decision; and the expected
calibration error before and after temperature scaling.

Outputs: `reports/metrics.json` (the headline numbers only, `<model>.<protocol>.<metric>`),
`reports/evaluation/` (per model: the full detail JSON, per-class CSV, test predictions CSV),
`reports/figures/evaluation/` (per model: confusion matrices, reliability diagram, attention
maps), and `reports/confusion_test.csv` (the first model's test confusion, for DVC's plot).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ferlab.classes import CLASSES
from ferlab.data import DataError
from ferlab.data.arrays import load_split
from ferlab.evaluation.calibration import fit_temperature, nll
from ferlab.evaluation.metrics import (
    ECE_BINS,
    calibration_bins,
    classification_metrics,
    confusion_matrix,
    expected_calibration_error,
)
from ferlab.evaluation.plots import confusion_figure, note_figure, reliability_figure
from ferlab.evaluation.protocols import (
    DESCRIPTIONS,
    REFERENCE_SPLITS,
    clean_test_mask,
    read_votes,
    reference_subset,
)
from ferlab.inference import (
    FaceClassifier,
    ModelSource,
    TestTimeViews,
    TorchClassifier,
    Views,
    load_classifier,
    model_label,
    prior_from_labels,
    softmax,
    source_name,
    source_paths,
)
from ferlab.io import atomic_path, write_json

Log = Callable[[str], None]
MODEL_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1")
# Protocols whose confusion matrix is drawn (all are in the detail JSON).
FIGURE_PROTOCOLS = ("test", "reference_private", "clean_test")
DEFAULT_MODELS = {"study": "models/model.pt"}


@dataclass(frozen=True)
class EvaluateSettings:
    """The `evaluate` group of params.yaml (with the defaults used before a key is added)."""

    # name -> checkpoint, or a list of checkpoints scored as their mean (`MeanOfModels`)
    models: Mapping[str, str | list[str]] = field(default_factory=lambda: dict(DEFAULT_MODELS))
    batch_size: int = 256
    tta_flip: bool = True
    # centre crops scored beside the whole face (fractions of its side; `Views`)
    tta_crops: tuple[float, ...] = (1.0,)
    # name -> its own crops, for a model whose extra views are worth their cost (the study
    # model is not timed against the live loop's budget)
    tta_crops_by_model: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    logit_adjust_tau: float = 1.0

    def views_for(self, name: str) -> Views:
        """The test-time views model `name` is scored with, and exported with: its own crops
        if `tta_crops_by_model` lists it, else `tta_crops`."""
        return Views(self.tta_crops_by_model.get(name, self.tta_crops), self.tta_flip)

    def views_of_checkpoint(self, path: str | Path) -> Views:
        """The views of the listed model that is this one checkpoint (a run or an ensemble
        member is scored like the committed model it would replace); else the common ones."""
        for name, source in self.models.items():
            if isinstance(source, str) and Path(source) == Path(path):
                return self.views_for(name)
        return Views(self.tta_crops, self.tta_flip)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> EvaluateSettings:
        group = dict(params.get("evaluate") or {})
        models = group.get("models", DEFAULT_MODELS)
        if not isinstance(models, Mapping) or not models:
            raise DataError(
                "params.yaml evaluate.models must map model names to checkpoints, "
                "e.g. {ddamfn: models/model.pt}"
            )
        for name, source in models.items():
            if not MODEL_NAME.match(str(name)):
                raise DataError(
                    f"params.yaml evaluate.models: name {name!r} must be letters, digits, _ "
                    "or - (it becomes a metric prefix and a file name)"
                )
            if isinstance(source, list) and not source:
                raise DataError(
                    f"params.yaml evaluate.models.{name} is an empty list; give a checkpoint "
                    "or a list of them (scored as their mean)"
                )
        tau = float(group.get("logit_adjust_tau", 1.0))
        if tau < 0:
            raise DataError(f"params.yaml evaluate.logit_adjust_tau = {tau} must be 0 or more")
        crops = _checked_crops(group.get("tta_crops", [1.0]), "evaluate.tta_crops")
        by_model = group.get("tta_crops_by_model")
        by_model = {} if by_model is None else by_model
        if not isinstance(by_model, Mapping):
            raise DataError(
                "params.yaml evaluate.tta_crops_by_model must map model names to crop lists, "
                "e.g. {study: [1.0, 0.92]}"
            )
        for name in by_model:
            if name not in models:
                raise DataError(
                    f"params.yaml evaluate.tta_crops_by_model.{name}: no such model in "
                    f"evaluate.models ({', '.join(map(str, models))}); fix the name or drop it"
                )
        own_crops = {
            str(name): _checked_crops(own, f"evaluate.tta_crops_by_model.{name}")
            for name, own in by_model.items()
        }
        return cls(
            models={
                str(k): [str(p) for p in v] if isinstance(v, list) else str(v)
                for k, v in models.items()
            },
            batch_size=int(group.get("batch_size", 256)),
            tta_flip=bool(group.get("tta_flip", True)),
            tta_crops=crops,
            tta_crops_by_model=own_crops,
            logit_adjust_tau=tau,
        )


def _checked_crops(value: Any, key: str) -> tuple[float, ...]:
    """A params.yaml list of test-time crops, as `Views` checks them, or one line naming `key`."""
    if not isinstance(value, (list, tuple)):
        raise DataError(f"params.yaml {key} = {value!r} must be a list of crops, e.g. [1.0, 0.92]")
    try:
        return Views(tuple(value), False).crops
    except (TypeError, ValueError) as exc:
        raise DataError(f"params.yaml {key}: {exc}") from None


@dataclass
class Inputs:
    """What every model is scored on (one preprocessing variant)."""

    variant: str
    val: tuple[np.ndarray, np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray, np.ndarray]
    train_labels: np.ndarray
    # protocol -> (row positions in the test split, labels); absent protocols are in `skipped`
    protocols: dict[str, tuple[np.ndarray, np.ndarray]]
    skipped: dict[str, str]


def producing_stage(path: str | Path, dvc_yaml: str | Path = "dvc.yaml") -> str | None:
    """The dvc.yaml stage that writes `path`, if any (to name it in an error)."""
    import yaml

    dvc_yaml = Path(dvc_yaml)
    if not dvc_yaml.is_file():
        return None
    stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages") or {}
    for name, stage in stages.items():
        for out in stage.get("outs") or []:
            out_path = next(iter(out)) if isinstance(out, dict) else out
            if Path(str(out_path)) == Path(path):
                return str(name)
    return None


def check_checkpoints(models: Mapping[str, ModelSource]) -> None:
    """Every listed model file exists, or one line naming it and the stage that writes it."""
    for name, source in models.items():
        for path in source_paths(source):
            if path.is_file():
                continue
            stage = producing_stage(path)
            fix = f"run `dvc repro {stage}`" if stage else "train or export it first"
            raise FileNotFoundError(
                f"{path}: no model file for evaluate.models.{name}; {fix}, or remove the entry"
            )


def load_inputs(
    variant: str,
    arrays_root: str | Path,
    votes_csv: str | Path | None,
    manifest_csv: str | Path,
    leakage_json: str | Path,
    log: Log = print,
) -> Inputs:
    val = load_split("val", variant, arrays_root)
    test = load_split("test", variant, arrays_root)
    _, train_labels, _ = load_split("train", variant, arrays_root)
    _, test_labels, test_paths = test
    protocols: dict[str, tuple[np.ndarray, np.ndarray]] = {
        "test": (np.arange(len(test_labels)), test_labels)
    }
    skipped: dict[str, str] = {}
    if votes_csv is not None and Path(votes_csv).is_file():
        votes = read_votes(votes_csv)
        for protocol, ferplus_split in REFERENCE_SPLITS.items():
            rows, labels, absent = reference_subset(votes, ferplus_split, test_paths)
            protocols[protocol] = (rows, labels)
            if absent:
                log(f"evaluate: {protocol}: {absent} kept images are not in the test arrays")
    else:
        reason = f"{votes_csv}: FER+ vote file not found; set data.votes to ferplus_votes.csv"
        for protocol in REFERENCE_SPLITS:
            skipped[protocol] = reason
        log(f"evaluate: reference protocols NOT scored: {reason}")
    clean = clean_test_mask(test_paths, manifest_csv, leakage_json)
    protocols["clean_test"] = (np.flatnonzero(clean), test_labels[clean])
    for protocol, (rows, _) in list(protocols.items()):
        if len(rows) == 0:
            del protocols[protocol]
            skipped[protocol] = "no test image belongs to it"
    return Inputs(variant, val, test, train_labels, protocols, skipped)


def protocol_metrics(
    classifier: FaceClassifier, logits: np.ndarray, labels: np.ndarray
) -> dict[str, Any]:
    """Argmax and prior-corrected metrics, ECE before and after calibration, the matrices."""
    raw = softmax(logits.astype(np.float64))
    calibrated = softmax(logits.astype(np.float64) / classifier.temperature)
    plain = classification_metrics(labels, raw)
    corrected_preds = classifier.decide(logits)
    corrected = classification_metrics(labels, classifier.proba(logits), preds=corrected_preds)
    return {
        **plain,
        "confusion": confusion_matrix(labels, raw.argmax(1)).tolist(),
        "prior_corrected": {
            k: corrected[k] for k in (*HEADLINE, "per_class_recall", "per_class_precision")
        }
        | {"confusion": confusion_matrix(labels, corrected_preds).tolist()},
        "ece": expected_calibration_error(raw, labels),
        "ece_calibrated": expected_calibration_error(calibrated, labels),
        "nll_calibrated": nll(logits, labels, classifier.temperature),
    }


def headline(detail: dict[str, Any]) -> dict[str, Any]:
    """The few numbers of one model that go into reports/metrics.json."""
    out: dict[str, Any] = {"model": detail["model"], "variant": detail["variant"]}
    for protocol, m in detail["protocols"].items():
        out[protocol] = {"n": m["n"], **{k: m[k] for k in HEADLINE}} | {
            f"prior_corrected_{k}": m["prior_corrected"][k] for k in HEADLINE
        }
    out["val"] = {"n": detail["val"]["n"], **{k: detail["val"][k] for k in HEADLINE}}
    test = detail["protocols"]["test"]
    out["calibration"] = {
        "temperature": detail["temperature"],
        "ece": test["ece"],
        "ece_calibrated": test["ece_calibrated"],
        "nll": test["loss"],
        "nll_calibrated": test["nll_calibrated"],
    }
    return out


def evaluate_model(
    name: str,
    path: ModelSource,
    settings: EvaluateSettings,
    inputs_for: Callable[[str], Inputs],
    details: Path,
    figures: Path,
    log: Log = print,
) -> tuple[dict[str, Any], np.ndarray]:
    """Score one model; write its detail files. Returns (detail, test logits)."""
    views = settings.views_for(name)
    classifier = load_classifier(path, views=views, temperature=1.0)
    variant = str(classifier.meta.get("variant", "original"))
    inputs = inputs_for(variant)
    if classifier.class_prior is None:
        try:
            classifier.class_prior = prior_from_labels(inputs.train_labels, len(CLASSES))
        except ValueError as exc:
            raise DataError(f"{name}: {exc}") from None
    classifier.logit_adjust_tau = settings.logit_adjust_tau
    val_images, val_labels, _ = inputs.val
    test_images, test_labels, _ = inputs.test
    shown = " + ".join(str(p) for p in source_paths(path))
    log(f"evaluate: {name} ({shown}): {len(val_labels)} val and {len(test_labels)} test faces")
    val_logits = classifier.logits(val_images, settings.batch_size)
    test_logits = classifier.logits(test_images, settings.batch_size)
    classifier.temperature = fit_temperature(val_logits, val_labels)
    single_view: dict[str, Any] = {}
    if isinstance(classifier, TorchClassifier) and isinstance(classifier.model, TestTimeViews):
        # What the views add: the same weights on the face alone.
        plain = TorchClassifier(classifier.model.model, classifier.meta, temperature=1.0)
        logits = plain.logits(val_images, settings.batch_size).astype(np.float64)
        single_view = {"val_no_tta": classification_metrics(val_labels, softmax(logits))}

    detail: dict[str, Any] = {
        "name": name,
        "checkpoint": source_name(path),
        "model": model_label(classifier.meta["model"]),
        "variant": variant,
        "views": views.to_json(),
        "logit_adjust_tau": settings.logit_adjust_tau,
        "class_prior": classifier.class_prior.tolist(),
        "class_prior_source": (
            "model file" if classifier.meta.get("class_prior") is not None else "train split"
        ),
        "temperature": classifier.temperature,
        "ece_bins": ECE_BINS,
        "val": {
            **classification_metrics(val_labels, softmax(val_logits.astype(np.float64))),
            "nll_calibrated": nll(val_logits, val_labels, classifier.temperature),
        },
        **single_view,
        "protocols": {},
        "skipped": dict(inputs.skipped),
        "descriptions": DESCRIPTIONS,
    }
    for protocol, (rows, labels) in inputs.protocols.items():
        detail["protocols"][protocol] = protocol_metrics(classifier, test_logits[rows], labels)

    for protocol in FIGURE_PROTOCOLS:
        m = detail["protocols"].get(protocol)
        if m is not None:
            confusion_figure(
                np.array(m["confusion"]),
                figures / f"{name}_confusion_{protocol}.png",
                f"{name}, {protocol} (n={m['n']:,}): accuracy {m['accuracy']:.3f}, "
                f"balanced {m['balanced_accuracy']:.3f}",
            )
    reliability_figure(
        {
            "before": calibration_bins(softmax(test_logits.astype(np.float64)), test_labels),
            f"after (T={classifier.temperature:.2f})": calibration_bins(
                softmax(test_logits.astype(np.float64) / classifier.temperature), test_labels
            ),
        },
        figures / f"{name}_reliability.png",
        f"{name}: test reliability, ECE {detail['protocols']['test']['ece']:.3f} → "
        f"{detail['protocols']['test']['ece_calibrated']:.3f}",
    )
    _attention(
        classifier, test_images, test_labels, test_logits, figures / f"{name}_attention_maps.png"
    )
    write_json(details / f"{name}.json", detail)
    write_per_class(detail, details / f"{name}_per_class.csv")
    write_test_predictions(
        classifier, inputs, test_logits, details / f"{name}_predictions_test.csv"
    )
    return detail, test_logits


def _attention(
    classifier: FaceClassifier,
    images: np.ndarray,
    labels: np.ndarray,
    logits: np.ndarray,
    path: Path,
) -> None:
    """One correctly classified test face per class: where MFN and DDAN look."""
    from ferlab.evaluation.attention_maps import attention_figure

    model = getattr(classifier, "model", None)
    if isinstance(model, TestTimeViews):
        model = model.model  # the maps are of the network itself, on the whole face
    name = model_label(classifier.meta["model"])
    if not hasattr(model, "forward_with_heads"):
        note_figure(f"{name} has no attention heads: no attention maps", path)
        return
    right = labels == logits.argmax(1)
    picks = [
        int(np.flatnonzero(right & (labels == c))[0])
        for c in range(len(CLASSES))
        if (right & (labels == c)).any()
    ]
    if not picks:
        note_figure(f"{name} classified no test face correctly: no attention maps", path)
        return
    attention_figure(model, images[picks], path, max_faces=len(picks))


def write_per_class(detail: dict[str, Any], path: Path) -> None:
    """protocol, decision, class, support, precision, recall: one row per class."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["protocol", "decision", "class", "support", "precision", "recall"])
        for protocol, m in detail["protocols"].items():
            for decision, part in (("argmax", m), ("prior_corrected", m["prior_corrected"])):
                for c in CLASSES:
                    p, r = part["per_class_precision"][c], part["per_class_recall"][c]
                    writer.writerow(
                        [
                            protocol,
                            decision,
                            c,
                            m["support"][c],
                            "" if p is None else f"{p:.6f}",
                            "" if r is None else f"{r:.6f}",
                        ]
                    )


def write_test_predictions(
    classifier: FaceClassifier, inputs: Inputs, logits: np.ndarray, path: Path
) -> None:
    """One row per test image: label, both decisions, calibrated probabilities, and which
    protocols it belongs to (with the reference label where it has one)."""
    _, labels, paths = inputs.test
    probs = softmax(logits.astype(np.float64) / classifier.temperature)
    corrected = classifier.decide(logits)
    member = {p: np.zeros(len(labels), bool) for p in inputs.protocols if p != "test"}
    reference = np.full(len(labels), "", dtype=object)
    for protocol in member:
        rows, protocol_labels = inputs.protocols[protocol]
        member[protocol][rows] = True
        if protocol.startswith("reference"):
            reference[rows] = [CLASSES[i] for i in protocol_labels]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "path",
                "label",
                "predicted",
                "predicted_prior_corrected",
                "confidence",
                "reference_label",
                *(f"in_{p}" for p in member),
                *CLASSES,
            ]
        )
        for i, row in enumerate(probs):
            top = int(row.argmax())
            writer.writerow(
                [
                    paths[i],
                    CLASSES[labels[i]],
                    CLASSES[int(logits[i].argmax())],
                    CLASSES[int(corrected[i])],
                    f"{row[top]:.6f}",
                    reference[i],
                    *(int(member[p][i]) for p in member),
                    *(f"{v:.6f}" for v in row),
                ]
            )


def write_confusion_csv(labels: np.ndarray, preds: np.ndarray, path: str | Path) -> None:
    """One row per image (actual, predicted): the layout DVC's confusion template reads."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["actual", "predicted"])
        writer.writerows((CLASSES[a], CLASSES[p]) for a, p in zip(labels, preds, strict=True))


def evaluate_models(
    settings: EvaluateSettings,
    arrays_root: str | Path = "data/arrays",
    reports: str | Path = "reports",
    votes_csv: str | Path | None = None,
    manifest_csv: str | Path = "data/manifest.csv",
    leakage_json: str | Path = "reports/leakage.json",
    log: Log = print,
) -> dict[str, Any]:
    """The evaluate stage: score every model of `settings.models`; returns metrics.json's
    content (also written), keyed by model name."""
    reports = Path(reports)
    check_checkpoints(settings.models)
    cache: dict[str, Inputs] = {}

    def inputs_for(variant: str) -> Inputs:
        if variant not in cache:
            cache[variant] = load_inputs(
                variant, arrays_root, votes_csv, manifest_csv, leakage_json, log
            )
        return cache[variant]

    metrics: dict[str, Any] = {}
    # The two folders are the stage's own: rebuilt whole, so a dropped model leaves nothing.
    with (
        atomic_path(reports / "evaluation", folder=True) as details,
        atomic_path(reports / "figures" / "evaluation", folder=True) as figures,
    ):
        details.mkdir()
        figures.mkdir()
        for i, (name, path) in enumerate(settings.models.items()):
            detail, test_logits = evaluate_model(
                name, path, settings, inputs_for, details, figures, log
            )
            metrics[name] = headline(detail)
            if i == 0:
                _, labels, _ = inputs_for(detail["variant"]).test
                write_confusion_csv(labels, test_logits.argmax(1), reports / "confusion_test.csv")
            log(summary_line(name, metrics[name]))
    write_json(reports / "metrics.json", metrics)
    return metrics


def summary_line(name: str, m: dict[str, Any]) -> str:
    parts = [
        f"{protocol} {m[protocol]['accuracy']:.4f}/{m[protocol]['balanced_accuracy']:.4f}"
        for protocol in ("test", "reference_private", "reference_public", "clean_test")
        if protocol in m
    ]
    cal = m["calibration"]
    return (
        f"evaluate: {name}: accuracy/balanced " + ", ".join(parts) + f"; T={cal['temperature']:.3f}"
        f", ECE {cal['ece']:.4f} -> {cal['ece_calibrated']:.4f}"
    )


# --------------------------------------------------------------------------------------------
# One checkpoint on val and test only (`ferlab train-run`'s quick report)


def evaluate_checkpoint(
    checkpoint: str | Path,
    arrays_root: str | Path = "data/arrays",
    reports: str | Path = "reports",
    batch_size: int = 256,
) -> dict[str, Any]:
    """Plain argmax scoring of one checkpoint on the cached val and test arrays (its variant):
    metrics.json {variant, model, val, test}, confusion figures, confusion_test.csv,
    predictions_test.csv and the attention figure in `reports`. The evaluate stage's full
    protocol set is `evaluate_models`."""
    reports = Path(reports)
    classifier = load_classifier(checkpoint, temperature=1.0)
    variant = str(classifier.meta.get("variant", "original"))
    results: dict[str, Any] = {"variant": variant, "model": model_label(classifier.meta["model"])}
    for split in ("val", "test"):
        images, labels, paths = load_split(split, variant, arrays_root)
        logits = classifier.logits(images, batch_size)
        probs = softmax(logits.astype(np.float64))
        metrics = classification_metrics(labels, probs)
        results[split] = metrics
        confusion_figure(
            confusion_matrix(labels, probs.argmax(1)),
            reports / "figures" / f"confusion_{split}.png",
            f"{split}: accuracy {metrics['accuracy']:.3f}, "
            f"balanced {metrics['balanced_accuracy']:.3f}",
        )
        if split == "test":
            write_confusion_csv(labels, probs.argmax(1), reports / "confusion_test.csv")
            write_predictions(paths, labels, probs, reports / "predictions_test.csv")
            _attention(
                classifier, images, labels, logits, reports / "figures" / "attention_maps.png"
            )
    write_json(reports / "metrics.json", results)
    return results


def write_predictions(paths: np.ndarray, labels: np.ndarray, probs: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "predicted", "confidence", *CLASSES])
        for p, label, row in zip(paths, labels, probs, strict=True):
            pred = int(row.argmax())
            writer.writerow(
                [p, CLASSES[label], CLASSES[pred], f"{row[pred]:.6f}", *(f"{v:.6f}" for v in row)]
            )
