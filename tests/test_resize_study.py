"""Test-time resize study: the round trip, the table's shape, and agreement with plain scoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ferlab.evaluation.metrics import classification_metrics
from ferlab.evaluation.resize_study import (
    parse_method,
    plot_study,
    round_trip,
    run_study,
    stratified_subset,
    table_csv,
    table_markdown,
)
from ferlab.inference import Classifier

SIZES = [64, 48, 28, 14]
METHODS = ["cubic/cubic", "linear/linear", "lanczos4/lanczos4", "cubic/linear"]
TINY = {"name": "baseline", "width": 0.25, "dropout": 0.0, "activation": "relu"}


@pytest.fixture(scope="module")
def tiny_classifier(real_faces, tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    """A small baseline trained briefly on real FER2013+ faces."""
    from ferlab.models import build_model
    from ferlab.training.loop import TrainConfig, fit

    images, labels = real_faces
    spec = dict(TINY)
    model = build_model(spec.pop("name"), input_size=48, **spec)
    config = TrainConfig(
        epochs=10, batch_size=16, lr=3e-3, scheduler="none", augment=False, bf16=False, threads=1
    )
    ckpt = tmp_path_factory.mktemp("resize") / "model.pt"
    fit(
        model,
        images,
        labels,
        images,
        labels,
        config,
        ckpt,
        {"model": TINY, "input_size": 48},
        log=lambda _m: None,
    )
    return Classifier.from_checkpoint(ckpt)


def test_parse_method_accepts_pairs_and_names_bad_ones() -> None:
    assert parse_method("cubic/linear") == ("cubic", "linear")
    for bad in ("cubic", "cubic/bilinear", "cubic/linear/area"):
        with pytest.raises(ValueError, match=bad.replace("/", ".")):
            parse_method(bad)


def test_round_trip_changes_detail_but_not_shape(real_faces) -> None:
    images, _ = real_faces
    same = round_trip(images, 48, "cubic/cubic", 48)
    assert np.array_equal(same, images)  # no resize at the native and input size
    small = round_trip(images, 14, "linear/linear", 48)
    assert small.shape == images.shape and small.dtype == np.uint8
    assert np.abs(small.astype(int) - images).mean() > 3  # 14 px loses real detail
    assert round_trip(images, 14, "cubic/cubic", 112).shape == (len(images), 112, 112)


def test_study_table_shape_and_identity_matches_direct_scoring(
    real_faces, tiny_classifier: Classifier, tmp_path: Path
) -> None:
    images, labels = real_faces
    result = run_study(
        tiny_classifier.predict_proba, images, labels, SIZES, METHODS, 48, log=lambda _m: None
    )
    direct = classification_metrics(labels, tiny_classifier.predict_proba(images))
    assert result["baseline"]["accuracy"] == direct["accuracy"]
    for method in METHODS:
        assert list(result["accuracy"][method]) == [str(s) for s in SIZES]
        # The identity case is exactly what the evaluate stage would report.
        assert result["accuracy"][method]["48"] == direct["accuracy"]
        assert result["balanced_accuracy"][method]["48"] == direct["balanced_accuracy"]
    assert direct["accuracy"] > 1 / 8 + 0.1  # a trained model, well above chance
    # 14 px really changes the predictions (the study measures something).
    blurred = tiny_classifier.predict_proba(round_trip(images, 14, "cubic/cubic", 48))
    assert (blurred.argmax(1) != tiny_classifier.predict_proba(images).argmax(1)).any()

    rows = table_csv(result).strip().splitlines()
    assert rows[0] == "method,64,48,28,14"
    assert [r.split(",")[0] for r in rows[1:]] == METHODS
    assert all(len(r.split(",")) == 1 + len(SIZES) for r in rows)

    text = table_markdown(result)
    assert text.count("| cubic/linear |") == 2  # accuracy and balanced accuracy tables
    assert "64×64" in text and "say nothing about how the model would do on higher" in text
    plot_study(result, tmp_path / "study.png")
    assert (tmp_path / "study.png").read_bytes()[:4] == b"\x89PNG"


def test_study_refuses_mismatched_inputs(real_faces, tiny_classifier: Classifier) -> None:
    images, labels = real_faces
    with pytest.raises(ValueError, match="labels"):
        run_study(tiny_classifier.predict_proba, images, labels[:-1], [48], METHODS, 48)
    with pytest.raises(ValueError, match="nearest"):
        run_study(tiny_classifier.predict_proba, images, labels, [48], ["cubic/fancy"], 48)


def test_stratified_subset_keeps_class_shares_and_is_seeded() -> None:
    labels = np.repeat(np.arange(8), [646, 54, 52, 168, 1827, 2587, 861, 905])
    keep = stratified_subset(labels, 1000, seed=42)
    assert abs(len(keep) - 1000) <= 8 and len(np.unique(keep)) == len(keep)
    counts = np.bincount(labels[keep], minlength=8)
    assert counts.min() >= 7  # even contempt and disgust stay represented
    assert abs(counts[5] - 2587 * 1000 / 7100) <= 1
    assert np.array_equal(keep, stratified_subset(labels, 1000, seed=42))
    assert not np.array_equal(keep, stratified_subset(labels, 1000, seed=7))
    assert len(stratified_subset(labels, 0, seed=42)) == len(labels)
