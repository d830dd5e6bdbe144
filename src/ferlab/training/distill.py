"""Distillation targets: a model learns from the crowd's votes mixed with stronger models' view.

The student trains on (1 − w) · the crowd's target + w · the teachers' mean class probability
(`train.teachers`, `train.teacher_weight`), in one of two modes (`train.teacher_mode`):

- offline: the teachers score each unaugmented training face (with its mirror, as the evaluate
  stage scores) once before training. One pass over the training set, sharded across ranks:
  about a minute for the two live nets on a 2-core CPU.
- online: the teachers score every augmented batch as the student sees it (the same crop,
  turn, light, occlusion and mirror), so each view's target is the teachers' answer on that
  view rather than on the clean face. One teacher forward per step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ferlab.inference import load_models
from ferlab.io import file_sha256
from ferlab.training.loop import autocast_for, predict_logits_on_device

TEACHER_MODES = ("offline", "online")


def teacher_probabilities(
    teachers: nn.Module,
    input_size: int,
    faces_u8: np.ndarray,
    batch_size: int = 256,
    device: torch.device | None = None,
) -> np.ndarray:
    """N×C float32: the class probability of `teachers` (as `load_models` returns them: one
    model or their mean) on uint8 faces N×H×W, each face averaged with its mirror, scored on
    `device` (the CPU by default). Under torchrun each rank scores its own slice of the faces
    and every rank gets them all."""
    device = device or torch.device("cpu")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    bounds = np.linspace(0, len(faces_u8), world + 1).astype(int)
    mine = torch.from_numpy(np.ascontiguousarray(faces_u8[bounds[rank] : bounds[rank + 1]]))
    with torch.no_grad():
        probs = predict_logits_on_device(
            teachers.to(device), mine.to(device), input_size, batch_size=batch_size, tta_flip=True
        ).softmax(dim=1)
    if world > 1:
        # NCCL gathers GPU tensors only, gloo CPU ones.
        probs = probs.to(device if dist.get_backend() == "nccl" else "cpu")
        # all_gather wants equal shapes: pad each slice to the longest, then trim.
        longest = int(np.diff(bounds).max())
        padded = torch.zeros((longest, probs.shape[1]), dtype=probs.dtype, device=probs.device)
        padded[: len(probs)] = probs
        gathered = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(gathered, padded)
        probs = torch.cat([g[:n] for g, n in zip(gathered, np.diff(bounds), strict=True)])
    return probs.cpu().numpy().astype(np.float32)


def mix_targets(crowd: np.ndarray, teacher: np.ndarray, teacher_weight: float) -> np.ndarray:
    """(1 − w) · crowd + w · teacher, row by row, each row summing to 1. `crowd` is vote
    distributions N×C or class indices N (taken as one-hot); `teacher` N×C probabilities."""
    if not 0.0 <= teacher_weight <= 1.0:
        raise ValueError(f"train.teacher_weight={teacher_weight}; choose a value in [0, 1]")
    if crowd.ndim == 1:
        crowd = np.eye(teacher.shape[1], dtype=np.float32)[crowd.astype(np.int64)]
    if crowd.shape != teacher.shape:
        raise ValueError(f"crowd targets {crowd.shape} and teachers' {teacher.shape} differ")
    mixed = (1.0 - teacher_weight) * crowd + teacher_weight * teacher
    return (mixed / mixed.sum(axis=1, keepdims=True)).astype(np.float32)


def require_teachers(teachers: Sequence[str | Path]) -> None:
    """Each teacher checkpoint exists, or one line names the first missing and how to get it."""
    for path in teachers:
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"{path}: no such teacher checkpoint; train it (the live models: `dvc repro "
                "train_fast train_fast_second`) or drop it from train.teachers"
            )


def load_teachers(
    teachers: Sequence[str | Path], data_sha256: str
) -> tuple[nn.Module, dict[str, Any]]:
    """The teachers as one model (their mean), in eval mode, with the first one's metadata.
    Refuses teachers trained on other arrays (their probabilities would be of other faces'
    training, and a stale teacher would pass silently)."""
    require_teachers(teachers)
    # load_models already refuses teachers trained on differing arrays among themselves.
    model, meta = load_models(list(teachers))
    if meta.get("data_sha256") != data_sha256:
        raise ValueError(
            f"{', '.join(map(str, teachers))}: trained on other arrays than this run's; retrain "
            "(dvc repro) or drop them from train.teachers"
        )
    return model, meta


def distillation_targets(
    teachers: Sequence[str | Path],
    teacher_weight: float,
    crowd: np.ndarray,
    train_u8: np.ndarray,
    data_sha256: str,
    log: Callable[[str], None] = print,
    device: torch.device | None = None,
) -> np.ndarray:
    """Offline distillation: the student's targets, `crowd` mixed with the teachers'
    probabilities on `train_u8` (scored on `device`)."""
    model, meta = load_teachers(teachers, data_sha256)
    log(f"teachers {', '.join(map(str, teachers))}: scoring {len(train_u8)} training faces")
    teacher = teacher_probabilities(model, int(meta["input_size"]), train_u8, device=device)
    targets = mix_targets(crowd, teacher, teacher_weight)
    top = crowd if crowd.ndim == 1 else crowd.argmax(1)
    log(
        f"teacher weight {teacher_weight}: the teachers' top class is the crowd's on "
        f"{float((teacher.argmax(1) == top).mean()):.1%} of the faces, and the mixed "
        f"target's on {float((targets.argmax(1) == top).mean()):.1%}"
    )
    return targets


class OnlineTeacher:
    """Online distillation, as `fit`'s `target_fn`: each augmented batch's targets become
    (1 − w) · the crowd's + w · the teachers' mean probability on that very batch (under mixup,
    on the mixed faces). The teachers run in eval mode without gradients and draw no random
    numbers, so the student's seeded streams are those of a run without them. A student of
    another input size (112 px) is scored by the teachers resized to theirs."""

    def __init__(
        self,
        model: nn.Module,
        weight: float,
        input_size: int,
        autocast: torch.autocast | None = None,
        sha256: Sequence[str] = (),
    ) -> None:
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"train.teacher_weight={weight}; choose a value in [0, 1]")
        self.model = model.eval().to(memory_format=torch.channels_last)
        self.weight = weight
        self.input_size = input_size
        self.autocast = autocast
        # What a resumed run must match: other teachers, weight or precision give other targets.
        self.fingerprint = {
            "teacher_sha256": list(sha256),
            "teacher_weight": weight,
            "teacher_autocast": None if autocast is None else str(autocast.fast_dtype),
        }

    @classmethod
    def load(
        cls,
        teachers: Sequence[str | Path],
        weight: float,
        data_sha256: str,
        device: torch.device,
        bf16: bool,
    ) -> OnlineTeacher:
        """The teachers of a run, on its device; on a CPU under bf16 autocast when `bf16` and
        the CPU has it natively, else fp32 (`autocast_for`; CUDA always uses bf16)."""
        model, meta = load_teachers(teachers, data_sha256)
        return cls(
            model.to(device),
            weight,
            int(meta["input_size"]),
            autocast_for(device, bf16),
            [file_sha256(t) for t in teachers],
        )

    def __call__(self, x: torch.Tensor, crowd: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if x.shape[-1] != self.input_size:
                x = F.interpolate(
                    x, size=(self.input_size,) * 2, mode="bilinear", antialias=True
                ).contiguous(memory_format=torch.channels_last)
            with self.autocast if self.autocast is not None else contextlib.nullcontext():
                teacher = self.model(x).float().softmax(dim=1)
        return (1.0 - self.weight) * crowd + self.weight * teacher


def teacher_settings(train: dict[str, Any]) -> tuple[list[str], float]:
    """`train.teachers` and `train.teacher_weight`, checked before any teacher is scored: the
    checkpoints as a list (one path alone is a list of one) and the weight in [0, 1]."""
    raw = train.get("teachers") or []
    teachers = [str(raw)] if isinstance(raw, (str, Path)) else [str(t) for t in raw]
    weight = float(train.get("teacher_weight", 0.0))
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"train.teacher_weight={weight}; choose a value in [0, 1] (0 = off)")
    return teachers, weight


def teacher_bf16(train: dict[str, Any]) -> bool:
    """`train.teacher_bf16` (off when absent), checked: online teachers under bf16 autocast."""
    value = train.get("teacher_bf16", False)
    if not isinstance(value, bool):
        raise ValueError(f"train.teacher_bf16={value!r}; choose true or false")
    return value


def teacher_mode(train: dict[str, Any]) -> str:
    """`train.teacher_mode` (offline when absent), checked."""
    mode = str(train.get("teacher_mode", "offline"))
    if mode not in TEACHER_MODES:
        raise ValueError(f"train.teacher_mode={mode!r}; choose one of {TEACHER_MODES}")
    return mode
