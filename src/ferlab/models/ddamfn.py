"""DDAMFN: the MFN backbone, a dual-direction attention network (DDAN) and a GDConv head.

After Zhang et al., "A Dual-Direction Attention Mixed Feature Network for Facial Expression
Recognition", Electronics 2023, 12(17), 3595. Written from the paper's description; trained
from scratch here (the reference's MS-Celeb-1M pretraining is not available).

Where this differs from the reference implementation (4,187,936 parameters at 112×112, 2 heads,
8 classes; this one has 4,134,544, −1.3%):
- one grayscale input channel instead of three (−1,152 parameters);
- modules the reference builds but never calls are left out: a 7×7 GDConv in every head and a
  BatchNorm over the class logits (−52,240);
- its MixConv layer builds a BatchNorm and PReLU but skips them in `forward`; here they are
  applied, as after every depthwise conv of MobileFaceNet (same parameter count);
- the classifier is the reference's: linear GDConv (k×k depthwise conv + BN, no activation)
  giving the 512-d embedding, then dropout (ours) and one fully connected layer. An extra
  512×512 linear layer would add 263k parameters (+6%) that the reference does not have;
- the last downsampling is dropped for inputs below 81 (see `ferlab.models.mfn`), so the
  attention maps are 6×6 at 48 and 8×8 at 64 instead of 3×3 and 4×4.
"""

from __future__ import annotations

import torch
from torch import nn

from ferlab.models import check_common, register
from ferlab.models.mfn import MFN, AxisGates, LinearConv


class DualDirectionHead(nn.Module):
    """One DDA head: coordinate attention whose average pooling is replaced by learned linear
    GDConvs, a depthwise 1×k conv (pools along the width, one value per row) and a depthwise
    k×1 conv (pools along the height, one value per column), followed by the shared squeeze
    and one sigmoid gate per direction. The head's map is the product of the two gates,
    N×C×k×k."""

    def __init__(self, channels: int, size: int) -> None:
        super().__init__()
        self.pool_rows = LinearConv(channels, channels, (1, size), groups=channels)
        self.pool_cols = LinearConv(channels, channels, (size, 1), groups=channels)
        self.gates = AxisGates(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.pool_rows(x).flatten(2)  # N×C×H
        cols = self.pool_cols(x).flatten(2)  # N×C×W
        gate_rows, gate_cols = self.gates(rows, cols)
        return gate_rows * gate_cols


@register("ddamfn")
class DDAMFN(nn.Module):
    """Faces N×1×S×S → logits N×classes.

    `forward_with_heads` also returns the heads' attention maps (N×H×C×s×s) for the
    attention loss; `feature_maps` returns the MFN features and the max-over-heads map for
    the attention figure.
    """

    def __init__(
        self,
        input_size: int,
        num_classes: int = 8,
        heads: int = 2,
        width: float = 1.0,
        activation: str = "prelu",
        dropout: float = 0.0,
    ) -> None:
        check_common("ddamfn", heads=heads, width=width, activation=activation, dropout=dropout)
        super().__init__()
        self.backbone = MFN(input_size, width=width, activation=activation)
        channels, size = self.backbone.out_channels, self.backbone.out_size
        self.heads = nn.ModuleList(DualDirectionHead(channels, size) for _ in range(heads))
        # Linear GDConv: a k×k depthwise conv over the whole map + BN → the C-dim embedding.
        self.embed = LinearConv(channels, channels, size, groups=channels)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)

    def feature_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(MFN features N×C×s×s, heads' maps N×H×C×s×s)."""
        features = self.backbone(x)
        maps = torch.stack([head(features) for head in self.heads], dim=1)
        return features, maps

    def forward_with_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features, maps = self.feature_maps(x)
        # The element-wise maximum over heads gates the features.
        attended = features * maps.amax(dim=1)
        embedding = self.embed(attended).flatten(1)
        return self.fc(self.dropout(embedding)), maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_heads(x)[0]
