"""All MLflow calls in one place: one run per stage, tagged with the commit and the stage."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ferlab.config import PARAMS_FILE, flatten

DEFAULT_DB = "mlflow.db"
MODEL_NAME = "ferlab-expression"


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, or an SQLite store in the current (project) folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(DEFAULT_DB).resolve()}"


def _mlflow():
    # Imported lazily: mlflow takes seconds to import and most commands never need it.
    os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def params_hash(path: str | Path = PARAMS_FILE) -> str:
    """Short hash of params.yaml: runs of one `dvc repro` share it, so they can be grouped."""
    path = Path(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.is_file() else "none"


@contextmanager
def stage_run(stage: str, params: dict[str, Any], experiment: str = "ferlab") -> Iterator[Any]:
    """Open an MLflow run for one pipeline stage and log its (flattened) params."""
    mlflow = _mlflow()
    mlflow.set_experiment(experiment)
    tags = {
        "stage": stage,
        "git_commit": git_commit(),
        "params_hash": params_hash(),
    }
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_experiment"] = os.environ["DVC_EXP_NAME"]
    with mlflow.start_run(run_name=stage, tags=tags) as run:
        flat = {k: str(v)[:500] for k, v in flatten(params).items()}
        if flat:
            mlflow.log_params(flat)
        yield run


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Log numeric metrics of the active run; non-numbers are skipped."""
    mlflow = _mlflow()
    numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    if numbers:
        mlflow.log_metrics(numbers, step=step)


def log_artifacts(*paths: str | Path) -> None:
    mlflow = _mlflow()
    for path in paths:
        path = Path(path)
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path=path.name)
        elif path.is_file():
            mlflow.log_artifact(str(path))


def log_and_register_model(onnx_path: str | Path, name: str = MODEL_NAME) -> str:
    """Log an ONNX model to the active run and register it; returns the model version."""
    import onnx

    mlflow = _mlflow()
    model = onnx.load(str(onnx_path))
    info = mlflow.onnx.log_model(model, name="model", registered_model_name=name)
    return str(info.registered_model_version)


def open_ui(host: str = "127.0.0.1", port: int = 5000) -> None:
    """Serve the MLflow UI for this project's store (loopback only unless asked otherwise)."""
    import subprocess as sp

    sp.run(
        [
            "mlflow",
            "ui",
            "--backend-store-uri",
            tracking_uri(),
            "--host",
            host,
            "--port",
            str(port),
        ],
        check=False,
    )
