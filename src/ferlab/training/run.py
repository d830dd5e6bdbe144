"""The train stages' work: cached arrays in, fitted checkpoint and training reports out.

Two stages share it: `train` (the study model, params `model` + `train`) and `train_fast`
(the live model, params `fast`: its model name and size, plus overrides of `train`).
"""

from __future__ import annotations

import csv
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist

from ferlab import tracking
from ferlab.classes import NUM_CLASSES
from ferlab.config import data_path
from ferlab.data.arrays import load_split
from ferlab.io import atomic_path, file_sha256, write_json
from ferlab.models import build_model
from ferlab.training.loop import FitResult, TrainConfig, fit, resolve_device, seed_everything


def die_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when its parent (torchrun) dies: killing the
    pipeline then stops the training workers too, instead of leaving them on the cores."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() == 1:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def process_group_backend(device: str, local_processes: int, gpus: int) -> str:
    """NCCL where every process on this machine has a GPU of its own; gloo on a CPU, with
    `train.device: cpu` on a GPU machine, and where processes must share a GPU
    (`train.processes` above the GPU count, e.g. the committed 2 on a one-GPU machine): NCCL
    refuses two ranks on one device, gloo runs them, only slower."""
    return "nccl" if device != "cpu" and 0 < local_processes <= gpus else "gloo"


def init_distributed(device: str = "auto") -> bool:
    """Join the process group torchrun describes (`device` is `train.device`); under CUDA each
    rank takes GPU local_rank % GPU count."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or dist.is_initialized():
        return False
    import torch

    die_with_parent()

    cuda = device != "cpu" and torch.cuda.is_available()
    gpus = torch.cuda.device_count() if cuda else 0
    # The processes that share this machine's GPUs (torchrun's --nproc_per_node).
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    backend = process_group_backend(device, local_processes, gpus)
    if cuda and backend == "gloo" and int(os.environ.get("RANK", "0")) == 0:
        print(
            f"train: {local_processes} processes share {gpus} GPU(s) over gloo; "
            f"-S train.processes={gpus} runs one process per GPU over NCCL",
            flush=True,
        )
    dist.init_process_group(backend)
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % gpus)
    return True


@dataclass(frozen=True)
class TrainJob:
    """What one train stage fits: model name, its options, input size and training settings."""

    model: str
    options: dict[str, Any]
    input_size: int
    train: dict[str, Any]
    checkpoint: Path
    reports: Path

    @classmethod
    def study(
        cls,
        params: dict[str, Any],
        checkpoint: str | Path = "models/model.pt",
        reports: str | Path = "reports",
    ) -> TrainJob:
        """The `train` stage: params `model` (name, input_size, options under its name)."""
        m = params["model"]
        return cls(
            m["name"],
            dict(m.get(m["name"]) or {}),
            int(m["input_size"]),
            dict(params["train"]),
            Path(checkpoint),
            Path(reports),
        )

    @classmethod
    def fast(
        cls,
        params: dict[str, Any],
        checkpoint: str | Path = "models/fast.pt",
        reports: str | Path = "reports/fast",
    ) -> TrainJob:
        """The `train_fast` stage: params `fast` (model, input_size, options, train
        overrides). The live model's options are its own (`fast.options`), so a study model
        of the same architecture (the small profile's `model.name=baseline`) never changes
        it, and its stage does not depend on the `model` group."""
        f = params["fast"]
        return cls(
            f["model"],
            dict(f.get("options") or {}),
            int(f["input_size"]),
            {**params["train"], **(f.get("train") or {})},
            Path(checkpoint),
            Path(reports),
        )


def training_targets(
    train_params: dict[str, Any],
    votes_csv: str | Path,
    paths: np.ndarray,
    labels: np.ndarray,
    log=print,
) -> np.ndarray:
    """Class indices, or the FER+ vote distributions (`train.targets`: votes | labels | auto;
    auto = votes when the votes file exists)."""
    mode = train_params.get("targets", "auto")
    if mode not in ("auto", "votes", "labels"):
        raise ValueError(f"train.targets={mode!r}; choose auto, votes or labels")
    votes_csv = data_path(votes_csv)
    if mode == "labels" or (mode == "auto" and not votes_csv.is_file()):
        if mode == "auto":
            log(
                f"WARNING: {votes_csv} not found, so this run trains on the plurality labels "
                "(train.targets=auto); set data.votes to ferplus_votes.csv for vote "
                "distributions, or train.targets=labels to choose labels"
            )
        return labels.astype(np.int64)
    from ferlab.data.votes import vote_distributions

    return vote_distributions(votes_csv, paths, labels)


def train_job(params: dict[str, Any], job: TrainJob) -> FitResult:
    """Fit `job` on the cached arrays; write its checkpoint and training reports."""
    variant = job.train["variant"]
    config = TrainConfig.from_params(job.train, seed=params["seed"])
    arrays_root = Path(job.train.get("arrays", "data/arrays"))
    train_images, train_labels, train_paths = load_split("train", variant, arrays_root)
    val_images, val_labels, _ = load_split("val", variant, arrays_root)
    rank = dist.get_rank() if dist.is_initialized() else 0
    log = (lambda message: print(message, flush=True)) if rank == 0 else (lambda _m: None)
    targets = training_targets(job.train, params["data"]["votes"], train_paths, train_labels, log)
    target_kind = "votes" if targets.ndim == 2 else "labels"
    data_sha256 = file_sha256(arrays_root / f"{variant}_train.npz")
    from ferlab.training.distill import (
        OnlineTeacher,
        distillation_targets,
        teacher_bf16,
        teacher_mode,
        teacher_settings,
    )

    teachers, teacher_weight = teacher_settings(job.train)
    mode = teacher_mode(job.train)
    online: OnlineTeacher | None = None
    if teachers and teacher_weight > 0 and mode == "online":
        online = OnlineTeacher.load(
            teachers,
            teacher_weight,
            data_sha256,
            resolve_device(config.device),
            teacher_bf16(job.train),
        )
        log(
            f"teachers {', '.join(teachers)}: scoring every augmented batch "
            f"(online, weight {teacher_weight})"
        )
        target_kind += " + online teachers"
    elif teachers and teacher_weight > 0:
        targets = distillation_targets(
            teachers,
            teacher_weight,
            targets,
            train_images,
            data_sha256,
            log,
            device=resolve_device(config.device),
        )
        target_kind += " + teachers"

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
        "targets": target_kind,
        # Training class frequencies: the prior that logit adjustment divides out.
        "class_prior": [float(p) for p in prior],
    }
    if "teachers" in target_kind:
        # By content too: a teacher's path is overwritten when it is retrained.
        meta |= {
            "teachers": teachers,
            "teacher_sha256": [file_sha256(t) for t in teachers],
            "teacher_weight": teacher_weight,
            "teacher_mode": mode,
        }
        if online is not None:
            meta["teacher_autocast"] = online.fingerprint["teacher_autocast"]
    log(
        f"training {job.model} ({n_params / 1e6:.2f}M parameters) on {len(train_labels)} "
        f"{variant} faces at {job.input_size}px ({target_kind} targets, {config.epochs} "
        f"epochs); validating on {len(val_labels)}"
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
        # Beside the checkpoint but not a DVC output: DVC deletes outputs before rerunning a
        # stage, and the state must survive that to resume a killed run.
        resume_path=job.checkpoint.with_suffix(".resume.pt"),
        log=log,
        on_epoch=on_epoch if rank == 0 else None,
        target_fn=online,
    )
    if rank == 0:
        write_training_reports(result, job.reports, n_params, config)
    return result


def train_from_params(
    params: dict[str, Any],
    checkpoint_path: str | Path = "models/model.pt",
    reports: str | Path = "reports",
) -> FitResult:
    """The study model (`train` stage, `ferlab train-run`)."""
    return train_job(params, TrainJob.study(params, checkpoint_path, reports))


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
    from ferlab.training.curves import training_curves

    training_curves(history, reports / "figures" / "training_curves.png")
    tracking.log_metrics({k: v for k, v in summary.items() if k != "stop_reason"})
