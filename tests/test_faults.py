"""Full disk and permission faults: one clear message naming the file and the fix, nothing
half-written left behind.

The faults are real: a stage runs in a user + mount namespace (`unshare -Urm`) where its
output folder is a tiny tmpfs that is full or mounted read-only, and an output folder is made
unwritable with `chmod` (or, for root, whom `chmod` does not stop, the immutable attribute).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_splits import FER_LIKE, manifest

from ferlab.data.manifest import write_manifest
from ferlab.io import OutputError, atomic_path, save_npz, write_json

ROOT = Path(__file__).resolve().parents[1]

# Mount a tmpfs on $1 (options $2), optionally fill it ($3 = fill), run the rest of the
# arguments, then list what the command left in $1: the mount is gone once the namespace ends.
IN_SMALL_MOUNT = r"""
set -u
mount -t tmpfs -o "$2" tmpfs "$1" || exit 97
if [ "$3" = fill ]; then dd if=/dev/zero of="$1/filler" bs=1k 2>/dev/null; fi
dir=$1; shift 3
"$@"; rc=$?
echo "LEFT:$(ls -A "$dir" | tr '\n' ' ')"
exit $rc
"""


def namespaces_work() -> bool:
    try:
        done = subprocess.run(
            ["unshare", "-Urm", "true"], capture_output=True, timeout=30, check=False
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


needs_namespaces = pytest.mark.skipif(
    not namespaces_work(),
    reason="unprivileged user namespaces are off here (`unshare -Urm` fails), so a small "
    "tmpfs cannot be mounted to fill up or make read-only",
)


def split_project(tmp_path: Path) -> Path:
    """A project folder that the real split stage can run in: params.yaml and a manifest."""
    project = tmp_path / "project"
    project.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    write_manifest(manifest(FER_LIKE), project / "data/manifest.csv")
    (project / "reports").mkdir()
    return project


def run_split_in_mount(project: Path, options: str, fill: bool) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
        "PYTHONPATH": str(ROOT / "src"),
    }
    command = [
        "unshare", "-Urm", "sh", "-c", IN_SMALL_MOUNT, "sh",
        str(project / "reports"), options, "fill" if fill else "-",
        sys.executable, str(ROOT / "stages/split.py"),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
    assert done.returncode != 97, f"could not mount a tmpfs: {done.stderr}"
    return done


def one_line_failure(done: subprocess.CompletedProcess, stage: str) -> str:
    """The stage's `<stage> failed: ...` line, after checking exit 1 and no traceback."""
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    return next(x for x in done.stderr.splitlines() if x.startswith(f"{stage} failed:"))


def left_in_mount(done: subprocess.CompletedProcess) -> list[str]:
    line = next(x for x in done.stdout.splitlines() if x.startswith("LEFT:"))
    return line.removeprefix("LEFT:").split()


@needs_namespaces
def test_full_disk_stops_the_stage_with_one_clear_line_and_no_partial_file(
    tmp_path: Path,
) -> None:
    project = split_project(tmp_path)
    done = run_split_in_mount(project, "size=64k", fill=True)
    message = one_line_failure(done, "split")
    assert "reports/split_counts.json: cannot write, no space left" in message
    assert "free some disk space" in message
    # Only the filler: no split_counts.json and no temporary folder beside it.
    assert left_in_mount(done) == ["filler"]


@needs_namespaces
def test_read_only_output_folder_stops_the_stage_with_one_clear_line(tmp_path: Path) -> None:
    project = split_project(tmp_path)
    done = run_split_in_mount(project, "ro,size=64k", fill=False)
    message = one_line_failure(done, "split")
    assert "reports/split_counts.json: no permission (Read-only file system)" in message
    assert "remounted read-write" in message
    assert left_in_mount(done) == []


@needs_namespaces
def test_full_disk_while_writing_arrays_leaves_no_temporary(tmp_path: Path) -> None:
    """The error comes mid-write (np.savez through a file object, no file name given)."""
    out = tmp_path / "out"
    out.mkdir()
    script = (
        "import numpy as np\n"
        "from ferlab.io import OutputError, save_npz\n"
        "try:\n"
        f"    save_npz({str(out / 'train.npz')!r}, images=np.zeros((64, 48, 48), np.uint8))\n"
        "except OutputError as exc:\n"
        "    print('ERROR:', exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [
        "unshare", "-Urm", "sh", "-c", IN_SMALL_MOUNT, "sh",
        str(out), "size=32k", "-", sys.executable, "-c", script,
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"ERROR: {out / 'train.npz'}: cannot write, no space left" in done.stdout
    assert left_in_mount(done) == []


@pytest.fixture
def unwritable_folder(tmp_path: Path):
    """A folder this user cannot create files in: chmod for users, the immutable flag for root."""
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: cannot make a folder unwritable for root")
    locked = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
    if locked.returncode != 0:
        pytest.skip(f"running as root and `chattr +i` is refused here: {locked.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_unwritable_folder_is_one_clear_error_naming_the_file(unwritable_folder: Path) -> None:
    target = unwritable_folder / "metrics.json"
    with pytest.raises(OutputError) as caught:
        write_json(target, {"accuracy": 0.5})
    message = str(caught.value)
    assert message.startswith(f"{target}: no permission (")
    assert f"give this user write access to {unwritable_folder}" in message
    assert list(unwritable_folder.iterdir()) == []


def test_unwritable_subfolder_to_create_is_named(unwritable_folder: Path) -> None:
    target = unwritable_folder / "figures" / "curves.npz"
    with pytest.raises(OutputError, match="no permission") as caught:
        save_npz(target, x=__import__("numpy").zeros(3))
    assert str(caught.value).startswith(f"{target.parent}: no permission")
    assert list(unwritable_folder.iterdir()) == []


def test_other_errors_in_the_body_pass_through_and_leave_nothing(tmp_path: Path) -> None:
    """A missing input read inside the block is not a write fault: it surfaces unchanged."""
    target = tmp_path / "out.csv"
    with pytest.raises(FileNotFoundError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        (tmp_path / "missing-input.csv").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_validate_before_download_names_the_stage_to_run(tmp_path: Path) -> None:
    from ferlab.data import DataError
    from ferlab.data.manifest import build_manifest

    with pytest.raises(DataError, match=r"data/raw: no such folder; run the download stage first"):
        build_manifest(tmp_path / "data/raw", base=tmp_path)


def test_unreadable_expectation_suite_is_named(tmp_path: Path) -> None:
    from ferlab.data import DataError
    from ferlab.data.validation import load_suites

    suite = tmp_path / "images.json"
    for text in ("{not json", '{"name": "images", "expectations": []}'):
        suite.write_text(text)
        with pytest.raises(DataError, match="not a valid expectation suite") as caught:
            load_suites(tmp_path)
        assert str(caught.value).startswith(f"{suite}: ")


def test_a_split_that_would_be_empty_is_refused_and_nothing_written(tmp_path: Path) -> None:
    from ferlab.data import DataError
    from ferlab.data.splits import run_split

    write_manifest(manifest(FER_LIKE), tmp_path / "manifest.csv")
    params = {"val_fraction": 0.0, "max_per_class": 0, "by_subject_fractions": None}
    with pytest.raises(DataError, match=r"the val split would be empty; check split\.val_fraction"):
        run_split(params, 42, tmp_path / "manifest.csv", tmp_path / "split.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.csv"]


def run_ferlab(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """The real command in a subprocess: what a user sees, traceback or not."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}",
    }
    return subprocess.run(
        [sys.executable, "-m", "ferlab.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    return errors[0]


def test_evaluate_on_a_missing_folder_is_one_line(tmp_path: Path) -> None:
    line = one_error_line(run_ferlab(tmp_path, "evaluate", "no_such_faces"))
    assert line.startswith("error: ") and "no_such_faces" in line
    assert not (tmp_path / "ferlab-eval").exists()


def test_evaluate_with_a_missing_model_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "faces" / "happy").mkdir(parents=True)
    line = one_error_line(
        run_ferlab(tmp_path, "evaluate", "faces", "--model", "models/model.pt", "--no-detect")
    )
    assert line.startswith("error: ") and "models/model.pt" in line
    assert not (tmp_path / "ferlab-eval").exists()


def test_train_run_without_arrays_stops_before_training(tmp_path: Path) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["variant"] = "retinaface"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    line = one_error_line(run_ferlab(tmp_path, "train-run", "quick", "-S", "train.epochs=1"))
    assert line.startswith("error: data/arrays/retinaface_train.npz: no cached arrays")
    assert "dvc repro preprocess" in line
    # Nothing started: no run folders, no MLflow run.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_train_run_outside_the_project_names_params_yaml(tmp_path: Path) -> None:
    line = one_error_line(run_ferlab(tmp_path, "train-run", "quick"))
    assert line == "error: params.yaml: no params file; run from the project root"
