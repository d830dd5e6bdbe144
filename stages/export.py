"""DVC stage `export`: ONNX (fp32 + int8) of models/model.pt, their accuracy, the bundled model."""

import sys
from pathlib import Path
from typing import Any

from ferlab import tracking
from ferlab.config import flatten, load_params
from ferlab.evaluation.evaluate import EvaluateSettings
from ferlab.export import export_all
from ferlab.io import read_json, write_json
from ferlab.stage import run_stage

CHECKPOINT = "models/model.pt"
METRICS = "reports/metrics.json"


def evaluated(params: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None]:
    """(name, reports/metrics.json entry) of the evaluated model whose file is the checkpoint."""
    models = EvaluateSettings.from_params(params).models
    name = next((n for n, p in models.items() if Path(p) == Path(CHECKPOINT)), None)
    if name is None or not Path(METRICS).is_file():
        return name, None
    return name, read_json(METRICS).get(name)


def main() -> None:
    params = load_params()
    realtime = params["realtime"]
    name, metrics = evaluated(params)
    temperature = None
    if metrics is None:
        print(f"export: {METRICS} has no entry for {CHECKPOINT}: no temperature stored")
    else:
        # The deployed model runs without flip TTA: its temperature is the one fitted so.
        calibration = metrics["calibration"]
        temperature = float(calibration.get("temperature_no_tta", calibration["temperature"]))
    with tracking.stage_run("export", params, experiment=params["mlflow"]["experiment"]):
        report = export_all(
            CHECKPOINT,
            "data/arrays",
            "models/model.onnx",
            "models/model.int8.onnx",
            bundled_dir="src/ferlab/bundled",
            test_metrics=metrics,
            test_metrics_source=f"{METRICS} ({name})" if metrics else None,
            temperature=temperature,
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
