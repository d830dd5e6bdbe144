"""The bundled default model: chosen by measurement from a full run's exports, deliberately.

`ferlab bundle` (never a pipeline stage, so small or experimental runs cannot replace what is
committed) reads the export stage's report (files, speed, int8 accuracy) and the evaluate
stage's metrics, keeps the exports that cost at most `max_ms` a face (batch 1, one thread) and
weigh at most `max_mb` (the live model's budgets), and bundles the most accurate on the FER+
reference protocol and the clean test, less what its int8 copy measurably lost. Where both of a
model's exports fit, int8 is used only where it is no less accurate (within 2 faces in 1,000)
and faster or smaller. The model card lists every candidate's figures and the rule.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ferlab.data import DataError
from ferlab.evaluation.metrics import near_chance
from ferlab.io import atomic_path, file_sha256, read_json, write_json

BUNDLED_DIR = Path("src/ferlab/bundled")
MAX_INT8_DROP = 0.002  # int8 counts as equally accurate within 2 faces in 1,000
MAX_MS = 2.0  # a face at batch 1 on one thread: the live loop's budget for the classifier
MAX_MB = 2.0  # the live model's size budget (the package ships it)


def score(metrics: dict[str, Any]) -> float:
    """What the choice maximises: the mean of reference-protocol and clean-test accuracy."""
    return (metrics["reference_private"]["accuracy"] + metrics["clean_test"]["accuracy"]) / 2


def candidates(exports: dict[str, Any], metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model and precision, with what the choice and the card need."""
    rows = []
    for name, export in exports.items():
        if name not in metrics:
            raise DataError(
                f"reports/metrics.json has no entry for exported model {name!r}; "
                "run `dvc repro evaluate export` first"
            )
        m = metrics[name]
        for precision in ("fp32", "int8"):
            drop = export["int8_accuracy_drop"] if precision == "int8" else 0.0
            rows.append(
                {
                    "model": name,
                    "precision": precision,
                    "file": export["files"][precision],
                    "sha256": export["sha256"][precision],
                    "size_mb": export[f"{precision}_size_mb"],
                    "ms_per_face_1_thread": export["ms_per_face_1_thread"][precision],
                    # test-time views inside the graph: the scores below are of these views
                    "views": export.get("views"),
                    "accuracy_drop_vs_pytorch": drop,
                    "reference_private_accuracy": m["reference_private"]["accuracy"],
                    "clean_test_accuracy": m["clean_test"]["accuracy"],
                    "clean_test_balanced_accuracy": m["clean_test"]["balanced_accuracy"],
                    "test_accuracy": m["test"]["accuracy"],
                    "score": score(m),
                    # What the choice ranks: the model's score less what this export lost
                    # against PyTorch on the export stage's test faces.
                    "deployed_score": score(m) - max(0.0, drop),
                }
            )
    return rows


def choose(
    rows: list[dict[str, Any]], max_ms: float = MAX_MS, max_mb: float = MAX_MB
) -> dict[str, Any]:
    """The most accurate export within the speed and size budgets (ranked by
    `deployed_score`), in its model's preferred precision where both of its exports fit."""
    by_model: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_model.setdefault(row["model"], {})[row["precision"]] = row
    picks = []
    for versions in by_model.values():
        fp32, int8 = versions["fp32"], versions["int8"]
        int8_better = int8["accuracy_drop_vs_pytorch"] <= MAX_INT8_DROP and (
            int8["ms_per_face_1_thread"] < fp32["ms_per_face_1_thread"]
            or int8["size_mb"] < fp32["size_mb"]
        )
        pick = int8 if int8_better else fp32
        fits = [
            v
            for v in (pick, fp32, int8)
            if v["ms_per_face_1_thread"] <= max_ms and v["size_mb"] <= max_mb
        ]
        if fits:
            picks.append(fits[0])
    if not picks:
        fastest = min(rows, key=lambda r: r["ms_per_face_1_thread"])
        smallest = min(rows, key=lambda r: r["size_mb"])
        raise DataError(
            f"no exported model costs at most {max_ms} ms a face and weighs at most {max_mb} MB "
            f"(fastest: {fastest['model']} {fastest['precision']} at "
            f"{fastest['ms_per_face_1_thread']:.2f} ms; smallest: {smallest['model']} "
            f"{smallest['precision']} at {smallest['size_mb']:.2f} MB); raise --max-ms or --max-mb"
        )
    return max(picks, key=lambda r: r["deployed_score"])


def bundle(
    params: dict[str, Any],
    exports_json: str | Path = "reports/export.json",
    metrics_json: str | Path = "reports/metrics.json",
    split_counts_json: str | Path = "reports/split_counts.json",
    target_dir: str | Path = BUNDLED_DIR,
    max_ms: float = MAX_MS,
    max_mb: float = MAX_MB,
    log=print,
) -> dict[str, Any]:
    """Choose and copy the bundled model, write its model card; returns the card."""
    subset = int((params.get("split") or {}).get("max_per_class", 0))
    if subset:
        raise DataError(
            f"params.yaml split.max_per_class={subset}: this is a subset run, not the study; "
            "the bundled model comes only from a full run (split.max_per_class: 0)"
        )
    for path in (exports_json, metrics_json, split_counts_json):
        if not Path(path).is_file():
            raise DataError(f"{path}: not found; run `dvc repro export` first")
    exports, metrics = read_json(exports_json), read_json(metrics_json)
    rows = candidates(exports, metrics)
    chosen = choose(rows, max_ms, max_mb)
    source = Path(chosen["file"])
    if not source.is_file() or file_sha256(source) != chosen["sha256"]:
        raise DataError(
            f"{source}: missing or not the file reports/export.json describes; "
            "run `dvc repro export` (or `dvc checkout`) first"
        )
    counts = read_json(split_counts_json)["counts"]["test"]
    if near_chance(chosen["test_accuracy"], counts):
        raise DataError(
            f"{chosen['model']} scores {chosen['test_accuracy']:.1%} on the test split, near "
            "chance: NOT bundled; train the full study first"
        )
    target_dir = Path(target_dir)
    with atomic_path(target_dir / "model.onnx") as tmp:
        shutil.copyfile(source, tmp)
    from ferlab.tracking import git_commit

    card = {
        "name": "ferlab expression model",
        "chosen": {k: chosen[k] for k in ("model", "precision", "file", "sha256")},
        "rule": (
            f"among the exports costing at most {max_ms} ms a face (batch 1, one ONNX Runtime "
            "thread, measured by the export stage, with the test-time views the graph holds "
            f"and the scores were taken with) and weighing at most {max_mb} MB, the "
            "highest mean of FER+ reference-protocol (PrivateTest) and clean-test accuracy less "
            "the export's measured accuracy drop against PyTorch; where both of a model's exports "
            f"fit, int8 only where it is within {MAX_INT8_DROP:.1%} of PyTorch and faster or "
            "smaller than fp32"
        ),
        "candidates": rows,
        "metrics": metrics[chosen["model"]],
        "params": {
            k: params.get(k) for k in ("seed", "model", "fast", "fast_second", "train", "evaluate")
        },
        "git_commit": git_commit(),
        "file": "model.onnx",
        "size_bytes": (target_dir / "model.onnx").stat().st_size,
    }
    write_json(target_dir / "model_card.json", card)
    log(
        f"bundled {chosen['model']} ({chosen['precision']}, "
        f"{chosen['ms_per_face_1_thread']:.2f} ms a face, reference "
        f"{chosen['reference_private_accuracy']:.1%}, clean test "
        f"{chosen['clean_test_accuracy']:.1%}) -> {target_dir / 'model.onnx'}"
    )
    return card
