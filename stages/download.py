"""Stage `download`: data.source (Kaggle, URL, local zip or folder) -> data/raw/<split>/<class>/."""

from __future__ import annotations

import logging
import sys

from ferlab import tracking
from ferlab.config import data_path, load_params
from ferlab.data.download import prepare_raw
from ferlab.stage import run_stage

KEYS = ("source", "local_copies", "sha256", "max_extract_mb")


def main() -> None:
    # Our progress lines at INFO; the libraries' (great-expectations, MLflow) only when warnings.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("ferlab").setLevel(logging.INFO)
    params = load_params()
    data = {key: params["data"][key] for key in KEYS}
    with tracking.stage_run("download", params, experiment=params["mlflow"]["experiment"]):
        summary = prepare_raw(
            source=data["source"],
            target="data/raw",
            local_copies=[data_path(p) for p in data["local_copies"] or []],
            sha256=data["sha256"] or "",
            max_extract_mb=float(data["max_extract_mb"]),
        )
        tracking.log_metrics({f"images_{k}": v for k, v in summary["counts"].items()})


if __name__ == "__main__":
    sys.exit(run_stage("download", main))
