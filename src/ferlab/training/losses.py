"""Training losses: cross-entropy (hard or soft targets) plus DDAMFN's attention loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention_loss(heads: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """L_att = (number of head pairs) / (sum over pairs i<j of MSE(map_i, map_j) + eps).

    `heads` is N×H×C×h×w (one attention map per head). Minimising it pushes the heads apart
    so that they attend to different regions (DDAMFN). With one head there is nothing to
    separate and the loss is 0. `eps` keeps it finite (about pairs/eps) when heads coincide.
    """
    if heads.ndim != 5:
        raise ValueError(f"attention heads must be N×H×C×h×w, got shape {tuple(heads.shape)}")
    num_heads = heads.shape[1]
    if num_heads < 2:
        return heads.new_zeros((), dtype=torch.float32)
    maps = heads.float()
    i, j = torch.triu_indices(num_heads, num_heads, offset=1, device=heads.device)
    # MSE per pair: mean over batch, channels and positions, as F.mse_loss(map_i, map_j).
    pair_mse = (maps[:, i] - maps[:, j]).pow(2).mean(dim=(0, 2, 3, 4))
    return i.numel() / (pair_mse.sum() + eps)


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    label_smoothing: float = 0.0,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy for class indices (N) or target distributions (N×C, e.g. FER+ votes).

    One formula for both, so a one-hot distribution gives exactly the hard-target loss:
    loss = Σ_n Σ_c w_c t_nc (−log p_nc) / Σ_n Σ_c w_c t_nc, with t smoothed as
    t (1 − ε) + ε / C. Without weights the denominator is N (the batch mean); with weights
    and hard targets it matches `F.cross_entropy(weight=...)`.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be N×C, got shape {tuple(logits.shape)}")
    n, num_classes = logits.shape
    if target.ndim == 1 and not target.is_floating_point():
        if target.shape[0] != n:
            raise ValueError(f"{target.shape[0]} targets for {n} logits")
        if n and (target.min() < 0 or target.max() >= num_classes):
            raise ValueError(f"class indices must be in [0, {num_classes}), got {target.tolist()}")
        dist = F.one_hot(target, num_classes).float()
    elif target.shape == logits.shape and target.is_floating_point():
        dist = target.float()
    else:
        raise ValueError(
            f"targets must be class indices (N, integer) or distributions N×{num_classes} "
            f"(float); got {tuple(target.shape)} {target.dtype} for logits {tuple(logits.shape)}"
        )
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if label_smoothing:
        dist = dist * (1 - label_smoothing) + label_smoothing / num_classes
    weighted = dist
    if class_weights is not None:
        if class_weights.shape != (num_classes,):
            raise ValueError(f"class_weights must have {num_classes} entries")
        weighted = dist * class_weights.to(dist)
    log_p = F.log_softmax(logits.float(), dim=1)
    return -(weighted * log_p).sum() / weighted.sum().clamp_min(1e-12)


def total_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    heads: torch.Tensor | None,
    lam: float,
    *,
    label_smoothing: float = 0.0,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """cross_entropy(logits, target) + lam · attention_loss(heads); `heads` None for models
    without attention heads (the baseline)."""
    loss = cross_entropy(
        logits, target, label_smoothing=label_smoothing, class_weights=class_weights
    )
    if heads is not None and lam:
        loss = loss + lam * attention_loss(heads)
    return loss
