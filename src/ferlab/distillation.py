"""Distillation: one live-sized net learns what several trained nets agree on.

The student trains with the live recipe on a mix of the crowd's vote distributions and its
teachers' mean class probability (flip TTA) on each training face, so it keeps the votes'
ambiguity and gains the teachers' view of faces the crowd saw only a few times. The teachers'
probabilities are computed once, on the unaugmented training faces, before training starts
(offline distillation): the student's stage costs one live-model training plus a few seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ferlab import tracking
from ferlab.classes import NUM_CLASSES
from ferlab.data.arrays import load_split
from ferlab.inference import ModelSource, load_models, source_name
from ferlab.io import file_sha256
from ferlab.models import build_model
from ferlab.training.loop import (
    FitResult,
    TrainConfig,
    fit,
    predict_logits_on_device,
    seed_everything,
)
from ferlab.training.run import TrainJob, training_targets, write_training_reports


def teacher_probabilities(
    teachers: ModelSource, faces_u8: np.ndarray, batch_size: int = 128
) -> np.ndarray:
    """N×C float32: the teachers' mean class probability on uint8 faces N×H×W, each face
    averaged with its mirror (in log space, as the evaluate stage's flip TTA does). Under
    torchrun each rank scores its own slice of the faces and all ranks get the whole."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    bounds = np.linspace(0, len(faces_u8), world + 1).astype(int)
    model, meta = load_models(teachers)
    images = torch.from_numpy(np.ascontiguousarray(faces_u8[bounds[rank] : bounds[rank + 1]]))
    logits = predict_logits_on_device(
        model, images, int(meta["input_size"]), batch_size=batch_size, tta_flip=True
    )
    probs = logits.softmax(dim=1).float()
    if world > 1:
        # all_gather wants equal shapes: pad each slice to the longest, then trim.
        longest = int(np.diff(bounds).max())
        padded = torch.zeros((longest, probs.shape[1]), dtype=probs.dtype)
        padded[: len(probs)] = probs
        gathered = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(gathered, padded)
        probs = torch.cat([g[:n] for g, n in zip(gathered, np.diff(bounds), strict=True)])
    return probs.numpy().astype(np.float32)


def distillation_targets(
    crowd: np.ndarray, teacher: np.ndarray, teacher_weight: float
) -> np.ndarray:
    """(1 − w) · crowd + w · teacher, row by row. `crowd` is vote distributions (N×C) or
    class indices (N, taken as one-hot); `teacher` N×C probabilities."""
    if not 0.0 <= teacher_weight <= 1.0:
        raise ValueError(f"distill.teacher_weight={teacher_weight}; choose a value in [0, 1]")
    if crowd.ndim == 1:
        crowd = np.eye(teacher.shape[1], dtype=np.float32)[crowd.astype(np.int64)]
    if crowd.shape != teacher.shape:
        raise ValueError(f"crowd targets {crowd.shape} and teacher {teacher.shape} differ")
    mixed = (1.0 - teacher_weight) * crowd + teacher_weight * teacher
    return (mixed / mixed.sum(axis=1, keepdims=True)).astype(np.float32)


def train_student(
    params: dict[str, Any], job: TrainJob, teachers: ModelSource, teacher_weight: float
) -> FitResult:
    """Fit `job` (a live-model job) on distillation targets from `teachers`; write its
    checkpoint and training reports as a train stage does (`ferlab.training.run.train_job`,
    whose steps this follows with other targets)."""
    variant = job.train["variant"]
    config = TrainConfig.from_params(job.train, seed=params["seed"])
    arrays_root = Path(job.train.get("arrays", "data/arrays"))
    train_images, train_labels, train_paths = load_split("train", variant, arrays_root)
    val_images, val_labels, _ = load_split("val", variant, arrays_root)
    rank = dist.get_rank() if dist.is_initialized() else 0
    log = (lambda message: print(message, flush=True)) if rank == 0 else (lambda _m: None)
    crowd = training_targets(job.train, params["data"]["votes"], train_paths, train_labels, log)

    log(f"teachers {source_name(teachers)}: scoring {len(train_images)} training faces")
    _, teacher_meta = load_models(teachers)
    data_sha256 = file_sha256(arrays_root / f"{variant}_train.npz")
    if teacher_meta.get("data_sha256") != data_sha256 or teacher_meta.get("variant") != variant:
        raise ValueError(
            f"{source_name(teachers)}: trained on other arrays than {arrays_root} ({variant}); "
            "retrain the teachers (dvc repro) before distilling"
        )
    teacher = teacher_probabilities(teachers, train_images)
    targets = distillation_targets(crowd, teacher, teacher_weight)

    seed_everything(config.seed)
    model = build_model(job.model, input_size=job.input_size, **job.options)
    n_params = sum(p.numel() for p in model.parameters())
    prior = np.bincount(train_labels, minlength=NUM_CLASSES) / max(len(train_labels), 1)
    meta = {
        "model": {"name": job.model, **job.options},
        "input_size": job.input_size,
        "variant": variant,
        "data_sha256": data_sha256,
        "n_parameters": n_params,
        "targets": ("votes" if crowd.ndim == 2 else "labels") + " + teachers",
        "teachers": source_name(teachers),
        "teacher_weight": teacher_weight,
        "class_prior": [float(p) for p in prior],
    }
    agree = float((teacher.argmax(1) == targets.argmax(1)).mean())
    log(
        f"distilling into {job.model} ({n_params / 1e6:.2f}M parameters), teacher weight "
        f"{teacher_weight}: the teachers' top class is the target's on {agree:.1%} of "
        f"{len(train_labels)} faces; {config.epochs} epochs, validating on {len(val_labels)}"
    )

    def on_epoch(row: dict[str, float]) -> None:
        tracking.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))

    result = fit(
        model,
        train_images,
        targets,
        val_images,
        val_labels,
        config,
        checkpoint_path=job.checkpoint,
        meta=meta,
        resume_path=job.checkpoint.with_suffix(".resume.pt"),
        log=log,
        on_epoch=on_epoch if rank == 0 else None,
    )
    if rank == 0:
        write_training_reports(result, job.reports, n_params, config)
    return result
