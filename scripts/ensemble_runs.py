"""What averaging several trained models' probabilities scores: the teacher a distilled live
model could learn from, or an ensemble worth shipping if its cost fits.

Each checkpoint is scored as the evaluate stage scores it (the test-time views of the listed
model it is, else the common views; the same protocols on the cached arrays); then the mean
of the first k models' probabilities for k = 1 .. N, in the order
given. Choose the order on validation (the first model is the committed one), never on the test
protocols this reports.

    python scripts/ensemble_runs.py models/fast.pt models/runs/w05-seed7/model.pt \\
        --out reports/ensemble_fast
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ferlab.cli import TRAIN_RUN_PROTOCOLS  # noqa: E402  (the protocols a run is scored on)
from ferlab.config import data_path, load_params  # noqa: E402
from ferlab.evaluation.evaluate import EvaluateSettings, load_inputs  # noqa: E402
from ferlab.evaluation.metrics import classification_metrics  # noqa: E402
from ferlab.inference import load_classifier, softmax  # noqa: E402
from ferlab.io import write_json, write_text  # noqa: E402
from ferlab.machine import cpu_name  # noqa: E402


def probabilities(checkpoints: list[Path], params: dict, arrays: str) -> tuple[list, list, object]:
    """Each model's val and test probabilities (test-time views as params' evaluate group
    says)."""
    settings = EvaluateSettings.from_params(params)
    classifiers = []
    for path in checkpoints:
        if not path.is_file():
            raise SystemExit(f"ensemble_runs: {path}: no such checkpoint; train it first")
        views = settings.views_of_checkpoint(path)  # as evaluate scores that checkpoint
        classifiers.append(load_classifier(path, views=views, temperature=1.0))
    variants = {str(c.meta.get("variant", "original")) for c in classifiers}
    if len(variants) > 1:
        raise SystemExit(f"ensemble_runs: the models were trained on different variants {variants}")
    votes = params["data"].get("votes")
    inputs = load_inputs(
        variants.pop(),
        arrays,
        data_path(votes) if votes else None,
        "data/manifest.csv",
        "reports/leakage.json",
    )
    val, test = [], []
    for path, classifier in zip(checkpoints, classifiers, strict=True):
        for images, out in ((inputs.val[0], val), (inputs.test[0], test)):
            logits = classifier.logits(images, settings.batch_size)
            out.append(softmax(logits.astype(np.float64)))
        print(f"ensemble_runs: scored {path}", flush=True)
    return val, test, inputs


def rows_for(checkpoints: list[Path], val: list, test: list, inputs) -> list[dict]:
    """One row per k: the mean probability of the first k models on every protocol."""
    rows = []
    for k in range(1, len(checkpoints) + 1):
        mean_val, mean_test = np.mean(val[:k], axis=0), np.mean(test[:k], axis=0)
        row = {
            "models": [str(p) for p in checkpoints[:k]],
            "val": classification_metrics(inputs.val[1], mean_val)["accuracy"],
        }
        for protocol in TRAIN_RUN_PROTOCOLS:
            if protocol in inputs.protocols:
                index, labels = inputs.protocols[protocol]
                m = classification_metrics(labels, mean_test[index])
                row[protocol] = {"accuracy": m["accuracy"], "balanced": m["balanced_accuracy"]}
        rows.append(row)
    return rows


def markdown(rows: list[dict], cpu: str) -> str:
    lines = [
        "# Ensembles of trained models",
        "",
        "Mean of the first k models' probabilities (each with its evaluate views), scored on "
        "the evaluate stage's protocols; accuracy in % (balanced in brackets). `python "
        f"scripts/ensemble_runs.py`, on {cpu}.",
        "",
        "| k | last model added | val | " + " | ".join(TRAIN_RUN_PROTOCOLS.values()) + " |",
        "|---:|---|---:|" + "---:|" * len(TRAIN_RUN_PROTOCOLS),
    ]
    for k, row in enumerate(rows, 1):
        cells = [
            f"{100 * row[p]['accuracy']:.2f} ({100 * row[p]['balanced']:.2f})" if p in row else "-"
            for p in TRAIN_RUN_PROTOCOLS
        ]
        lines.append(
            f"| {k} | `{row['models'][-1]}` | {100 * row['val']:.2f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help="model .pt files, in order")
    parser.add_argument("--arrays", default="data/arrays", help="the cached arrays")
    parser.add_argument("--out", default="reports/ensemble_fast", help="writes OUT.json, OUT.md")
    args = parser.parse_args()
    params = load_params()
    val, test, inputs = probabilities(args.checkpoints, params, args.arrays)
    rows = rows_for(args.checkpoints, val, test, inputs)
    cpu = cpu_name()
    out, text = Path(args.out), markdown(rows, cpu)
    write_json(out.with_suffix(".json"), {"cpu": cpu, "rows": rows})
    write_text(out.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()
