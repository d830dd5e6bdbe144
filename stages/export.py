"""DVC stage `export`: ONNX (fp32 + int8) of models/model.pt, their accuracy, the bundled model."""

import sys

from ferlab import tracking
from ferlab.config import flatten, load_params
from ferlab.export import export_all
from ferlab.io import write_json
from ferlab.stage import run_stage

EXPORT_KEYS = ("onnx_opset", "int8_methods", "export_test_images", "calibration_images")


def main() -> None:
    params = load_params()
    realtime = params["realtime"]
    with tracking.stage_run("export", params, experiment=params["mlflow"]["experiment"]):
        report = export_all(
            "models/model.pt",
            "data/arrays",
            "models/model.onnx",
            "models/model.int8.onnx",
            bundled_dir="src/ferlab/bundled",
            test_metrics_path="reports/metrics.json",
            params={"seed": params["seed"], "model": params["model"], "train": params["train"]},
            opset=int(realtime["onnx_opset"]),
            int8_methods=tuple(realtime["int8_methods"]),
            test_images=int(realtime["export_test_images"]),
            calibration_images=int(realtime["calibration_images"]),
            seed=int(params["seed"]),
        )
        write_json("reports/export.json", report)
        # The model spec's numbers (heads, width) are settings, not metrics.
        tracking.log_metrics(
            {k: v for k, v in flatten(report).items() if not k.startswith("model.")}
        )
        tracking.log_artifacts("reports/export.json", "src/ferlab/bundled/model_card.json")
        version = tracking.log_and_register_model("models/model.onnx")
        print(f"export: registered models/model.onnx as {tracking.MODEL_NAME} v{version}")


if __name__ == "__main__":
    sys.exit(run_stage("export", main))
