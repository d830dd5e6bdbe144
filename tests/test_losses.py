"""Cross-entropy (hard and soft targets) and DDAMFN's attention loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ferlab.training.losses import attention_loss, cross_entropy, total_loss


def heads_from(maps: list[list[float]]) -> torch.Tensor:
    """One face, one channel, a 1×W map per head: N×H×C×h×w = 1×H×1×1×W."""
    return torch.tensor(maps, dtype=torch.float32)[None, :, None, None, :]


def test_attention_loss_matches_the_formula_by_hand() -> None:
    heads = heads_from([[0.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    # Pairwise MSE: (0,1) → (1 + 1) / 2 = 1; (0,2) → (0 + 4) / 2 = 2; (1,2) → (1 + 1) / 2 = 1.
    # Three pairs: L = 3 / (1 + 2 + 1) = 0.75.
    assert attention_loss(heads, eps=0.0).item() == pytest.approx(0.75)
    assert attention_loss(heads).item() == pytest.approx(3 / (4 + 1e-8))


def test_attention_loss_averages_mse_over_batch_channels_and_positions() -> None:
    torch.manual_seed(0)
    heads = torch.rand(4, 2, 3, 5, 5)
    expected = 1 / F.mse_loss(heads[:, 0], heads[:, 1]).item()
    assert attention_loss(heads, eps=0.0).item() == pytest.approx(expected, rel=1e-5)


def test_attention_loss_is_finite_when_heads_coincide() -> None:
    same = torch.full((2, 1, 4, 3, 3), 0.3).expand(2, 4, 4, 3, 3).clone().requires_grad_()
    loss = attention_loss(same, eps=1e-8)
    assert math.isfinite(loss.item())
    assert loss.item() == pytest.approx(6 / 1e-8)  # 4 heads → 6 pairs
    loss.backward()
    assert torch.isfinite(same.grad).all()


def test_attention_loss_of_one_head_is_zero() -> None:
    assert attention_loss(torch.rand(3, 1, 8, 6, 6)).item() == 0.0


def test_attention_loss_rejects_a_wrong_shape() -> None:
    with pytest.raises(ValueError, match="N×H×C×h×w"):
        attention_loss(torch.rand(3, 2, 6, 6))


def test_soft_one_hot_targets_give_the_hard_cross_entropy() -> None:
    torch.manual_seed(1)
    logits = torch.randn(16, 8)
    target = torch.randint(0, 8, (16,))
    one_hot = F.one_hot(target, 8).float()
    hard = cross_entropy(logits, target)
    assert hard.item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-6)
    assert cross_entropy(logits, one_hot).item() == pytest.approx(hard.item(), rel=1e-6)


def test_label_smoothing_and_class_weights_agree_with_torch() -> None:
    torch.manual_seed(2)
    logits = torch.randn(32, 8)
    target = torch.randint(0, 8, (32,))
    weights = torch.linspace(0.5, 4.0, 8)
    smoothed = cross_entropy(logits, target, label_smoothing=0.1)
    assert smoothed.item() == pytest.approx(
        F.cross_entropy(logits, target, label_smoothing=0.1).item(), rel=1e-6
    )
    weighted = cross_entropy(logits, target, class_weights=weights)
    assert weighted.item() == pytest.approx(
        F.cross_entropy(logits, target, weight=weights).item(), rel=1e-6
    )
    # Soft one-hot targets follow the same weighting.
    one_hot = F.one_hot(target, 8).float()
    assert cross_entropy(logits, one_hot, class_weights=weights).item() == pytest.approx(
        weighted.item(), rel=1e-6
    )


def test_soft_targets_give_the_mean_distribution_cross_entropy() -> None:
    torch.manual_seed(3)
    logits = torch.randn(5, 8)
    votes = torch.rand(5, 8)
    dist = votes / votes.sum(dim=1, keepdim=True)
    expected = -(dist * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    assert cross_entropy(logits, dist).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (torch.tensor([0, 8]), "class indices"),
        (torch.tensor([0, 1, 2]), "targets for"),
        (torch.rand(2, 7), "distributions"),
    ],
)
def test_bad_targets_are_refused(target: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cross_entropy(torch.randn(2, 8), target)


def test_total_loss_adds_lambda_times_the_attention_loss() -> None:
    torch.manual_seed(4)
    logits = torch.randn(4, 8)
    target = torch.randint(0, 8, (4,))
    heads = torch.rand(4, 2, 16, 3, 3)
    ce = cross_entropy(logits, target, label_smoothing=0.05)
    total = total_loss(logits, target, heads, 0.1, label_smoothing=0.05)
    assert total.item() == pytest.approx(ce.item() + 0.1 * attention_loss(heads).item(), rel=1e-6)
    assert total_loss(logits, target, None, 0.1).item() == pytest.approx(
        cross_entropy(logits, target).item()
    )
