"""Stage `split`: data/manifest.csv -> data/split.csv (train / val / test) and split counts."""

from __future__ import annotations

import logging
import sys

from ferlab import tracking
from ferlab.config import load_params
from ferlab.data.splits import run_split
from ferlab.io import write_json
from ferlab.stage import run_stage


def main() -> None:
    # Our progress lines at INFO; the libraries' (great-expectations, MLflow) only when warnings.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("ferlab").setLevel(logging.INFO)
    params = load_params()
    with tracking.stage_run("split", params, experiment=params["mlflow"]["experiment"]):
        report = run_split(params["split"], params["seed"])
        write_json("reports/split_counts.json", report)
        metrics = {f"images_{split}": n for split, n in report["totals"].items()}
        metrics["dropped_duplicates"] = report["dropped_duplicates"]
        for split, counts in report["counts"].items():
            metrics.update({f"count_{split}_{label}": n for label, n in counts.items()})
        tracking.log_metrics(metrics)
        tracking.log_artifacts("reports/split_counts.json")


if __name__ == "__main__":
    sys.exit(run_stage("split", main))
