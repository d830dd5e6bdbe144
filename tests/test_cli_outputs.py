"""Every command that writes a file (`predict`, `video`, `camera`, `export`) given a folder, or
one of its inputs, where it expects a file: the folder keeps its files, the input is not
overwritten, no `*.partial` is left; the file goes inside the folder where a folder makes sense
(`predict` → predictions.csv, `export` → model.onnx), else one `error:` line and exit 1."""

from __future__ import annotations

from pathlib import Path

import cv2
import onnx
import pandas as pd
import pytest
from typer.testing import CliRunner

from ferlab.checkpoint import save_checkpoint
from ferlab.cli import app
from ferlab.models import build_model

runner = CliRunner()
TINY = {"name": "baseline", "width": 0.25, "dropout": 0.0, "activation": "relu"}


def user_folder(path: Path) -> Path:
    """A folder holding a file of the user's, as a folder given by mistake would."""
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("mine\n")
    return path


def untouched(folder: Path, *added: str) -> None:
    """The user's file is still there, unchanged, and nothing but `added` was put beside it."""
    assert (folder / "notes.txt").read_text() == "mine\n"
    assert sorted(p.name for p in folder.iterdir()) == sorted(["notes.txt", *added])


def no_partial_files(root: Path) -> None:
    leftovers = [p for p in root.rglob("*") if "partial" in p.name or p.name.startswith(".")]
    assert leftovers == []


def one_error_line(done, *expected: str) -> None:
    assert done.exit_code == 1, done.output
    assert done.exception is None or isinstance(done.exception, SystemExit)  # no traceback
    assert done.stderr.count("error:") == 1
    for text in expected:
        assert text in done.stderr


@pytest.fixture
def face_files(real_faces, tmp_path: Path) -> Path:
    images, _ = real_faces
    folder = tmp_path / "faces"
    folder.mkdir()
    for i, image in enumerate(images[:4]):
        assert cv2.imwrite(str(folder / f"face{i}.png"), image)
    return folder


def test_predict_out_folder_gets_predictions_csv_inside(
    face_files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = user_folder(tmp_path / "results")
    done = runner.invoke(app, ["predict", str(face_files), "--no-detect", "--out", str(results)])
    assert done.exit_code == 0, done.output
    untouched(results, "predictions.csv")
    assert len(pd.read_csv(results / "predictions.csv")) == 4
    # `--out .`: the current folder.
    here = user_folder(tmp_path / "here")
    monkeypatch.chdir(here)
    done = runner.invoke(app, ["predict", str(face_files), "--no-detect", "--out", "."])
    assert done.exit_code == 0, done.output
    untouched(here, "predictions.csv")
    # A folder where predictions.csv would go: refused, kept.
    user_folder(results / "deeper/predictions.csv")
    done = runner.invoke(
        app, ["predict", str(face_files), "--no-detect", "--out", str(results / "deeper")]
    )
    one_error_line(done, "predictions.csv: is a folder", "Nothing was written or removed")
    untouched(results / "deeper/predictions.csv")
    no_partial_files(tmp_path)


def test_predict_never_overwrites_an_input_image(face_files: Path, tmp_path: Path) -> None:
    image = face_files / "face0.png"
    before = image.read_bytes()
    done = runner.invoke(app, ["predict", str(face_files), "--no-detect", "--out", str(image)])
    one_error_line(done, f"{image}: is an input of this command")
    assert image.read_bytes() == before
    no_partial_files(tmp_path)


@pytest.mark.parametrize("command", ["video", "camera"])
@pytest.mark.parametrize("option", ["--out", "--csv"])
def test_video_and_camera_refuse_a_folder_output(
    shared_data: Path, tmp_path: Path, command: str, option: str
) -> None:
    source = str(shared_data / "videos/stage_clip.mp4")
    folder = user_folder(tmp_path / "outputs")
    other = "--csv" if option == "--out" else "--out"
    other_file = tmp_path / ("timeline.csv" if other == "--csv" else "annotated.mp4")
    where = [source] if command == "video" else ["--device", source]
    done = runner.invoke(app, [command, *where, option, str(folder), other, str(other_file)])
    one_error_line(done, f"{folder}: is a folder", "Nothing was written or removed")
    untouched(folder)
    assert not other_file.exists()  # refused before anything was opened
    no_partial_files(tmp_path)


@pytest.mark.parametrize("command", ["video", "camera"])
def test_video_and_camera_never_overwrite_the_input_video(
    shared_data: Path, tmp_path: Path, command: str
) -> None:
    source = tmp_path / "clip.mp4"
    source.write_bytes((shared_data / "videos/stage_clip.mp4").read_bytes())
    before = source.read_bytes()
    where = [str(source)] if command == "video" else ["--device", str(source)]
    done = runner.invoke(app, [command, *where, "--out", str(source)])
    one_error_line(done, f"{source}: is an input of this command")
    assert source.read_bytes() == before
    no_partial_files(tmp_path)


def tiny_checkpoint(path: Path) -> Path:
    """A real (untrained) small checkpoint, for paths that do not depend on the weights."""
    spec = dict(TINY)
    model = build_model(spec.pop("name"), input_size=48, **spec)
    save_checkpoint(path, model, {"model": TINY, "input_size": 48, "variant": "original"})
    return path


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return tiny_checkpoint(tmp_path / "ckpt/model.pt")


def test_export_out_folder_gets_model_onnx_inside(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = user_folder(tmp_path / "models")
    done = runner.invoke(
        app, ["export", str(checkpoint), "--out", str(models), "--int8", "dynamic"]
    )
    assert done.exit_code == 0, done.output
    untouched(models, "model.onnx", "model.int8.onnx")
    onnx.checker.check_model(str(models / "model.onnx"))
    here = user_folder(tmp_path / "here")
    monkeypatch.chdir(here)
    done = runner.invoke(app, ["export", str(checkpoint), "--out", "."])
    assert done.exit_code == 0, done.output
    untouched(here, "model.onnx")
    no_partial_files(tmp_path)


def test_export_refuses_a_folder_in_the_way_and_its_own_checkpoint(
    checkpoint: Path, tmp_path: Path
) -> None:
    blocked = user_folder(tmp_path / "out/model.int8.onnx")
    done = runner.invoke(
        app, ["export", str(checkpoint), "--out", str(tmp_path / "out"), "--int8", "dynamic"]
    )
    one_error_line(done, "model.int8.onnx: is a folder")
    untouched(blocked)
    assert not (tmp_path / "out/model.onnx").exists()  # checked before the first file
    before = checkpoint.read_bytes()
    done = runner.invoke(app, ["export", str(checkpoint), "--out", str(checkpoint)])
    one_error_line(done, f"{checkpoint}: is an input of this command")
    assert checkpoint.read_bytes() == before
    no_partial_files(tmp_path)
