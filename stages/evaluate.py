"""DVC stage `evaluate`: every model of evaluate.models under each test protocol, side by side."""

import sys

from ferlab import tracking
from ferlab.config import data_path, flatten, load_params
from ferlab.evaluation.evaluate import EvaluateSettings, evaluate_models
from ferlab.evaluation.metrics import near_chance
from ferlab.io import read_json
from ferlab.stage import run_stage


def main() -> None:
    params = load_params()
    settings = EvaluateSettings.from_params(params)
    with tracking.stage_run("evaluate", params, experiment=params["mlflow"]["experiment"]):
        metrics = evaluate_models(
            settings,
            "data/arrays",
            "reports",
            votes_csv=data_path(params["data"]["votes"]) if params["data"].get("votes") else None,
            manifest_csv="data/manifest.csv",
            leakage_json="reports/leakage.json",
        )
        counts = read_json("reports/split_counts.json")["counts"]["test"]
        for name, entry in metrics.items():
            if near_chance(entry["test"]["accuracy"], counts):
                print(
                    f"WARNING: {name} scores {entry['test']['accuracy']:.1%} on the test split, "
                    "near chance (the commonest class alone scores about as much): this model "
                    "has not learnt the task; do not ship it",
                    file=sys.stderr,
                )
        # The same dotted names as reports/metrics.json (`ddamfn.clean_test.accuracy`).
        tracking.log_metrics(flatten(metrics))
        tracking.log_artifacts(
            "reports/metrics.json", "reports/evaluation", "reports/figures/evaluation"
        )


if __name__ == "__main__":
    sys.exit(run_stage("evaluate", main))
