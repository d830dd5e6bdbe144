"""DVC stage `report`: reports/study.md from the other stages' reports (the DAG's last stage)."""

import sys

from ferlab import tracking
from ferlab.config import load_params
from ferlab.evaluation.report import build_report
from ferlab.io import write_text
from ferlab.stage import run_stage

OUT = "reports/study.md"


def main() -> None:
    params = load_params()
    with tracking.stage_run("report", params, experiment=params["mlflow"]["experiment"]):
        write_text(OUT, build_report("reports"))
        tracking.log_artifacts(OUT)
        print(f"wrote {OUT}")


if __name__ == "__main__":
    sys.exit(run_stage("report", main))
