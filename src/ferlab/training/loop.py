"""The training loop: the uint8 train set as one tensor on the device, whole-batch augmentation,
a schedule driven by steps, weight EMA, optional DDP.

Determinism: epochs and steps drive the learning rate, early stopping and the stop. Every
random draw of an epoch (sample order, augmentation, mixup, dropout) comes from generators
seeded by (seed, epoch, rank), so the same seed and params give the same weights whatever
the machine's speed or load, and a run killed mid-epoch and resumed from its last epoch-end
state ends with the same weights as an uninterrupted one. Ranks draw different augmentations
that still repeat run to run. A wall-clock budget (`max_minutes`) exists only as an opt-in:
it ends training after the epoch in which it runs out, which makes the result depend on the
machine.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ferlab.checkpoint import NORMALIZATION, save_checkpoint
from ferlab.classes import NUM_CLASSES
from ferlab.io import atomic_path
from ferlab.training.augment import albumentations_pipeline, augment_batch, mixup
from ferlab.training.losses import total_loss

Log = Callable[[str], None]
AUGMENTS = ("torch", "albumentations", "none")


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adamw"  # adamw | sgd
    weight_decay: float = 1e-4
    scheduler: str = "cosine"  # cosine | step | none
    warmup: float = 0.05  # fraction of the steps with a rising learning rate (cosine)
    attention_lambda: float = 0.1
    label_smoothing: float = 0.0
    class_balance: str = "none"  # none | weights | sampler
    early_stopping_patience: int = 0  # 0 disables early stopping
    augment: str = "torch"  # torch (batched, on the device) | albumentations | none
    mixup_alpha: float = 0.0  # 0 = off
    ema_decay: float = 0.0  # weight EMA (e.g. 0.999); validation and the checkpoint use it
    tta_flip: bool = False  # validation averages each face with its mirror
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0
    bf16: bool = False  # bf16 autocast on CPU (CUDA always uses bf16 autocast)
    max_minutes: float = 0.0  # opt-in wall-clock budget (machine-dependent results); 0 = none
    compile: bool = False  # torch.compile the training forward (minutes of warm-up, then faster)
    seed: int = 42

    @classmethod
    def from_params(cls, params: dict[str, Any], seed: int) -> TrainConfig:
        """Take the known keys of a params group (others, such as `variant`, are the stage's)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in params.items() if k in known}
        config = cls(**values, seed=seed) if "seed" not in values else cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        if self.augment is True or self.augment is False:  # the old boolean spelling
            self.augment = "torch" if self.augment else "none"
        choices = {
            "optimizer": ("adamw", "sgd"),
            "scheduler": ("cosine", "step", "none"),
            "class_balance": ("none", "weights", "sampler"),
            "device": ("auto", "cpu", "cuda"),
            "augment": AUGMENTS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"train.{name}={getattr(self, name)!r}; choose one of {allowed}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("train.epochs, train.batch_size and train.lr must be positive")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"train.ema_decay={self.ema_decay} must be in [0, 1)")


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_accuracy: float = -1.0
    stop_reason: str = "epochs"
    seconds: float = 0.0


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is available; use auto or cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":  # the GPU init_distributed set for this rank (DDP needs its index)
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


def autocast_for(device: torch.device, bf16: bool) -> torch.autocast | None:
    """bf16 autocast on CUDA; on CPU only when asked and natively supported, else fp32."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if not bf16:
        return None
    if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return None


class _WithHeads(nn.Module):
    """Routes training forwards through forward_with_heads so DDP sees (and syncs) them."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        with_heads = getattr(self.model, "forward_with_heads", None)
        if with_heads is not None:
            return with_heads(x)
        return self.model(x), None


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch: call before building a model so its initial weights repeat."""
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, epoch, rank, purpose): independent streams that
    repeat run to run."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0]) >> 1


def augmentation_generator(
    seed: int, epoch: int, rank: int, device: torch.device | str = "cpu"
) -> torch.Generator:
    """The generator one rank draws an epoch's batch augmentation and mixup from: each rank
    its own stream (rank in the seed), each run the same."""
    generator = torch.Generator(device=device)
    generator.manual_seed(derived_seed(seed, epoch, rank, 2))
    return generator


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Inverse-frequency weights normalised to mean 1 (absent classes get weight 0)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / num_classes, 0.0)
    return weights / weights[counts > 0].mean()


def epoch_order(
    labels: np.ndarray, epoch: int, config: TrainConfig, num_classes: int
) -> np.ndarray:
    """Sample order of one epoch: a seeded shuffle, or a class-balanced draw with replacement."""
    rng = np.random.default_rng([config.seed, epoch])
    if config.class_balance == "sampler":
        weights = class_weights(labels, num_classes)[labels]
        return rng.choice(len(labels), size=len(labels), replace=True, p=weights / weights.sum())
    return rng.permutation(len(labels))


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on BatchNorm/PReLU/bias parameters (1-D): decaying them only hurts.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.lr)


class LrSchedule:
    """Warm-up then cosine (or step) decay, driven only by the optimiser steps taken."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        kind: str,
        base_lr: float,
        total_steps: int,
        warmup: float = 0.05,
    ) -> None:
        self.optimizer = optimizer
        self.kind = kind
        self.base_lr = base_lr
        self.total_steps = max(total_steps, 1)
        self.warmup = warmup
        self.steps = 0
        self._set(self.lr_at(0.0))

    def lr_at(self, progress: float) -> float:
        if self.kind == "none":
            return self.base_lr
        if self.kind == "step":  # ÷10 after each third of training
            return self.base_lr * 0.1 ** min(int(progress * 3), 2)
        if progress < self.warmup:
            return self.base_lr * (0.1 + 0.9 * progress / self.warmup)
        done = (progress - self.warmup) / (1 - self.warmup)
        return self.base_lr * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))

    def step(self) -> None:
        self.steps += 1
        self._set(self.lr_at(self.steps / self.total_steps))

    def _set(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def state_dict(self) -> dict[str, int]:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.steps = int(state["steps"])
        self._set(self.lr_at(self.steps / self.total_steps))


class WeightEma:
    """Exponential moving average of a model's weights (buffers copied), with the usual
    warm-up (decay min(d, (1 + t) / (10 + t))) so early averages are not stuck at the init."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema_params = list(self.model.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1 - d)
        for ema_b, b in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)


def faces_to_input(
    faces_u8: torch.Tensor,
    input_size: int,
    generator: torch.Generator | None = None,
    augment: bool = False,
) -> torch.Tensor:
    """uint8 N×H×W on the device → normalised N×1×S×S float (channels_last), augmented when
    asked. The one normalisation is `ferlab.checkpoint.NORMALIZATION`, as at inference."""
    x = faces_u8.unsqueeze(1).float().div_(255.0)
    if augment:
        assert generator is not None
        x = augment_batch(x, generator, out_size=input_size)
    elif x.shape[-1] != input_size:
        x = F.interpolate(x, size=(input_size, input_size), mode="bicubic", antialias=True)
        x = x.clamp_(0.0, 1.0)
    x = (x - NORMALIZATION["mean"]) / NORMALIZATION["std"]
    return x.contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def predict_logits_on_device(
    model: nn.Module,
    images: torch.Tensor,
    input_size: int,
    autocast: torch.autocast | None = None,
    batch_size: int = 256,
    tta_flip: bool = False,
) -> torch.Tensor:
    """Logits (float32, on the device) of uint8 faces N×H×W already on the device."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = faces_to_input(images[start : start + batch_size], input_size)
        with autocast if autocast is not None else contextlib.nullcontext():
            logits = model(x).float()
            if tta_flip:
                logits = (logits + model(x.flip(3)).float()) / 2
        out.append(logits)
    if not out:
        return torch.zeros((0, NUM_CLASSES), device=images.device)
    return torch.cat(out)


def _gather_val_logits(
    model: nn.Module,
    val_u8: torch.Tensor,
    config: TrainConfig,
    input_size: int,
    autocast: torch.autocast | None,
) -> torch.Tensor:
    """Each rank scores every world-th validation face; all ranks get all logits in order."""
    rank, world = _rank_world()
    if world == 1:
        return predict_logits_on_device(
            model, val_u8, input_size, autocast, tta_flip=config.tta_flip
        )
    n = len(val_u8)
    per = math.ceil(n / world)
    idx = torch.arange(rank, n, world, device=val_u8.device)
    mine = predict_logits_on_device(
        model, val_u8[idx], input_size, autocast, tta_flip=config.tta_flip
    )
    padded = torch.zeros((per, mine.shape[1]), device=mine.device)
    padded[: len(mine)] = mine
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    full = torch.zeros((n, mine.shape[1]), device=mine.device)
    for r, part in enumerate(parts):
        count = len(range(r, n, world))
        full[r::world] = part[:count]
    return full


# History columns that measure the machine, not the model: kept in reports, out of checkpoints.
WALL_CLOCK_KEYS = ("seconds", "images_per_s")


def val_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Loss, accuracy and balanced accuracy over the classes present, computed on the device."""
    loss = F.cross_entropy(logits, labels).item()
    preds = logits.argmax(1)
    correct = (preds == labels).float()
    per_class = torch.zeros(num_classes, device=logits.device).index_add_(0, labels, correct)
    support = torch.bincount(labels, minlength=num_classes).float()
    present = support > 0
    recall = per_class[present] / support[present]
    return {
        "loss": loss,
        "accuracy": correct.mean().item(),
        "balanced_accuracy": recall.mean().item(),
    }


def _all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if _rank_world()[1] > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def _broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's decision for every rank (used for the wall-clock budget)."""
    if _rank_world()[1] == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.broadcast(value, src=0)
    return bool(value.item())


def fit(
    model: nn.Module,
    train_images: np.ndarray,
    train_targets: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    config: TrainConfig,
    checkpoint_path: str | Path,
    meta: dict[str, Any],
    num_classes: int = NUM_CLASSES,
    resume_path: str | Path | None = None,
    log: Log = print,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    after_step: Callable[[int], None] | None = None,
    target_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> FitResult:
    """Train `model`; the best validation epoch's weights (EMA weights when on) are written to
    `checkpoint_path` when training ends.

    `train_targets` are class indices (N) or label distributions (N×C, e.g. FER+ votes).
    `meta` is stored in the checkpoint (it names the model and input size, see
    save_checkpoint). With `resume_path`, an epoch-end state (including the best weights so
    far) is written there after each epoch and picked up by the next call with the same
    settings, model and data; it is removed once the checkpoint is written. `target_fn`, when
    given, turns each augmented batch and its targets into the targets the step learns (online
    distillation, `ferlab.training.distill.OnlineTeacher`); it must draw no random numbers.
    `clock` and `after_step` exist for tests (a fake clock for the budget; a slowed step).
    """
    config.validate()
    rank, world = _rank_world()
    device = resolve_device(config.device)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    autocast = autocast_for(device, config.bf16)
    input_size = int(meta["input_size"])
    if train_targets.ndim == 1:
        hard_labels = train_targets.astype(np.int64)
        targets_np = np.eye(num_classes, dtype=np.float32)[hard_labels]
    else:
        hard_labels = train_targets.argmax(axis=1)
        targets_np = train_targets.astype(np.float32)
    weights = None
    if config.class_balance == "weights":
        weights = torch.tensor(class_weights(hard_labels, num_classes), dtype=torch.float32)
        weights = weights.to(device)

    # The data live on the device once: batches are index lookups, not copies from numpy.
    images_u8 = torch.from_numpy(np.ascontiguousarray(train_images)).to(device)
    targets = torch.from_numpy(targets_np).to(device)
    hard = torch.from_numpy(hard_labels).to(device)
    val_u8 = torch.from_numpy(np.ascontiguousarray(val_images)).to(device)
    val_y = torch.from_numpy(np.asarray(val_labels, dtype=np.int64)).to(device)

    model = model.to(device).to(memory_format=torch.channels_last)
    ema = WeightEma(model, config.ema_decay) if config.ema_decay > 0 else None
    train_view: nn.Module = _WithHeads(model)
    if world > 1:
        train_view = nn.parallel.DistributedDataParallel(
            train_view, device_ids=[device.index] if device.type == "cuda" else None
        )
    if config.compile:
        # Only the training forward: validation and the checkpoint use the plain modules, which
        # share these parameters. Every step has the same shape, so it compiles once.
        train_view = torch.compile(train_view)
    per_rank = len(train_images) // world
    # Full batches only: every step has the same shape (BatchNorm on a 1-face batch fails).
    steps_per_epoch = max(per_rank // config.batch_size, 1)
    batch = min(config.batch_size, per_rank)
    optimizer = _make_optimizer(model, config)
    scheduler = LrSchedule(
        optimizer, config.scheduler, config.lr, config.epochs * steps_per_epoch, config.warmup
    )
    albu = albumentations_pipeline(config.seed) if config.augment == "albumentations" else None

    result = FitResult()
    bad_epochs = 0
    start_epoch = 1
    best_state: dict[str, torch.Tensor] | None = None
    trained_before = 0.0
    # What a saved state must match to be resumed: everything that changes the result. The
    # budget is left out on purpose: a run can be given more minutes and picked up again.
    fingerprint = {
        **asdict(config),
        "n_train": len(train_images),
        "world": world,
        "model": meta.get("model"),
        "input_size": input_size,
        "variant": meta.get("variant"),
        "data_sha256": meta.get("data_sha256"),
        "targets_sha256": _array_digest(targets_np),
    }
    if target_fn is not None:
        # Online teachers make every step's targets: a state of other teachers is not resumed.
        fingerprint["target_fn"] = getattr(target_fn, "fingerprint", repr(target_fn))
    fingerprint.pop("max_minutes")
    resume_path = Path(resume_path) if resume_path else None
    if resume_path and resume_path.is_file():
        state = torch.load(resume_path, map_location="cpu", weights_only=True)
        if state.get("fingerprint") == fingerprint:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if ema is not None:
                ema.model.load_state_dict(state["ema"])
                ema.updates = int(state["ema_updates"])
            best_state = state["best_state"]
            trained_before = state["seconds"]
            result.history = state["history"]
            result.best_epoch = state["best_epoch"]
            result.best_val_accuracy = state["best_val_accuracy"]
            bad_epochs = state["bad_epochs"]
            start_epoch = state["epoch"] + 1
            log(f"resuming after epoch {state['epoch']} from {resume_path}")
        else:
            log(f"{resume_path}: saved state is for other settings; starting afresh")

    started = clock()
    for epoch in range(start_epoch, config.epochs + 1):
        torch.manual_seed(derived_seed(config.seed, epoch, rank, 1))  # dropout
        generator = augmentation_generator(config.seed, epoch, rank, device)
        order = epoch_order(hard_labels, epoch, config, num_classes)
        order = torch.from_numpy(order[rank * per_rank : (rank + 1) * per_rank]).to(device)
        train_view.train()
        t0 = clock()
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss·n, correct, seen
        for step in range(steps_per_epoch):
            idx = order[step * batch : (step + 1) * batch]
            if albu is not None:
                albu.set_random_seed(derived_seed(config.seed, epoch, rank, 3, step))
                faces = images_u8[idx].cpu().numpy()
                faces = np.stack([albu(image=f)["image"] for f in faces])
                x = faces_to_input(torch.from_numpy(faces).to(device), input_size)
            else:
                x = faces_to_input(images_u8[idx], input_size, generator, config.augment == "torch")
            target = targets[idx]
            if config.mixup_alpha > 0:
                x, target = mixup(x, target, config.mixup_alpha, generator)
            if target_fn is not None:
                target = target_fn(x, target)
            with autocast if autocast is not None else contextlib.nullcontext():
                logits, heads = train_view(x)
            loss = total_loss(
                logits.float(),
                target,
                None if heads is None else heads.float(),
                lam=config.attention_lambda,
                label_smoothing=config.label_smoothing,
                class_weights=weights,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update(model)
            # Accumulated on the device; read once per epoch (no host sync per step).
            with torch.no_grad():
                sums[0] += loss.detach().double() * len(idx)
                sums[1] += (logits.argmax(1) == hard[idx]).sum()
                sums[2] += len(idx)
            if after_step is not None:
                after_step(step)
            if rank == 0 and (step + 1) % 50 == 0:
                rate = (step + 1) * batch * world / max(clock() - t0, 1e-9)
                log(f"  epoch {epoch} step {step + 1}/{steps_per_epoch} {rate:.0f} img/s")
        seconds = clock() - t0
        loss_sum, correct, seen = _all_reduce_sum(sums).tolist()
        eval_model = ema.model if ema is not None else model
        val = val_metrics(
            _gather_val_logits(eval_model, val_u8, config, input_size, autocast),
            val_y,
            num_classes,
        )
        row = {
            "epoch": epoch,
            "train_loss": loss_sum / max(seen, 1),
            "train_accuracy": correct / max(seen, 1),
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "val_balanced_accuracy": val["balanced_accuracy"],
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": seconds,
            "images_per_s": seen / max(seconds, 1e-9),
        }
        result.history.append(row)
        improved = val["accuracy"] > result.best_val_accuracy
        if improved:
            result.best_val_accuracy = val["accuracy"]
            result.best_epoch = epoch
            best_state = {k: v.detach().cpu().clone() for k, v in eval_model.state_dict().items()}
            bad_epochs = 0
        else:
            bad_epochs += 1
        if rank == 0:
            log(
                f"epoch {epoch}/{config.epochs} loss {row['train_loss']:.4f} "
                f"acc {row['train_accuracy']:.3f} | val loss {row['val_loss']:.4f} "
                f"acc {row['val_accuracy']:.3f} bal {row['val_balanced_accuracy']:.3f} | "
                f"{row['images_per_s']:.0f} img/s{' *' if improved else ''}"
            )
            if on_epoch is not None:
                on_epoch(row)
            if resume_path:
                _save_state(
                    resume_path,
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "ema": ema.model.state_dict() if ema is not None else {},
                        "ema_updates": ema.updates if ema is not None else 0,
                        "best_state": best_state,
                        "seconds": trained_before + clock() - started,
                        "epoch": epoch,
                        "history": result.history,
                        "best_epoch": result.best_epoch,
                        "best_val_accuracy": result.best_val_accuracy,
                        "bad_epochs": bad_epochs,
                        "fingerprint": fingerprint,
                    },
                )
        if config.early_stopping_patience and bad_epochs >= config.early_stopping_patience:
            result.stop_reason = f"no val improvement for {bad_epochs} epochs"
            break
        budget_spent = bool(config.max_minutes) and (
            trained_before + clock() - started >= config.max_minutes * 60
        )
        if _broadcast_flag(budget_spent, device) and epoch < config.epochs:
            result.stop_reason = f"time budget of {config.max_minutes} min (machine-dependent)"
            break
    result.seconds = trained_before + clock() - started
    if rank == 0:
        if best_state is None:
            raise RuntimeError("training ended without a validated epoch")
        best_model = copy.deepcopy(model).cpu()
        best_model.load_state_dict(best_state)
        save_checkpoint(
            checkpoint_path,
            best_model,
            {
                **meta,
                "epoch": result.best_epoch,
                # Scores only: the epoch's wall time would give equal weights a new file hash.
                "val_metrics": {
                    k: v
                    for k, v in result.history[result.best_epoch - 1].items()
                    if k not in WALL_CLOCK_KEYS
                },
            },
        )
        if resume_path and resume_path.is_file():
            resume_path.unlink()
    return result


def _array_digest(array: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def _save_state(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
