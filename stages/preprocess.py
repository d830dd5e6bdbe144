"""DVC stage `preprocess`: RetinaFace detection + 5-point alignment, cached as uint8 arrays.

Reads data/split.csv; writes data/arrays/{original,retinaface}_{train,val,test}.npz,
data/detections.csv, reports/detection.json and reports/figures/alignment.png.
"""

from __future__ import annotations

import sys

from ferlab import tracking
from ferlab.config import load_params
from ferlab.data.arrays import (
    REQUIRED_COLUMNS,
    SPLITS,
    detection_summary,
    preprocess_table,
    save_arrays,
    summary_metrics,
)
from ferlab.data.splits import read_split
from ferlab.faces.align import alignment_figure
from ferlab.faces.detect import FaceDetector
from ferlab.io import atomic_path, write_json
from ferlab.stage import run_stage

SPLIT_TABLE = "data/split.csv"
ARRAYS = "data/arrays"
DETECTIONS = "data/detections.csv"
REPORT = "reports/detection.json"
FIGURE = "reports/figures/alignment.png"


def main() -> None:
    params = load_params()
    p = params["preprocess"]
    table = read_split(SPLIT_TABLE, required=REQUIRED_COLUMNS)
    for split in SPLITS:
        if not (table["split"] == split).any():
            print(f"preprocess: warning: {SPLIT_TABLE} has no {split!r} rows", file=sys.stderr)
    detector = FaceDetector(
        score_threshold=p["score_threshold"],
        nms_threshold=p["nms_threshold"],
        upscale=p["upscale"],
    )
    with tracking.stage_run("preprocess", params, experiment=params["mlflow"]["experiment"]):
        result = preprocess_table(table, detector, size=p["size"], batch_size=p["batch_size"])
        settings = {**detector.settings(), "size": p["size"], "batch_size": p["batch_size"]}
        summary = detection_summary(result.detections, settings, result.images_per_second)

        save_arrays(result.arrays, ARRAYS)
        with atomic_path(DETECTIONS) as tmp:
            result.detections.to_csv(tmp, index=False, float_format="%.4f")
        write_json(REPORT, summary)
        alignment_figure(
            [(e.original, e.face, e.aligned, e.title) for e in result.examples], FIGURE
        )

        tracking.log_metrics(summary_metrics(summary))
        tracking.log_artifacts(REPORT, FIGURE)
    print(
        f"preprocess: {summary['images']} images, face found in {summary['detection_rate']:.2%} "
        f"({summary['images_per_second']:.0f} images/s); arrays in {ARRAYS}/"
    )


if __name__ == "__main__":
    sys.exit(run_stage("preprocess", main))
