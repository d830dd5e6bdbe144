"""DVC stage `age_model`: train the kids/adults classifier on UTKFace (FER-like crops)."""

import sys

import cv2

from ferlab import tracking
from ferlab.age.data import age_groups, example_sheet, load_faces
from ferlab.age.model import train_age_model
from ferlab.config import data_path, load_params
from ferlab.io import atomic_path, write_json
from ferlab.stage import run_stage

MODEL = "models/age.pt"
REPORT = "reports/age_model.json"
SHEET = "reports/figures/study_age_crops.png"


def main() -> None:
    params = load_params()
    age = params["age"]
    with tracking.stage_run("age_model", params, experiment=params["mlflow"]["experiment"]):
        faces = load_faces(
            data_path(age["source"]),
            size=int(age["size"]),
            scale=float(age["crop_scale"]),
            center_y=float(age["crop_center_y"]),
            max_extract_mb=float(params["data"]["max_extract_mb"]),
        )
        groups = age_groups(faces.ages, int(age["kids_max_age"]))
        with atomic_path(SHEET) as tmp:
            ok, buf = cv2.imencode(".png", example_sheet(faces, groups, seed=params["seed"]))
            if not ok:
                raise RuntimeError(f"{SHEET}: PNG encoding failed")
            tmp.write_bytes(buf.tobytes())
        report = train_age_model(faces, age, params["train"], params["seed"], MODEL)
        write_json(REPORT, report)
        for row in report["history"]:
            tracking.log_metrics(row, step=int(row["epoch"]))
        val = report["val"]
        tracking.log_metrics(
            {
                "age_val_accuracy": val["accuracy"],
                "age_val_balanced_accuracy": val["balanced_accuracy"],
                "age_skipped_names": report["data"]["skipped_malformed_names"],
            }
        )
        tracking.log_artifacts(MODEL, REPORT, SHEET)
        print(
            f"age model: held-out accuracy {val['accuracy']:.4f}, balanced "
            f"{val['balanced_accuracy']:.4f} (n={val['n']}); skipped "
            f"{report['data']['skipped_malformed_names']} malformed names"
        )


if __name__ == "__main__":
    sys.exit(run_stage("age_model", main))
