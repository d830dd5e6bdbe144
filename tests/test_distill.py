"""Distillation targets: the crowd's votes mixed with trained teachers' probabilities."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from test_training import baseline_meta, build_tiny, tiny_config

from ferlab.inference import load_models
from ferlab.training.distill import (
    OnlineTeacher,
    distillation_targets,
    mix_targets,
    teacher_mode,
    teacher_probabilities,
    teacher_settings,
)
from ferlab.training.loop import faces_to_input, fit


def test_mixing_weighs_crowd_and_teachers_and_keeps_distributions() -> None:
    votes = np.array([[0.5, 0.5, 0, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0, 0, 0]], dtype=np.float32)
    teacher = np.full((2, 8), 1 / 8, dtype=np.float32)
    mixed = mix_targets(votes, teacher, 0.25)
    np.testing.assert_allclose(mixed.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(mixed[1, 2], 0.75 + 0.25 / 8, rtol=1e-6)
    np.testing.assert_allclose(mix_targets(votes, teacher, 0.0), votes)
    np.testing.assert_allclose(mix_targets(votes, teacher, 1.0), teacher)
    labels = np.array([2, 7])  # plurality labels are taken as one-hot
    np.testing.assert_allclose(mix_targets(labels, teacher, 0.5)[0, 2], 0.5 + 0.5 / 8)
    with pytest.raises(ValueError, match=r"teacher_weight=1\.5"):
        mix_targets(votes, teacher, 1.5)
    with pytest.raises(ValueError, match="differ"):
        mix_targets(votes[:1], teacher, 0.5)


@pytest.fixture(scope="module")
def teacher(real_faces, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small net trained for two epochs on real faces, its checkpoint naming its data."""
    images, labels = real_faces
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    meta = {**baseline_meta(), "data_sha256": "arrays-a"}
    fit(build_tiny(), images, labels, images, labels, tiny_config(epochs=2), path, meta)
    return path


def test_teachers_probabilities_are_their_mean_over_face_and_mirror(real_faces, teacher) -> None:
    images, _ = real_faces

    def probabilities(checkpoints: list[Path], faces: np.ndarray) -> np.ndarray:
        model, meta = load_models(checkpoints)
        return teacher_probabilities(model, int(meta["input_size"]), faces)

    one = probabilities([teacher], images[:40])
    assert one.shape == (40, 8) and one.dtype == np.float32
    np.testing.assert_allclose(one.sum(axis=1), 1.0, rtol=1e-5)
    # A face and its mirror are the same face to a teacher that averages both.
    np.testing.assert_allclose(probabilities([teacher], images[:40, :, ::-1]), one, atol=1e-5)
    # Two copies of one teacher are that teacher.
    np.testing.assert_allclose(probabilities([teacher, teacher], images[:40]), one, atol=1e-5)


def test_distillation_targets_use_only_teachers_of_the_same_arrays(real_faces, teacher) -> None:
    images, labels = real_faces
    said: list[str] = []
    targets = distillation_targets([teacher], 0.5, labels, images, "arrays-a", said.append)
    assert targets.shape == (len(labels), 8)
    # Half of each target is the one-hot label, so the label is always its top class.
    assert (targets.argmax(axis=1) == labels).all() and (targets.max(axis=1) >= 0.5).all()
    assert "scoring" in said[0] and "teacher weight 0.5" in said[1]
    with pytest.raises(ValueError, match=rf"{teacher.name}: trained on other arrays"):
        distillation_targets([teacher], 0.5, labels, images, "arrays-b")


def test_a_missing_teacher_is_named_with_the_command_that_trains_it(real_faces, tmp_path) -> None:
    images, labels = real_faces
    missing = tmp_path / "fast.pt"
    with pytest.raises(FileNotFoundError, match=r"fast\.pt: no such teacher.*dvc repro train_fast"):
        distillation_targets([missing], 0.5, labels, images, "arrays-a")


def test_teacher_settings_take_one_path_as_a_list_and_refuse_weights_outside_0_1() -> None:
    assert teacher_settings({}) == ([], 0.0)
    assert teacher_settings({"teachers": "models/fast.pt", "teacher_weight": 0.5}) == (
        ["models/fast.pt"],
        0.5,
    )
    assert teacher_settings({"teachers": ["a.pt", "b.pt"], "teacher_weight": 1}) == (
        ["a.pt", "b.pt"],
        1.0,
    )
    for weight in (-0.1, 1.5):
        with pytest.raises(ValueError, match=rf"train\.teacher_weight={weight}"):
            teacher_settings({"teachers": ["a.pt"], "teacher_weight": weight})


def test_teacher_mode_is_offline_unless_asked_and_refuses_unknown_modes() -> None:
    assert teacher_mode({}) == "offline"
    assert teacher_mode({"teacher_mode": "online"}) == "online"
    with pytest.raises(ValueError, match=r"train\.teacher_mode='live'"):
        teacher_mode({"teacher_mode": "live"})


def test_online_teacher_mixes_the_crowd_with_the_teachers_view_of_each_batch(
    real_faces, teacher
) -> None:
    images, labels = real_faces
    online = OnlineTeacher.load([teacher], 0.25, "arrays-a", torch.device("cpu"), bf16=False)
    generator = torch.Generator().manual_seed(0)
    # An augmented batch, as the training loop builds it, and one-hot crowd targets.
    x = faces_to_input(torch.from_numpy(images[:32]), 48, generator, augment=True)
    crowd = torch.eye(8)[torch.from_numpy(labels[:32]).long()]
    rng = torch.get_rng_state()
    targets = online(x, crowd)
    # No random draw (the student's seeded streams stay as without teachers), no gradient.
    assert torch.equal(torch.get_rng_state(), rng)
    assert not targets.requires_grad
    model, _ = load_models([teacher])
    with torch.no_grad():
        seen = model(x).softmax(dim=1)
    torch.testing.assert_close(targets, 0.75 * crowd + 0.25 * seen)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(32))
    # The teachers answer for the augmented view, not for the clean face.
    clean = faces_to_input(torch.from_numpy(images[:32]), 48)
    assert not torch.allclose(online(clean, crowd), targets)
    # Two teachers: the mean of their probabilities (two copies of one are that one).
    pair = OnlineTeacher.load([teacher, teacher], 0.25, "arrays-a", torch.device("cpu"), False)
    torch.testing.assert_close(pair(x, crowd), targets)


def test_online_teachers_score_in_eval_mode_and_at_their_own_input_size(
    real_faces, teacher
) -> None:
    images, labels = real_faces
    model, _ = load_models([teacher])
    online = OnlineTeacher(model.train(), 1.0, 48)  # handed over in training mode
    assert not online.model.training
    x = faces_to_input(torch.from_numpy(images[:16]), 48)
    crowd = torch.eye(8)[torch.from_numpy(labels[:16]).long()]
    torch.testing.assert_close(online(x, crowd), online(x, crowd))  # BatchNorm kept its stats
    # A 112-px student's batch is resized to the teachers' 48 px before they score it.
    big = torch.nn.functional.interpolate(x, size=(112, 112), mode="bilinear")
    resized = torch.nn.functional.interpolate(big, size=(48, 48), mode="bilinear", antialias=True)
    torch.testing.assert_close(online(big, crowd), online(resized, crowd))


def test_online_teachers_are_refused_for_other_arrays(teacher) -> None:
    with pytest.raises(ValueError, match=rf"{teacher.name}: trained on other arrays"):
        OnlineTeacher.load([teacher], 0.5, "arrays-b", torch.device("cpu"), bf16=False)


def test_online_teachers_at_weight_0_leave_the_run_as_without_them(
    real_faces, teacher, tmp_path: Path
) -> None:
    """The teachers draw no random numbers: the student's batches, augmentation and dropout are
    those of a run without them, so only their weight changes what it learns."""
    from ferlab.models import build_model

    images, labels = real_faces
    config = tiny_config(epochs=1)
    spec = {**baseline_meta()["model"], "dropout": 0.3}  # dropout draws from the global RNG
    meta = {**baseline_meta(), "model": spec, "data_sha256": "arrays-a"}

    def trained(name: str, weight: float | None) -> dict[str, torch.Tensor]:
        online = (
            None
            if weight is None
            else OnlineTeacher.load([teacher], weight, "arrays-a", torch.device("cpu"), False)
        )
        path = tmp_path / f"{name}.pt"
        torch.manual_seed(0)  # the same initial weights
        options = {k: v for k, v in spec.items() if k != "name"}
        student = build_model("baseline", input_size=48, **options)
        val = (images[:64], labels[:64])
        fit(student, images, labels, *val, config, path, meta, log=print, target_fn=online)
        model, _ = load_models(path)
        return model.state_dict()

    alone, at_zero, at_half = trained("alone", None), trained("zero", 0.0), trained("half", 0.5)
    for key, value in alone.items():
        torch.testing.assert_close(at_zero[key], value, rtol=0, atol=0)
    assert any(not torch.equal(at_half[k], v) for k, v in alone.items() if v.is_floating_point())


def test_a_resumed_run_starts_afresh_when_the_online_teachers_changed(
    real_faces, teacher, tmp_path: Path
) -> None:
    """The teachers make every step's targets, so a state saved with another teacher weight
    is not resumed (the crowd's targets alone would not tell the two runs apart)."""
    images, labels = real_faces
    meta = {**baseline_meta(), "data_sha256": "arrays-a"}
    resume = tmp_path / "m.resume.pt"

    class Interrupted(Exception):
        pass

    def stop_after_epoch_1(row: dict[str, float]) -> None:
        if row["epoch"] == 2:
            raise Interrupted  # after epoch 1's state was saved

    def run(weight: float, **kwargs) -> None:
        online = OnlineTeacher.load([teacher], weight, "arrays-a", torch.device("cpu"), False)
        fit(build_tiny(), images, labels, images[:16], labels[:16], tiny_config(epochs=2),
            tmp_path / "m.pt", meta, resume_path=resume, target_fn=online, **kwargs)  # fmt: skip

    with pytest.raises(Interrupted):
        run(0.5, on_epoch=stop_after_epoch_1)
    assert resume.is_file()
    said: list[str] = []
    run(0.3, log=said.append)
    assert f"{resume}: saved state is for other settings; starting afresh" in said


SHARDED_SCRIPT = textwrap.dedent(
    """
    import numpy as np, torch.distributed as dist
    from ferlab.inference import load_models
    from ferlab.training.distill import teacher_probabilities
    from ferlab.training.run import init_distributed
    assert init_distributed("cpu")
    model, meta = load_models({teacher!r})
    probs = teacher_probabilities(model, int(meta["input_size"]), np.load({faces!r}))
    np.save({out!r}.format(dist.get_rank()), probs)
    dist.destroy_process_group()
    """
)


def test_two_ranks_each_score_a_slice_and_both_get_every_face_in_order(
    real_faces, teacher, tmp_path: Path
) -> None:
    """41 faces over 2 ranks: unequal slices, padded for the gather and trimmed after."""
    images, _ = real_faces
    faces = tmp_path / "faces.npy"
    np.save(faces, images[:41])
    script = tmp_path / "sharded.py"
    out = str(tmp_path / "rank{}.npy")
    script.write_text(SHARDED_SCRIPT.format(teacher=str(teacher), faces=str(faces), out=out))
    torchrun = Path(sys.executable).parent / "torchrun"
    done = subprocess.run(
        [str(torchrun), "--nproc_per_node=2", "--master_port=29534", str(script)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    model, meta = load_models(teacher)
    alone = teacher_probabilities(model, int(meta["input_size"]), images[:41])
    for rank in (0, 1):
        np.testing.assert_allclose(np.load(out.format(rank)), alone, atol=1e-5)
