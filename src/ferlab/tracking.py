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
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # opens on the runs table, not GenAI traces


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


def stage_params(stage: str, params: dict[str, Any], dvc_yaml: str | Path = "dvc.yaml") -> dict:
    """The flattened params `dvc.yaml` declares for `stage`: the one list of what it depends on.

    A declared key may be a group (`validate`) or a dotted key (`train.lr`); a stage dvc.yaml
    does not know (e.g. `train-run`) logs nothing here.
    """
    import yaml

    path = Path(dvc_yaml)
    stages = (yaml.safe_load(path.read_text()) or {}).get("stages", {}) if path.is_file() else {}
    declared = (stages.get(stage) or {}).get("params", [])
    flat = flatten(params)
    chosen: dict[str, Any] = {}
    for key in declared:
        key = str(key)
        if key in flat:
            chosen[key] = flat[key]
        chosen.update({k: v for k, v in flat.items() if k.startswith(f"{key}.")})
    return chosen


def committed_params(path: str | Path = PARAMS_FILE) -> dict[str, Any] | None:
    """params.yaml as committed at HEAD (a DVC experiment's baseline); None outside git."""
    import yaml

    try:
        out = subprocess.run(
            ["git", "show", f"HEAD:{Path(path).as_posix()}"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    loaded = yaml.safe_load(out.stdout)
    return loaded if isinstance(loaded, dict) else None


def changed_params(stage: str, params: dict[str, Any]) -> dict[str, Any]:
    """The stage's declared params whose value differs from the committed params.yaml: what
    sets this run apart from main (e.g. the `-S` overrides of `dvc exp run`)."""
    base = committed_params()
    if base is None:
        return {}
    mine, theirs = stage_params(stage, params), stage_params(stage, base)
    return {k: v for k, v in mine.items() if theirs.get(k, object()) != v}


def run_name(stage: str, changed: dict[str, Any] | None = None) -> str:
    """`train · exp-1a2b3 · train.lr=0.01` (stage, DVC experiment or commit, the params that
    differ from the commit, else a short params hash): runs can be told apart in the MLflow
    UI's run list without opening them."""
    source = os.environ.get("DVC_EXP_NAME") or git_commit()[:7]
    detail = ", ".join(f"{k}={v}" for k, v in (changed or {}).items()) or params_hash()[:6]
    name = f"{stage} · {source} · {detail}"
    return name if len(name) <= 240 else name[:239] + "…"  # MLflow caps run names


@contextmanager
def stage_run(
    stage: str,
    params: dict[str, Any],
    experiment: str = "ferlab",
    label: str | None = None,
) -> Iterator[Any]:
    """Open an MLflow run for one pipeline stage, logging the params dvc.yaml declares for it.

    `params` is the whole params.yaml. `label` names a run made outside the DAG with the
    stage's code (`ferlab train-run NAME`). The run ends FAILED when the stage raises, is
    interrupted or is stopped with SIGTERM (the stage runner turns SIGTERM into an exception).
    """
    mlflow = _mlflow()
    found = mlflow.set_experiment(experiment)
    if found.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        # Without it MLflow 3's UI opens the experiment on the GenAI traces page.
        mlflow.MlflowClient().set_experiment_tag(
            found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND
        )
    tags = {
        "stage": stage,
        "git_commit": git_commit(),
        "params_hash": params_hash(),
    }
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_experiment"] = os.environ["DVC_EXP_NAME"]
    logged = stage_params(stage, params)
    name = run_name(label or stage, changed_params(stage, params))
    with mlflow.start_run(run_name=name, tags=tags) as run:
        flat = {k: str(v)[:500] for k, v in logged.items()}
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
