"""DVC stage `evaluate`: accuracy, balanced accuracy, macro-F1, loss, confusion matrices."""

import sys

from ferlab import tracking
from ferlab.config import load_params
from ferlab.evaluation.evaluate import evaluate_checkpoint
from ferlab.stage import run_stage


def main() -> None:
    params = load_params()
    with tracking.stage_run("evaluate", params, experiment=params["mlflow"]["experiment"]):
        results = evaluate_checkpoint(
            "models/model.pt", batch_size=params["evaluate"]["batch_size"]
        )
        for split in ("val", "test"):
            m = results[split]
            tracking.log_metrics(
                {
                    f"{split}_{k}": m[k]
                    for k in ("accuracy", "balanced_accuracy", "macro_f1", "loss")
                }
            )
            print(
                f"{split}: accuracy {m['accuracy']:.4f} balanced {m['balanced_accuracy']:.4f} "
                f"macro-F1 {m['macro_f1']:.4f} loss {m['loss']:.4f} (n={m['n']})"
            )
        tracking.log_artifacts(
            "reports/metrics.json",
            "reports/figures/confusion_test.png",
            "reports/figures/confusion_val.png",
        )


if __name__ == "__main__":
    sys.exit(run_stage("evaluate", main))
