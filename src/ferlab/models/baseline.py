"""The seed study's first solution: a VGG-style CNN feature extractor and an MLP classifier.

About 1.8M parameters at width 1.0. Four blocks of two 3×3 conv-BN-activation layers, each
followed by 2×2 max pooling (48 → 24 → 12 → 6 → 3), then an MLP on the 3×3 map. Dense 3×3
convolutions are what the CPU's bf16 matrix units do best, so this net trains quickly under
`torch.autocast("cpu", dtype=torch.bfloat16)` with channels_last (see benchmarks/).
"""

from __future__ import annotations

import torch
from torch import nn

from ferlab.models import check_common, register
from ferlab.models.mfn import ConvBNAct, make_activation, scaled

POOLED_SIZE = 3  # side of the map the MLP sees, whatever the input size


@register("baseline")
class BaselineCNN(nn.Module):
    """Faces N×1×S×S → logits N×classes. Has no attention heads."""

    def __init__(
        self,
        input_size: int,
        num_classes: int = 8,
        width: float = 1.0,
        activation: str = "prelu",
        dropout: float = 0.0,
        hidden: int = 256,
    ) -> None:
        check_common("baseline", width=width, activation=activation, dropout=dropout)
        if not isinstance(hidden, int) or hidden < 8:
            raise ValueError(f"invalid options for model 'baseline': hidden={hidden!r} must be ≥ 8")
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for channels in (32, 64, 128, 256):
            cout = scaled(channels, width)
            layers += [
                ConvBNAct(cin, cout, 3, activation=activation),
                ConvBNAct(cout, cout, 3, activation=activation),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
            cin = cout
        self.input_size = input_size
        self.features = nn.Sequential(*layers)
        # At 48 input the map is already 3×3; other sizes are pooled to it so the MLP's
        # size (and the parameter count) does not depend on the input size.
        self.pool = nn.AdaptiveAvgPool2d(POOLED_SIZE)
        hidden = scaled(hidden, width)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(cin * POOLED_SIZE**2, hidden),
            make_activation(activation, hidden),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))
