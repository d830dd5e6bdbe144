"""The model registry: a model registers itself under a name with its own arguments.

Every model takes grayscale faces N×1×S×S (normalised as `ferlab.checkpoint.NORMALIZATION`)
and returns logits N×num_classes. Models with attention heads (`ddamfn`) also have
`forward_with_heads(x) -> (logits, heads N×H×C×h×w)` for the attention loss.

A model class is registered with `@register("name")`; its constructor's keyword arguments
(after `input_size` and `num_classes`) are its options, which params.yaml gives under
`model.<name>`. Each model checks its own values (`check_common` covers the shared ones);
an option a model does not take is refused here, naming the model and what it accepts.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

from torch import nn

from ferlab.classes import NUM_CLASSES

MIN_INPUT_SIZE = 16
_REGISTRY: dict[str, type[nn.Module]] = {}


def register(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a model buildable by `build_model(name, ...)`."""

    def add(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = cls
        return cls

    return add


def model_names() -> tuple[str, ...]:
    _load_builtin_models()
    return tuple(sorted(_REGISTRY))


def model_options(name: str) -> dict[str, Any]:
    """The options a registered model takes, with their defaults."""
    _load_builtin_models()
    signature = inspect.signature(_REGISTRY[name].__init__)
    return {
        p.name: p.default
        for p in signature.parameters.values()
        if p.name not in ("self", "input_size", "num_classes")
    }


def check_common(model: str, **values: Any) -> None:
    """Validate the options several models share; one ValueError naming model and option."""
    problems = []

    def is_number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

    if "width" in values and not (is_number(values["width"]) and 0 < values["width"] <= 4):
        problems.append(f"width={values['width']!r} must be a number in (0, 4]")
    if "dropout" in values and not (is_number(values["dropout"]) and 0 <= values["dropout"] < 1):
        problems.append(f"dropout={values['dropout']!r} must be a number in [0, 1)")
    if "activation" in values:
        from ferlab.models.mfn import ACTIVATIONS

        if values["activation"] not in ACTIVATIONS:
            problems.append(
                f"activation={values['activation']!r} must be one of {', '.join(ACTIVATIONS)}"
            )
    if "heads" in values:
        h = values["heads"]
        if not (isinstance(h, int) and not isinstance(h, bool) and 1 <= h <= 16):
            problems.append(f"heads={h!r} must be an integer from 1 to 16")
    if problems:
        raise ValueError(f"invalid options for model {model!r}: " + "; ".join(problems))


def build_model(
    name: str, *, input_size: int, num_classes: int = NUM_CLASSES, **options: Any
) -> nn.Module:
    """Build a registered model; unknown names, options or bad values raise one ValueError."""
    _load_builtin_models()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(model_names())}")
    if not (isinstance(input_size, int) and not isinstance(input_size, bool)) or (
        input_size < MIN_INPUT_SIZE
    ):
        raise ValueError(f"input_size={input_size!r} must be an integer ≥ {MIN_INPUT_SIZE}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r} must be an integer ≥ 2")
    accepted = model_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"model {name!r} takes no option(s) {unknown}; it takes {sorted(accepted)} "
            f"(params.yaml `model.{name}`)"
        )
    return _REGISTRY[name](input_size=input_size, num_classes=num_classes, **options)


def _load_builtin_models() -> None:
    """Import the project's model modules, which register themselves on import."""
    from ferlab.models import baseline, ddamfn, sepnet  # noqa: F401


__all__ = ["build_model", "check_common", "model_names", "model_options", "register"]
