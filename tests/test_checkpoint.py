"""Checkpoints load without unpickling code, and refuse what is not a ferlab checkpoint."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch

from ferlab.checkpoint import load_model, read_checkpoint, save_checkpoint
from ferlab.classes import CLASSES
from ferlab.models import build_model

META = {
    "model": {"name": "baseline", "width": 0.25, "activation": "relu", "dropout": 0.0},
    "input_size": 48,
    "variant": "original",
}


class Sneaky(collections.OrderedDict):
    """Any class of ours is arbitrary pickled code to weights_only loading."""


def tiny_model() -> torch.nn.Module:
    spec = dict(META["model"])
    return build_model(spec.pop("name"), input_size=48, **spec)


def test_round_trip_keeps_weights_and_metadata(tmp_path: Path) -> None:
    model = tiny_model()
    save_checkpoint(tmp_path / "m.pt", model, META)
    again, meta = load_model(tmp_path / "m.pt")
    assert meta["classes"] == list(CLASSES) and meta["variant"] == "original"
    assert meta["normalization"] == {"mean": 0.5, "std": 0.5}
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key])
    assert not list(tmp_path.glob(".m.pt*"))  # no temporary left beside it


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": Sneaky(), "model": {"name": "baseline"}}, path)
    with pytest.raises(ValueError, match="weights_only"):
        read_checkpoint(path)


def test_garbage_and_foreign_files_are_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a ferlab checkpoint"):
        read_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match="no state_dict"):
        read_checkpoint(foreign)
    with pytest.raises(FileNotFoundError, match="dvc repro train"):
        read_checkpoint(tmp_path / "missing.pt")


def test_other_class_lists_are_refused_unless_expected(tmp_path: Path) -> None:
    spec = dict(META["model"])
    model = build_model(spec.pop("name"), input_size=48, num_classes=2, **spec)
    save_checkpoint(tmp_path / "age.pt", model, {**META, "classes": ["kid", "adult"]})
    with pytest.raises(ValueError, match="class list"):
        load_model(tmp_path / "age.pt")
    _, meta = load_model(tmp_path / "age.pt", expected_classes=("kid", "adult"))
    assert meta["classes"] == ["kid", "adult"]
