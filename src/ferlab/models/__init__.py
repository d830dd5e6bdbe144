"""The model registry: one place that turns params.yaml's `model` group into a network.

Every model takes grayscale faces N×1×S×S (normalised by `ferlab.inference.to_tensor`) and
returns logits N×num_classes. Models with attention heads (`ddamfn`) also have
`forward_with_heads(x) -> (logits, heads N×H×C×h×w)` for the attention loss.

Hyper-parameters (params.yaml `model`, besides `name` and `input_size`), accepted by every
model:

- `heads`: number of DDAN attention heads (ddamfn). The baseline has no heads and ignores it.
- `width`: channel multiplier (1.0 = the reference sizes).
- `activation`: prelu | relu | leaky_relu.
- `dropout`: dropout before the classifier, in [0, 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import nn

from ferlab.classes import NUM_CLASSES
from ferlab.models.baseline import BaselineCNN
from ferlab.models.ddamfn import DDAMFN
from ferlab.models.mfn import ACTIVATIONS


def _ddamfn(input_size: int, num_classes: int, hp: dict[str, Any]) -> nn.Module:
    return DDAMFN(input_size, num_classes, **hp)


def _baseline(input_size: int, num_classes: int, hp: dict[str, Any]) -> nn.Module:
    hp = {k: v for k, v in hp.items() if k != "heads"}  # no attention heads: ignored
    return BaselineCNN(input_size, num_classes, **hp)


_BUILDERS: dict[str, Callable[[int, int, dict[str, Any]], nn.Module]] = {
    "ddamfn": _ddamfn,
    "baseline": _baseline,
}
MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)
DEFAULTS: dict[str, Any] = {"heads": 2, "width": 1.0, "activation": "prelu", "dropout": 0.0}
MIN_INPUT_SIZE = 16


def _check(hp: dict[str, Any], input_size: Any, num_classes: Any) -> dict[str, Any]:
    """Validated hyper-parameters with defaults filled in; one ValueError naming the key."""
    unknown = sorted(set(hp) - set(DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown model hyper-parameter(s) {unknown}; expected any of {sorted(DEFAULTS)} "
            "(params.yaml `model`)"
        )
    hp = {**DEFAULTS, **hp}

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_number(v: Any) -> bool:
        return (is_int(v) or isinstance(v, float)) and math.isfinite(v)

    problems = []
    if not is_int(input_size) or input_size < MIN_INPUT_SIZE:
        problems.append(f"input_size={input_size!r} must be an integer ≥ {MIN_INPUT_SIZE}")
    if not is_int(num_classes) or num_classes < 2:
        problems.append(f"num_classes={num_classes!r} must be an integer ≥ 2")
    if not is_int(hp["heads"]) or not 1 <= hp["heads"] <= 16:
        problems.append(f"heads={hp['heads']!r} must be an integer from 1 to 16")
    if not is_number(hp["width"]) or not 0 < hp["width"] <= 4:
        problems.append(f"width={hp['width']!r} must be a number in (0, 4]")
    if hp["activation"] not in ACTIVATIONS:
        problems.append(f"activation={hp['activation']!r} must be one of {', '.join(ACTIVATIONS)}")
    if not is_number(hp["dropout"]) or not 0 <= hp["dropout"] < 1:
        problems.append(f"dropout={hp['dropout']!r} must be a number in [0, 1)")
    if problems:
        raise ValueError("invalid model settings (params.yaml `model`): " + "; ".join(problems))
    return {**hp, "width": float(hp["width"]), "dropout": float(hp["dropout"])}


def build_model(
    name: str, *, input_size: int, num_classes: int = NUM_CLASSES, **hparams: Any
) -> nn.Module:
    """Build a registered model; unknown names or bad values raise one clear ValueError."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")
    hp = _check(hparams, input_size, num_classes)
    return _BUILDERS[name](input_size, num_classes, hp)


__all__ = ["DEFAULTS", "MODEL_NAMES", "build_model"]
