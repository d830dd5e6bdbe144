"""Stage `download`: data.source (Kaggle, URL, local zip or folder) -> data/raw/<split>/<class>/."""

from __future__ import annotations

import logging
import sys

from ferlab import tracking
from ferlab.config import load_params
from ferlab.data import DataError
from ferlab.data.download import prepare_raw

KEYS = ("source", "local_copies", "sha256", "max_extract_mb")


def main() -> int:
    # Our progress lines at INFO; the libraries' (great-expectations, MLflow) only when warnings.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("ferlab").setLevel(logging.INFO)
    params = load_params()
    data = {key: params["data"][key] for key in KEYS}
    try:
        with tracking.stage_run(
            "download", {"data": data}, experiment=params["mlflow"]["experiment"]
        ):
            summary = prepare_raw(
                source=data["source"],
                target="data/raw",
                local_copies=data["local_copies"] or [],
                sha256=data["sha256"] or "",
                max_extract_mb=float(data["max_extract_mb"]),
            )
            tracking.log_metrics({f"images_{k}": v for k, v in summary["counts"].items()})
    except DataError as exc:
        print(f"download failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
