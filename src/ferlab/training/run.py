"""The train stage's work: data in, fitted checkpoint and training reports out."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist

from ferlab import tracking
from ferlab.data.arrays import load_split
from ferlab.io import atomic_path, file_sha256, write_json
from ferlab.models import build_model
from ferlab.training.loop import FitResult, TrainConfig, fit, seed_everything

MODEL_KEYS = ("heads", "width", "activation", "dropout")


def init_distributed() -> bool:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    import torch

    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def train_from_params(
    params: dict[str, Any],
    arrays_root: str | Path = "data/arrays",
    checkpoint_path: str | Path = "models/model.pt",
    reports: str | Path = "reports",
) -> FitResult:
    """Train the configured model on the cached arrays and write models/ and reports/ files."""
    model_params, train_params = params["model"], params["train"]
    variant = train_params["variant"]
    config = TrainConfig.from_params(train_params, seed=params["seed"])
    train_images, train_labels, train_paths = load_split("train", variant, arrays_root)
    val_images, val_labels, _ = load_split("val", variant, arrays_root)
    targets: np.ndarray = train_labels.astype(np.int64)
    if train_params.get("soft_labels"):
        from ferlab.data.votes import vote_distributions

        targets = vote_distributions(params["data"]["votes"], train_paths, train_labels)

    spec = {"name": model_params["name"], **{k: model_params[k] for k in MODEL_KEYS}}
    input_size = int(model_params["input_size"])
    seed_everything(config.seed)
    model = build_model(spec["name"], input_size=input_size, **{k: spec[k] for k in MODEL_KEYS})
    n_params = sum(p.numel() for p in model.parameters())
    meta = {
        "model": spec,
        "input_size": input_size,
        "variant": variant,
        "data_sha256": file_sha256(Path(arrays_root) / f"{variant}_train.npz"),
        "n_parameters": n_params,
    }
    rank = dist.get_rank() if dist.is_initialized() else 0
    print(
        f"training {spec['name']} ({n_params / 1e6:.2f}M parameters) on {len(targets)} "
        f"{variant} faces at {input_size}px; validating on {len(val_labels)}",
        flush=True,
    )

    def on_epoch(row: dict[str, float]) -> None:
        tracking.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))

    log = (lambda message: print(message, flush=True)) if rank == 0 else (lambda _m: None)
    result = fit(
        model,
        train_images,
        targets,
        val_images,
        val_labels,
        config,
        checkpoint_path=checkpoint_path,
        meta=meta,
        resume_path=Path(checkpoint_path).with_suffix(".resume.pt"),
        log=log,
        on_epoch=on_epoch if rank == 0 else None,
    )
    if rank == 0:
        write_training_reports(result, Path(reports), n_params, config)
    return result


def write_training_reports(
    result: FitResult, reports: Path, n_params: int, config: TrainConfig
) -> None:
    history = result.history
    summary = {
        "best_epoch": result.best_epoch,
        "best_val_accuracy": result.best_val_accuracy,
        "epochs_run": len(history),
        "stop_reason": result.stop_reason,
        "train_minutes": result.seconds / 60,
        "images_per_s": float(np.mean([r["images_per_s"] for r in history])) if history else 0.0,
        "n_parameters": n_params,
    }
    write_json(reports / "train.json", summary)
    with atomic_path(reports / "train_history.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]) if history else ["epoch"])
        writer.writeheader()
        writer.writerows(history)
    from ferlab.evaluation.plots import training_curves

    training_curves(history, reports / "figures" / "training_curves.png")
    tracking.log_metrics({k: v for k, v in summary.items() if k != "stop_reason"})
