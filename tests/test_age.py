"""Kids/adults: UTKFace names and extraction, FER-like crops, training, tags and overrides,
and the per-group study on real faces."""

from __future__ import annotations

import stat
import tempfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from ferlab.age.data import (
    AGE_CLASSES,
    UTK_NAME,
    age_groups,
    fer_like_crop,
    load_faces,
    parse_age,
    stratified_split,
)
from ferlab.age.model import read_override, tag_faces, train_age_model
from ferlab.checkpoint import save_checkpoint
from ferlab.classes import CLASSES
from ferlab.data import DataError
from ferlab.evaluation.age_study import counts_table, group_study, groups_for, study_markdown
from ferlab.inference import Classifier

TINY = {"name": "baseline", "width": 0.25, "dropout": 0.0, "activation": "relu"}
# Both malformed names of the real archive lack the race field.
MALFORMED_REAL = "utkface/61_1_20170109142408075.jpg.chip.jpg"


@pytest.mark.parametrize(
    ("name", "age"),
    [
        ("utkface/1_0_0_20161219140623097.jpg.chip.jpg", 1),
        ("12_0_0_20170103200900511.jpg.chip.jpg", 12),
        ("some/dir/100_1_0_20170110183726390.jpg.chip.jpg", 100),
    ],
)
def test_parse_age_reads_the_first_field(name: str, age: int) -> None:
    assert parse_age(name) == age


@pytest.mark.parametrize(
    "name",
    [
        MALFORMED_REAL,  # a field missing: which one is ambiguous, so it is refused
        "utkface/x_0_0_20170103200900511.jpg.chip.jpg",
        "utkface/25_0_2_20170116174525125.jpg",  # not a chip
        "utkface/25_7_2_20170116174525125.jpg.chip.jpg",  # gender outside 0/1
        "utkface/250_0_2_20170116174525125.jpg.chip.jpg",  # implausible age
    ],
)
def test_parse_age_refuses_malformed_names_naming_the_file(name: str) -> None:
    with pytest.raises(ValueError, match=Path(name).name.split("_")[0]):
        parse_age(name)


def test_age_groups_put_the_boundary_age_among_kids() -> None:
    assert age_groups(np.array([0, 12, 13, 17, 18, 80]), 12).tolist() == [0, 0, 1, 1, 1, 1]


def test_age_loader_refuses_a_traversal_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The age loader extracts through data/archive.py's safe_extract: same checks as FER2013+.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # its temporaries, seen alone
    (tmp_path / "tmp").mkdir()
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("utkface/1_0_0_20161219140623097.jpg.chip.jpg", b"fine")
        zf.writestr("../escaped.jpg", b"bad")
    with pytest.raises(DataError, match=r"'\.\./escaped\.jpg' leaves the extraction folder"):
        load_faces(archive, size=48, log=lambda _m: None)
    assert not (tmp_path / "escaped.jpg").exists()
    assert not list((tmp_path / "tmp").iterdir())  # the temporary folder is gone


def test_age_loader_refuses_archives_over_the_size_limit(tmp_path: Path) -> None:
    archive = tmp_path / "big.zip"
    noise = np.random.default_rng(0).bytes(2 * 2**20)  # incompressible: the size limit acts
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("utkface/1_0_0_20161219140623097.jpg.chip.jpg", noise)
    with pytest.raises(DataError, match=r"over data\.max_extract_mb = 1 MiB"):
        load_faces(archive, size=48, max_extract_mb=1, log=lambda _m: None)


def test_age_loader_refuses_special_files_and_absurd_ratios(tmp_path: Path) -> None:
    # Checks the age loader's own extraction used to lack.
    fifo = zipfile.ZipInfo("utkface/pipe")
    fifo.create_system = 3
    fifo.external_attr = (stat.S_IFIFO | 0o644) << 16
    special = tmp_path / "fifo.zip"
    with zipfile.ZipFile(special, "w") as zf:
        zf.writestr("utkface/1_0_0_20161219140623097.jpg.chip.jpg", b"fine")
        zf.writestr(fifo, b"")
    with pytest.raises(DataError, match="special file"):
        load_faces(special, size=48, log=lambda _m: None)
    ratio = tmp_path / "ratio.zip"
    with zipfile.ZipFile(ratio, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("utkface/1_0_0_20161219140623097.jpg.chip.jpg", bytes(8 << 20))
    with pytest.raises(DataError, match="expands"):
        load_faces(ratio, size=48, log=lambda _m: None)


def test_fer_like_crop_geometry() -> None:
    rng = np.random.default_rng(0)
    chip = rng.integers(0, 256, (200, 200), dtype=np.uint8)
    # scale 1, centred: the whole chip, area-resized.
    plain = cv2.resize(chip, (48, 48), interpolation=cv2.INTER_AREA)
    assert np.array_equal(fer_like_crop(chip, 48, 1.0, 0.5), plain)
    # A box larger than the chip repeats the border: a bright top row fills the crop's top.
    chip[0, :] = 255
    chip[1:, :] = 0
    crop = fer_like_crop(chip, 48, 1.1, 0.425)
    assert crop.shape == (48, 48) and crop.dtype == np.uint8
    assert crop[0].min() == 255 and crop[-1].max() == 0


def utk_subset(shared_data: Path, target: Path, per_group: int) -> Path:
    """A small zip of real UTKFace members: kids, adults and the real malformed name."""
    with zipfile.ZipFile(shared_data / "utkface_part1.zip") as src:
        names = sorted(n for n in src.namelist() if UTK_NAME.match(Path(n).name))
        kids = [n for n in names if parse_age(n) <= 12]
        adults = [n for n in names if parse_age(n) >= 18]
        chosen = kids[:per_group] + adults[:per_group] + [MALFORMED_REAL]
        with zipfile.ZipFile(target, "w") as out:
            for name in chosen:
                out.writestr(name, src.read(name))
    return target


def test_load_faces_crops_real_chips_and_skips_malformed_names(
    shared_data: Path, tmp_path: Path
) -> None:
    archive = utk_subset(shared_data, tmp_path / "utk.zip", per_group=5)
    faces = load_faces(archive, size=48, log=lambda _m: None)
    assert faces.images.shape == (10, 48, 48) and faces.images.dtype == np.uint8
    assert len(faces.skipped) == 1 and "61_1_20170109142408075" in faces.skipped[0]
    assert faces.ages.tolist() == [parse_age(n) for n in faces.names]
    assert (age_groups(faces.ages, 12) == 0).sum() == 5
    assert faces.images.std() > 20  # real faces, not blank crops


def test_load_faces_missing_source_says_which_param(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"age\.source"):
        load_faces(tmp_path / "nope.zip", size=48)


def test_stratified_split_holds_out_each_group() -> None:
    labels = np.array([0] * 30 + [1] * 70)
    train, val = stratified_split(labels, 0.2, seed=1)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 100
    assert (labels[val] == 0).sum() == 6 and (labels[val] == 1).sum() == 14
    assert np.array_equal(val, stratified_split(labels, 0.2, seed=1)[1])


def tiny_age_params(epochs: int, batch_size: int) -> dict:
    """The age group's params for a tiny, fast age model."""
    return {
        "kids_max_age": 12,
        "size": 48,
        "val_fraction": 0.25,
        "model": "baseline",
        "hparams": {k: v for k, v in TINY.items() if k != "name"},
        "crop_scale": 1.1,
        "crop_center_y": 0.425,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": 0.003,
    }


def test_train_age_model_writes_a_kid_adult_checkpoint(shared_data: Path, tmp_path: Path) -> None:
    faces = load_faces(utk_subset(shared_data, tmp_path / "utk.zip", 24), 48, log=lambda _m: None)
    age = tiny_age_params(epochs=2, batch_size=16)
    train = {"scheduler": "none", "augment": False, "bf16": False, "threads": 1}
    ckpt = tmp_path / "age.pt"
    report = train_age_model(faces, age, train, seed=3, checkpoint_path=ckpt, log=lambda _m: None)
    assert report["data"]["skipped_malformed_names"] == 1
    assert report["data"]["train"] + report["data"]["val"] == 48
    assert report["val"]["n"] == 12 and 0 <= report["val"]["balanced_accuracy"] <= 1
    assert sum(report["val"]["support"].values()) == 12
    classifier = Classifier.from_checkpoint(ckpt, expected_classes=AGE_CLASSES)
    assert classifier.classes == ["kid", "adult"]
    assert classifier.predict_proba(faces.images[:3]).shape == (3, 2)


@pytest.fixture
def age_classifier(tmp_path: Path) -> Classifier:
    """An untrained kid/adult network: the tag tests check plumbing, not age accuracy."""
    import torch

    from ferlab.models import build_model

    torch.manual_seed(0)
    spec = dict(TINY)
    model = build_model(spec.pop("name"), input_size=48, num_classes=2, **spec)
    meta = {"model": TINY, "input_size": 48, "classes": list(AGE_CLASSES)}
    save_checkpoint(tmp_path / "age.pt", model, meta)
    return Classifier.from_checkpoint(tmp_path / "age.pt", expected_classes=AGE_CLASSES)


def test_hand_labels_override_the_model(real_faces, age_classifier, tmp_path: Path) -> None:
    images, _ = real_faces
    paths = [f"data/raw/test/x/fer{i:07d}.png" for i in range(len(images))]
    model_only = tag_faces(age_classifier, images, paths)
    assert list(model_only.columns) == ["path", "age_group", "confidence", "source"]
    assert set(model_only["source"]) == {"model"} and model_only["confidence"].between(0.5, 1).all()
    # Flip the model's answer on two faces by hand.
    flip = {"kid": "adult", "adult": "kid"}
    chosen = model_only.iloc[[3, 40]]
    csv = tmp_path / "hand.csv"
    pd.DataFrame(
        {"path": chosen["path"], "age_group": [flip[g].upper() for g in chosen["age_group"]]}
    ).to_csv(csv, index=False)
    tags = tag_faces(age_classifier, images, paths, read_override(csv))
    for i in (3, 40):
        assert tags.loc[i, "age_group"] == flip[model_only.loc[i, "age_group"]]
        assert tags.loc[i, "source"] == "manual" and tags.loc[i, "confidence"] == 1.0
    others = tags.drop(index=[3, 40])
    assert others.equals(model_only.drop(index=[3, 40]))


def test_override_errors_name_the_problem(real_faces, age_classifier, tmp_path: Path) -> None:
    images, _ = real_faces
    paths = [f"p{i}.png" for i in range(len(images))]
    bad_group = tmp_path / "bad.csv"
    bad_group.write_text("path,age_group\np1.png,teen\n")
    with pytest.raises(ValueError, match="teen"):
        read_override(bad_group)
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("path,age_group\nnot_in_test.png,kid\n")
    with pytest.raises(ValueError, match=r"not_in_test\.png"):
        tag_faces(age_classifier, images, paths, read_override(unknown))
    with pytest.raises(FileNotFoundError, match="labels_override"):
        read_override(tmp_path / "missing.csv")


def test_group_study_counts_add_up_and_matrices_stay_8x8(real_faces) -> None:
    _, labels = real_faces
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(8), size=len(labels))
    # Kids get no contempt or disgust faces at all.
    kids = ~np.isin(labels, [1, 2]) & (np.arange(len(labels)) % 3 == 0)
    groups = np.where(kids, "kid", "adult")
    paths = np.array([f"p{i}.png" for i in range(len(labels))])
    tags = pd.DataFrame({"path": paths, "age_group": groups})
    study = group_study(labels, probs, groups_for(paths, tags))
    kid, adult = study["groups"]["kid"], study["groups"]["adult"]
    assert kid["n"] + adult["n"] == len(labels) == study["n"]
    for entry in (kid, adult):
        assert np.array(entry["confusion"]).shape == (8, 8)
    assert np.array(kid["confusion"])[[1, 2]].sum() == 0
    assert kid["per_class_recall"]["contempt"] is None
    total = np.array(kid["confusion"]) + np.array(adult["confusion"])
    assert total.sum(axis=1).tolist() == np.bincount(labels, minlength=8).tolist()
    table = counts_table(study)
    assert list(table.index) == ["Kids", "Adults"]
    assert list(table.columns) == ["Total", *CLASSES]
    assert table["Total"].sum() == len(labels)
    assert (table[list(CLASSES)].sum(axis=1) == table["Total"]).all()
    text = study_markdown(study)
    assert "| Kids |" in text and "620" in text and "2,947" in text
    assert "centre crops" not in text  # no views recorded, none claimed
    study["views"] = {"crops": [0.98, 0.92], "flip": True}
    assert "centre crops 0.98, 0.92 (fractions of the side) and their mirror" in study_markdown(
        study
    )
    study["views"] = {"crops": [1.0], "flip": False}
    assert "evaluate stage does: the whole face alone." in study_markdown(study)


def test_group_study_with_an_empty_group_still_renders(real_faces) -> None:
    _, labels = real_faces
    probs = np.eye(8)[labels]
    study = group_study(labels, probs, np.array(["adult"] * len(labels)))
    assert study["groups"]["kid"]["n"] == 0 and study["groups"]["kid"]["accuracy"] is None
    assert np.array(study["groups"]["kid"]["confusion"]).shape == (8, 8)
    assert study["groups"]["adult"]["accuracy"] == 1.0
    assert "| Kids | 0 | –" in study_markdown(study)


def test_untagged_test_images_are_an_error() -> None:
    tags = pd.DataFrame({"path": ["a.png"], "age_group": ["kid"]})
    with pytest.raises(ValueError, match=r"b\.png.*tag_age"):
        groups_for(["a.png", "b.png"], tags)


def test_train_age_model_repeats_whatever_ran_before(shared_data: Path, tmp_path: Path) -> None:
    """Same faces, params and seed: bit-identical weights, even when the process's random state
    differs before the call (the stage's initial weights once came from it)."""
    import torch

    faces = load_faces(utk_subset(shared_data, tmp_path / "utk.zip", 16), 48, log=lambda _m: None)
    age = tiny_age_params(epochs=1, batch_size=8)
    train = {"scheduler": "none", "augment": "torch", "bf16": False, "threads": 1}
    weights = []
    for run, disturb in enumerate((1, 2)):
        torch.manual_seed(disturb)
        ckpt = tmp_path / f"age{run}.pt"
        train_age_model(faces, age, train, seed=3, checkpoint_path=ckpt, log=lambda _m: None)
        weights.append(torch.load(ckpt, weights_only=True)["state_dict"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
