"""DVC stage `export`: ONNX (fp32 + int8) of every evaluated model, with the test-time views it
was evaluated with inside the graph, their accuracy against PyTorch and their per-face speed. It
never touches the bundled model (`ferlab bundle` does)."""

import sys
from pathlib import Path
from typing import Any

from ferlab import tracking
from ferlab.config import flatten, load_params
from ferlab.evaluation.evaluate import EvaluateSettings
from ferlab.export import OUT_DIR, export_all, per_face_ms
from ferlab.io import file_sha256, read_json, write_json
from ferlab.stage import run_stage

METRICS = "reports/metrics.json"


def temperature_of(metrics: dict[str, Any] | None) -> float | None:
    """The temperature the evaluate stage fitted on the model with its test-time views: the
    model this stage exports."""
    return float(metrics["calibration"]["temperature"]) if metrics else None


def main() -> None:
    params = load_params()
    realtime = params["realtime"]
    settings = EvaluateSettings.from_params(params)
    models = settings.models
    all_metrics = read_json(METRICS) if Path(METRICS).is_file() else {}
    report: dict[str, Any] = {}
    with tracking.stage_run("export", params, experiment=params["mlflow"]["experiment"]):
        for name, checkpoint in models.items():
            fp32, int8 = OUT_DIR / f"{name}.onnx", OUT_DIR / f"{name}.int8.onnx"
            entry = export_all(
                checkpoint,
                "data/arrays",
                fp32,
                int8,
                temperature=temperature_of(all_metrics.get(name)),
                opset=int(realtime["onnx_opset"]),
                int8_methods=tuple(realtime["int8_methods"]),
                test_images=int(realtime["export_test_images"]),
                calibration_images=int(realtime["calibration_images"]),
                seed=int(params["seed"]),
                views=settings.views_for(name),  # the views the evaluate stage scored
            )
            # Speed is measured, not asserted: it depends on the machine (named in the report).
            entry["ms_per_face_1_thread"] = {
                "fp32": per_face_ms(fp32, threads=1),
                "int8": per_face_ms(int8, threads=1),
            }
            entry["files"] = {"fp32": str(fp32), "int8": str(int8)}
            entry["sha256"] = {"fp32": file_sha256(fp32), "int8": file_sha256(int8)}
            report[name] = entry
            print(f"export: {name}: {entry['ms_per_face_1_thread']} ms a face (batch 1, 1 thread)")
        write_json("reports/export.json", report)
        tracking.log_metrics({k: v for k, v in flatten(report).items() if ".model." not in f".{k}"})
        tracking.log_artifacts("reports/export.json")
        for name in models:
            version = tracking.log_and_register_model(OUT_DIR / f"{name}.onnx")
            print(f"export: registered {name}.onnx as {tracking.MODEL_NAME} v{version}")


if __name__ == "__main__":
    sys.exit(run_stage("export", main))
