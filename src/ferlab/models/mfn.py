"""MFN: the MixConv face-net backbone of DDAMFN (Electronics 2023, 12(17), 3595).

Written from the paper's description and the project's design sketch ("Model"):
a MobileFaceNet-style network whose bottlenecks use MixConv depthwise kernels and coordinate
attention. Stage layout and channel numbers follow the reference so that the full DDAMFN has
about 4.1M parameters at width 1.0.

Geometry. The reference sees 112×112 faces: a stride-2 stem, then three stride-2 MixConv
transitions, a total stride of 16 and a 7×7×512 final map. FER2013+ faces are 48×48 crops of
the same field of view, where a stride of 16 would leave 3×3, too coarse for a spatial
attention map. `deep_stride` therefore keeps the last transition at stride 2 only when the
total stride 16 leaves at least a 6×6 map (inputs ≥ 81) and otherwise makes it stride 1
(total stride 8): 48 → 6×6, 64 → 8×8, 112 → 7×7. Dropping the *last* downsampling, not the
stem's, keeps stages 1 and 2 at the reference's 4 and 8 input pixels per cell (12×12 and 6×6
at 48 input, 28×28 and 14×14 at 112) and costs 158M multiply-adds per 48×48 face, against
395M for a stride-1 stem with the usual transitions (536M at 112, as the reference's 0.54G).
"""

from __future__ import annotations

import math

import torch
from torch import nn

ACTIVATIONS: tuple[str, ...] = ("prelu", "relu", "leaky_relu")
MIN_FINAL_MAP = 6  # smallest final feature map (side) worth attending over


def make_activation(name: str, channels: int) -> nn.Module:
    """The selectable non-linearity; PReLU learns one slope per channel as in the reference."""
    if name == "prelu":
        return nn.PReLU(channels)
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "leaky_relu":
        return nn.LeakyReLU(0.1, inplace=True)
    raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}")


def scaled(channels: int, width: float, divisor: int = 8) -> int:
    """Channels times the width multiplier, rounded to a multiple of `divisor` (≥ divisor)."""
    return max(divisor, round(channels * width / divisor) * divisor)


def deep_stride(input_size: int) -> int:
    """Stride of the last transition: 2 (total stride 16) if that leaves a ≥6×6 map, else 1."""
    return 2 if math.ceil(input_size / 16) >= MIN_FINAL_MAP else 1


def final_map_size(input_size: int) -> int:
    """Side of the backbone's output map: every stride-2 layer here maps n to ceil(n / 2)."""
    side = input_size
    for stride in (2, 2, 2, deep_stride(input_size)):
        side = math.ceil(side / stride)
    return side


class ConvBNAct(nn.Sequential):
    """Conv (no bias) → BatchNorm → activation."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int | tuple[int, int] = 1,
        stride: int = 1,
        groups: int = 1,
        activation: str = "prelu",
    ) -> None:
        k = (kernel, kernel) if isinstance(kernel, int) else kernel
        pad = (k[0] // 2, k[1] // 2)
        super().__init__(
            nn.Conv2d(cin, cout, k, stride, pad, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            make_activation(activation, cout),
        )


class LinearConv(nn.Sequential):
    """Conv (no bias) → BatchNorm with no activation: the 'linear' blocks of MobileFaceNet.

    With `padding=0` and a kernel the size of the map it is a GDConv (global depthwise conv).
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int | tuple[int, int] = 1,
        groups: int = 1,
        padding: int = 0,
    ) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, 1, padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        )


class HSwish(nn.Module):
    """x · ReLU6(x + 3) / 6, the non-linearity inside coordinate attention."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * nn.functional.relu6(x + 3.0) / 6.0


def split_channels(channels: int, fractions: tuple[float, ...]) -> list[int]:
    """Split `channels` by `fractions`; the first (smallest-kernel) group takes the remainder."""
    sizes = [int(channels * f) for f in fractions[1:]]
    return [channels - sum(sizes), *sizes]


class MixDepthwise(nn.Module):
    """MixConv: depthwise convs with different kernels on consecutive channel groups, then BN
    and activation over all channels.

    The groups' kernels are stored as the paper has them (one k×k depthwise conv per group).
    `fused=True` runs them as ONE depthwise conv whose kernels are zero-padded to the largest
    size: the same result (a zero weight adds nothing), one call instead of split, several
    convs and concat, but up to 2× the multiply-adds. On this project's AVX2 CPU the split
    groups measured faster (benchmarks/bench_train.py), so they are the default.
    """

    def __init__(
        self,
        channels: int,
        kernels: tuple[int, ...],
        fractions: tuple[float, ...],
        stride: int,
        activation: str,
        fused: bool = False,
    ) -> None:
        super().__init__()
        self.splits = split_channels(channels, fractions)
        self.convs = nn.ModuleList(
            nn.Conv2d(c, c, k, stride, k // 2, groups=c, bias=False)
            for c, k in zip(self.splits, kernels, strict=True)
        )
        self.kmax = max(kernels)
        self.stride = stride
        self.fused = fused
        self.bn = nn.BatchNorm2d(channels)
        self.act = make_activation(activation, channels)

    def fused_weight(self) -> torch.Tensor:
        """All groups' kernels, each zero-padded (centred) to kmax×kmax: C×1×kmax×kmax."""
        parts = []
        for conv in self.convs:
            pad = (self.kmax - conv.kernel_size[0]) // 2
            parts.append(nn.functional.pad(conv.weight, (pad, pad, pad, pad)))
        return torch.cat(parts, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            x = nn.functional.conv2d(
                x, self.fused_weight(), None, self.stride, self.kmax // 2, 1, x.shape[1]
            )
        else:
            parts = torch.split(x, self.splits, dim=1)
            x = torch.cat([conv(p) for conv, p in zip(self.convs, parts, strict=True)], dim=1)
        return self.act(self.bn(x))


class AxisGates(nn.Module):
    """The shared part of coordinate attention: a 1×1 squeeze (with BN and h-swish) over the
    per-row and per-column descriptors together, then one sigmoid gate per axis.

    The 1×1 convs are written as `nn.Linear` over the channel axis: the same maths and
    parameter count as 1×1 `Conv2d` on an N×C×(H+W)×1 tensor, whose oneDNN backward was
    among the costliest ops of a training step when profiled on this project's CPU.
    """

    def __init__(self, channels: int, reduction: int = 32) -> None:
        super().__init__()
        mid = max(8, channels // reduction)
        self.squeeze = nn.Linear(channels, mid)
        self.bn = nn.BatchNorm1d(mid)
        self.act = HSwish()
        self.gate_h = nn.Linear(mid, channels)
        self.gate_w = nn.Linear(mid, channels)

    def forward(self, rows: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """rows N×C×H, cols N×C×W → gates N×C×H×1 and N×C×1×W."""
        h = rows.shape[2]
        y = self.squeeze(torch.cat([rows, cols], dim=2).transpose(1, 2))  # N×(H+W)×mid
        y = self.act(self.bn(y.transpose(1, 2))).transpose(1, 2)
        gate_h = torch.sigmoid(self.gate_h(y[:, :h])).transpose(1, 2).unsqueeze(3)
        gate_w = torch.sigmoid(self.gate_w(y[:, h:])).transpose(1, 2).unsqueeze(2)
        return gate_h, gate_w


class CoordinateAttention(nn.Module):
    """Coordinate attention (Hou et al., CVPR 2021): average-pool along each axis, then
    `AxisGates`; the input is multiplied by both gates."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gates = AxisGates(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_h, gate_w = self.gates(x.mean(dim=3), x.mean(dim=2))
        return x * gate_h * gate_w


class MixBottleneck(nn.Module):
    """1×1 expand (conv-BN-act) → MixConv depthwise → coordinate attention → 1×1 linear
    projection, with an identity shortcut when shapes allow and `residual` is set."""

    def __init__(
        self,
        cin: int,
        cout: int,
        expanded: int,
        kernels: tuple[int, ...],
        fractions: tuple[float, ...],
        stride: int = 1,
        residual: bool = True,
        activation: str = "prelu",
    ) -> None:
        super().__init__()
        self.expand = ConvBNAct(cin, expanded, 1, activation=activation)
        self.depthwise = MixDepthwise(expanded, kernels, fractions, stride, activation)
        self.attention = CoordinateAttention(expanded)
        self.project = LinearConv(expanded, cout, 1)
        self.residual = residual and stride == 1 and cin == cout
        if self.residual:
            # Zero-init the branch's last BN scale: each block starts as the identity, so this
            # 30-block net trains from scratch like a shallow one at first ("zero-γ" init).
            nn.init.zeros_(self.project[1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.attention(self.depthwise(self.expand(x))))
        return x + y if self.residual else y


# (kernels, channel fractions) per block kind, after the reference's splits.
TRANSITION_MIX = ((3, 5, 7), (0.5, 0.25, 0.25))
STAGE_MIX = ((3, 5), (0.75, 0.25))
DEEP_TRANSITION_MIX = ((3, 5, 7, 9), (0.25, 0.25, 0.25, 0.25))
DEEP_STAGE_MIX = ((3, 5, 7), (1 / 3, 1 / 3, 1 / 3))


class MFN(nn.Module):
    """Backbone: N×1×S×S faces → N×(512·width)×s×s features (s = `final_map_size(S)`).

    Stages (channels at width 1.0, expansion channels in brackets): stem 3×3 conv ↓2 to 64,
    3×3 depthwise, MixConv transition ↓2 [128] then 9 residual bottlenecks of 64 ch [128],
    transition ↓2 to 128 [256] then 16 bottlenecks [256], transition (↓2 or ↓1, see
    `deep_stride`) to 256 [1024] then 6 bottlenecks [512], and a 1×1 conv to 512.
    """

    def __init__(self, input_size: int, width: float = 1.0, activation: str = "prelu") -> None:
        super().__init__()
        c64, c128, c256, c512 = (scaled(c, width) for c in (64, 128, 256, 512))
        act = activation

        def stage(channels: int, expanded: int, blocks: int, mix: tuple) -> nn.Sequential:
            return nn.Sequential(
                *(
                    MixBottleneck(channels, channels, expanded, *mix, activation=act)
                    for _ in range(blocks)
                )
            )

        def transition(
            cin: int, cout: int, expanded: int, mix: tuple, stride: int = 2
        ) -> MixBottleneck:
            return MixBottleneck(
                cin, cout, expanded, *mix, stride=stride, residual=False, activation=act
            )

        self.input_size = input_size
        self.out_channels = c512
        self.out_size = final_map_size(input_size)
        self.stem = nn.Sequential(
            ConvBNAct(1, c64, 3, stride=2, activation=act),
            ConvBNAct(c64, c64, 3, groups=c64, activation=act),
        )
        self.stage1 = nn.Sequential(
            transition(c64, c64, 2 * c64, TRANSITION_MIX), stage(c64, 2 * c64, 9, STAGE_MIX)
        )
        self.stage2 = nn.Sequential(
            transition(c64, c128, 2 * c128, TRANSITION_MIX), stage(c128, 2 * c128, 16, STAGE_MIX)
        )
        self.stage3 = nn.Sequential(
            transition(c128, c256, 4 * c256, DEEP_TRANSITION_MIX, deep_stride(input_size)),
            stage(c256, 2 * c256, 6, DEEP_STAGE_MIX),
        )
        self.head = ConvBNAct(c256, c512, 1, activation=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage1(self.stem(x))
        return self.head(self.stage3(self.stage2(x)))
