"""Stage `validate`: data/raw -> data/manifest.csv, with great-expectations and leakage reports."""

from __future__ import annotations

import logging
import sys

from ferlab import tracking
from ferlab.config import load_params
from ferlab.data import DataError
from ferlab.data.validation import failure_message, report_metrics, validate_raw
from ferlab.stage import run_stage

REPORTS = (
    "reports/validation.json",
    "reports/validation.md",
    "reports/leakage.json",
    "reports/figures/leakage_examples.png",
)


def main() -> None:
    # Our progress lines at INFO; the libraries' (great-expectations, MLflow) only when warnings.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("ferlab").setLevel(logging.INFO)
    params = load_params()
    vparams = params["validate"]
    with tracking.stage_run("validate", params, experiment=params["mlflow"]["experiment"]):
        report = validate_raw(vparams, raw="data/raw", reports="reports")
        tracking.log_metrics(report_metrics(report))
        tracking.log_artifacts(*REPORTS)
        if not report["success"]:
            raise DataError(failure_message(report, "reports/validation.md"))
    print(f"validation passed: {report['totals']} images; manifest in data/manifest.csv")


if __name__ == "__main__":
    sys.exit(run_stage("validate", main))
