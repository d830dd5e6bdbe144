"""The training loop: in-memory uint8 arrays, bf16 on capable CPUs, AMP on CUDA, optional DDP.

Every source of randomness inside an epoch (shuffle order, augmentation, dropout) is seeded from
(seed, epoch), so a run killed mid-epoch and resumed from its last epoch-end state ends with the
same weights as an uninterrupted run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ferlab.checkpoint import save_checkpoint
from ferlab.classes import NUM_CLASSES
from ferlab.evaluation.metrics import classification_metrics
from ferlab.inference import softmax, to_tensor
from ferlab.io import atomic_path
from ferlab.training.augment import build_augmentation
from ferlab.training.losses import total_loss

Log = Callable[[str], None]


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"  # adam | sgd
    weight_decay: float = 1e-4
    scheduler: str = "cosine"  # cosine | step | none
    attention_lambda: float = 0.1
    label_smoothing: float = 0.0
    class_balance: str = "none"  # none | weights | sampler
    early_stopping_patience: int = 8  # 0 disables early stopping
    augment: bool = True
    num_workers: int = 0
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0
    bf16: bool = False  # bf16 autocast on CPU (CUDA always uses bf16 autocast)
    max_minutes: float = 0.0  # 0 = no wall-time limit
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
        choices = {
            "optimizer": ("adam", "sgd"),
            "scheduler": ("cosine", "step", "none"),
            "class_balance": ("none", "weights", "sampler"),
            "device": ("auto", "cpu", "cuda"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"train.{name}={getattr(self, name)!r}; choose one of {allowed}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("train.epochs, train.batch_size and train.lr must be positive")


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
    return torch.device(name)


def autocast_for(device: torch.device, bf16: bool) -> torch.autocast | None:
    """bf16 autocast on CUDA; on CPU only when asked and natively supported, else fp32.

    On CPU it is off by default: measured here (benchmarks/bench_models.py), oneDNN's bf16
    convolution backward stalls with 2 threads; with 1 thread it helps the baseline only.
    """
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


def _shared_elapsed(seconds: float, device: torch.device) -> float:
    """The slowest rank's training time, so every rank sets the same learning rate and stops
    a time-budgeted epoch at the same step (a rank that stopped alone would hang the others)."""
    if not (dist.is_available() and dist.is_initialized()):
        return seconds
    elapsed = torch.tensor([seconds], dtype=torch.float64, device=device)  # nccl: on the GPU
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
    return float(elapsed.item())


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
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=config.lr,
            momentum=0.9,
            nesterov=True,
            weight_decay=config.weight_decay,
        )
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


class LrSchedule:
    """Warm-up then cosine (or step) decay, driven by training progress.

    Progress is the larger of steps done / total steps and, under a time budget
    (`max_minutes`), elapsed / budget: a run cut short by the budget still ends with an
    annealed learning rate instead of stopping at a high one.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        kind: str,
        base_lr: float,
        total_steps: int,
        budget_s: float = 0.0,
        warmup: float = 0.05,
    ) -> None:
        self.optimizer = optimizer
        self.kind = kind
        self.base_lr = base_lr
        self.total_steps = max(total_steps, 1)
        self.budget_s = budget_s
        self.warmup = warmup
        self.steps = 0
        self._set(self.lr_at(0.0))

    def progress(self, elapsed_s: float) -> float:
        by_steps = self.steps / self.total_steps
        return max(by_steps, elapsed_s / self.budget_s) if self.budget_s else by_steps

    def lr_at(self, progress: float) -> float:
        if self.kind == "none":
            return self.base_lr
        if self.kind == "step":  # ÷10 after each third of training
            return self.base_lr * 0.1 ** min(int(progress * 3), 2)
        if progress < self.warmup:
            return self.base_lr * (0.1 + 0.9 * progress / self.warmup)
        done = (progress - self.warmup) / (1 - self.warmup)
        return self.base_lr * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))

    def step(self, elapsed_s: float) -> float:
        """Advance one optimiser step; returns the progress reached."""
        self.steps += 1
        progress = self.progress(elapsed_s)
        self._set(self.lr_at(progress))
        return progress

    def _set(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def state_dict(self) -> dict[str, int]:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.steps = int(state["steps"])


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    images: np.ndarray,
    input_size: int,
    device: torch.device,
    autocast: torch.autocast | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = to_tensor(images[start : start + batch_size], input_size).to(device)
        x = x.contiguous(memory_format=torch.channels_last)
        if autocast is not None:
            with autocast:
                out.append(model(x).float().cpu().numpy())
        else:
            out.append(model(x).float().cpu().numpy())
    return np.concatenate(out)


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
) -> FitResult:
    """Train `model`, keeping the checkpoint with the best validation accuracy.

    `train_targets` are class indices (N) or soft label distributions (N×C). `meta` is stored in
    the checkpoint (it must name the model and input size, see save_checkpoint). With
    `resume_path`, an epoch-end state is written there after each epoch and picked up on the next
    call with the same config; it is removed when training completes.
    """
    config.validate()
    rank, world = _rank_world()
    device = resolve_device(config.device)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    autocast = autocast_for(device, config.bf16)
    input_size = int(meta["input_size"])
    hard_labels = train_targets if train_targets.ndim == 1 else train_targets.argmax(axis=1)
    weights = None
    if config.class_balance == "weights":
        weights = torch.tensor(class_weights(hard_labels, num_classes), dtype=torch.float32)
        weights = weights.to(device)

    torch.manual_seed(config.seed)
    model = model.to(device).to(memory_format=torch.channels_last)
    train_view: nn.Module = _WithHeads(model)
    if world > 1:
        train_view = nn.parallel.DistributedDataParallel(
            train_view, device_ids=[device.index] if device.type == "cuda" else None
        )
    per_rank = len(train_images) // world
    steps_per_epoch = max(math.ceil(per_rank / config.batch_size), 1)
    optimizer = _make_optimizer(model, config)
    scheduler = LrSchedule(
        optimizer,
        config.scheduler,
        config.lr,
        config.epochs * steps_per_epoch,
        budget_s=config.max_minutes * 60,
    )
    transform = build_augmentation(config.seed) if config.augment else None

    result = FitResult()
    bad_epochs = 0
    start_epoch = 1
    trained_before = 0.0  # seconds trained before a resume, for the time budget
    # What a saved state must match to be resumed. The time budget is left out on purpose: a
    # slow run can be given more minutes and picked up where it stopped.
    fingerprint = {**asdict(config), "n_train": len(train_images), "world": world}
    fingerprint.pop("max_minutes")
    resume_path = Path(resume_path) if resume_path else None
    if resume_path and resume_path.is_file():
        state = torch.load(resume_path, map_location="cpu", weights_only=True)
        if state.get("fingerprint") == fingerprint:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            trained_before = state["seconds"]
            result.history = state["history"]
            result.best_epoch = state["best_epoch"]
            result.best_val_accuracy = state["best_val_accuracy"]
            bad_epochs = state["bad_epochs"]
            start_epoch = state["epoch"] + 1
            log(f"resuming after epoch {state['epoch']} from {resume_path}")
        else:
            log(f"{resume_path}: saved state is for other settings; starting afresh")

    started = time.perf_counter()
    progress = 0.0
    for epoch in range(start_epoch, config.epochs + 1):
        torch.manual_seed(config.seed * 100_003 + epoch)  # dropout etc., per epoch
        order = epoch_order(hard_labels, epoch, config, num_classes)
        order = order[rank * per_rank : (rank + 1) * per_rank]
        train_view.train()
        t0 = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        for step in range(steps_per_epoch):
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]
            faces = train_images[idx]
            if transform is not None:
                transform.set_random_seed(config.seed * 1_000_003 + epoch * 10_007 + step)
                faces = np.stack([transform(image=f)["image"] for f in faces])
            x = to_tensor(faces, input_size).to(device, non_blocking=True)
            x = x.contiguous(memory_format=torch.channels_last)
            target = torch.from_numpy(train_targets[idx]).to(device)
            if autocast is not None:
                with autocast:
                    logits, heads = train_view(x)
            else:
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
            progress = scheduler.step(
                _shared_elapsed(trained_before + time.perf_counter() - started, device)
            )
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1).cpu().numpy() == hard_labels[idx]).sum())
            seen += len(idx)
            if rank == 0 and (step + 1) % 50 == 0:
                rate = seen * world / (time.perf_counter() - t0)  # all ranks together
                log(f"  epoch {epoch} step {step + 1}/{steps_per_epoch} {rate:.0f} img/s")
            if progress >= 1.0:  # the time budget is spent: this epoch ends here
                break
        seconds = time.perf_counter() - t0
        val_probs = softmax(predict_logits(model, val_images, input_size, device, autocast))
        val = classification_metrics(val_labels, val_probs)
        row = {
            "epoch": epoch,
            "train_loss": loss_sum / max(seen, 1),
            "train_accuracy": correct / max(seen, 1),
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "val_balanced_accuracy": val["balanced_accuracy"],
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": seconds,
            "images_per_s": seen * world / seconds,
        }
        result.history.append(row)
        improved = val["accuracy"] > result.best_val_accuracy
        if improved:
            result.best_val_accuracy = val["accuracy"]
            result.best_epoch = epoch
            bad_epochs = 0
            if rank == 0:
                save_checkpoint(
                    checkpoint_path,
                    model,
                    {**meta, "epoch": epoch, "val_metrics": {k: row[k] for k in row}},
                )
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
                seconds = trained_before + time.perf_counter() - started
                _save_state(
                    resume_path,
                    model,
                    optimizer,
                    scheduler,
                    epoch,
                    result,
                    bad_epochs,
                    fingerprint,
                    seconds,
                )
        # The budget ended the run if it cut this epoch short or left epochs undone.
        if progress >= 1.0 and (epoch < config.epochs or step + 1 < steps_per_epoch):
            result.stop_reason = f"time budget of {config.max_minutes} min"
            break
        if config.early_stopping_patience and bad_epochs >= config.early_stopping_patience:
            result.stop_reason = f"no val improvement for {bad_epochs} epochs"
            break
    result.seconds = trained_before + time.perf_counter() - started
    if rank == 0 and resume_path and resume_path.is_file():
        resume_path.unlink()
    return result


def _save_state(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LrSchedule,
    epoch: int,
    result: FitResult,
    bad_epochs: int,
    fingerprint: dict[str, Any],
    seconds: float,
) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "seconds": seconds,
        "epoch": epoch,
        "history": result.history,
        "best_epoch": result.best_epoch,
        "best_val_accuracy": result.best_val_accuracy,
        "bad_epochs": bad_epochs,
        "fingerprint": fingerprint,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
