"""DVC stage `study_resize`: test accuracy after shrinking and re-enlarging every face."""

import sys

from ferlab import tracking
from ferlab.config import load_params
from ferlab.data.arrays import load_split
from ferlab.evaluation.resize_study import run_study, stratified_subset, write_outputs
from ferlab.inference import Classifier
from ferlab.io import write_json
from ferlab.stage import run_stage

OUT_JSON = "reports/study_resize.json"
OUT_CSV = "reports/study_resize.csv"
OUT_MD = "reports/study_resize.md"
OUT_PNG = "reports/figures/study_resize.png"


def main() -> None:
    params = load_params()
    study = params["study_resize"]
    with tracking.stage_run("study_resize", params, experiment=params["mlflow"]["experiment"]):
        classifier = Classifier.from_checkpoint("models/model.pt")
        # The model is scored on the preprocessing it was trained on (as the evaluate stage does).
        variant = classifier.meta.get("variant", params["train"]["variant"])
        images, labels, _ = load_split("test", variant=variant)
        total = len(labels)
        keep = stratified_subset(labels, int(study["max_images"]), params["seed"])
        images, labels = images[keep], labels[keep]
        batch = int(params["evaluate"]["batch_size"])
        print(
            f"resize study: {len(images)} of {total} test faces ({variant}), model input "
            f"{classifier.input_size}px, {len(study['sizes'])} sizes × {len(study['methods'])} "
            "interpolation pairs"
        )
        result = run_study(
            lambda faces: classifier.predict_proba(faces, batch_size=batch),
            images,
            labels,
            study["sizes"],
            study["methods"],
            classifier.input_size,
        )
        result["variant"] = variant
        result["test_images"] = total
        write_json(OUT_JSON, result)
        write_outputs(result, OUT_CSV, OUT_MD, OUT_PNG)
        metrics = {
            f"acc_{method.replace('/', '_')}_{size}": value
            for method, row in result["accuracy"].items()
            for size, value in row.items()
        }
        tracking.log_metrics(metrics)
        tracking.log_artifacts(OUT_JSON, OUT_CSV, OUT_MD, OUT_PNG)


if __name__ == "__main__":
    sys.exit(run_stage("study_resize", main))
