"""Reading params.yaml, the single source of every knob."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = "params.yaml"


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """Load params.yaml as a dict; a missing or malformed file is one clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no params file; run from the project root")
    with path.open() as f:
        params = yaml.safe_load(f)
    if not isinstance(params, dict):
        raise ValueError(f"{path}: expected a mapping of parameter groups")
    return params


def data_path(path: str | Path) -> Path:
    """A params.yaml path (data outside the project, such as ../shared/data) as a stage opens it.

    Relative paths are relative to the project root, where stages run. DVC runs queued
    experiments (`dvc exp run --queue`, scripts/sweep.sh) in a copy of the project at
    .dvc/tmp/exps/<name>/; there a path that leaves the project would point into .dvc/tmp, so
    it is resolved from the real project root instead.
    """
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    cwd = Path.cwd().resolve()
    in_queued_copy = [p.name for p in cwd.parents[:3]] == ["exps", "tmp", ".dvc"]
    return cwd.parents[3] / path if in_queued_copy else path


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: the dotted keys DVC and MLflow use."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def apply_overrides(params: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `group.key=value` overrides (values parsed as YAML), like `dvc exp run -S`."""
    import copy

    params = copy.deepcopy(params)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} must look like group.key=value")
        *parents, leaf = key.split(".")
        node = params
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise KeyError(f"override {item!r}: no parameter group {part!r} in params.yaml")
            node = node[part]
        if leaf not in node:
            raise KeyError(f"override {item!r}: no parameter {key!r} in params.yaml")
        node[leaf] = yaml.safe_load(raw)
    return params
