"""`ferlab train-run`: one variation trained outside the DAG as the train stages train it (two
torchrun processes), scored on the evaluate stage's protocols, exported and timed; and
scripts/runs_table.py, which lists such runs side by side, and scripts/ensemble_runs.py, which
scores their averaged probabilities."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from test_evaluate import _scratch_project, trained  # noqa: F401  (module fixture)
from test_faults import one_error_line, run_ferlab

from ferlab.inference import OnnxClassifier, TorchClassifier, Views

ROOT = Path(__file__).resolve().parents[1]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_train_run_trains_scores_and_times_a_live_model_variation(
    fer_zip,
    trained,  # noqa: F811
    tmp_path: Path,
) -> None:
    project, facts = _scratch_project(fer_zip, trained, tmp_path)
    # The committed live model has crops of its own: a --fast run is scored with them too.
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["evaluate"]["tta_crops_by_model"] = {"fast": [1.0, 0.92]}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    pipeline_models = {p: md5(p) for p in (project / "models").glob("*.pt")}
    args = ("train-run", "narrow", "--fast", "-S", "fast.train.epochs=2")
    done = run_ferlab(project, *args, "-S", "fast.options.width=0.25")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "narrow: FER+ reference 0." in done.stdout and "ms a face" in done.stdout

    run_dir, out = project / "models/runs/narrow", project / "reports/runs/narrow"
    run = json.loads((out / "run.json").read_text())
    assert run["job"] == "train_fast" and run["model"] == "baseline"
    assert run["options"]["width"] == 0.25 and run["input_size"] == 48
    assert run["overrides"] == ["fast.train.epochs=2", "fast.options.width=0.25"]
    assert run["ms_per_face_1_thread"] > 0
    assert run["views"] == {"crops": [1.0, 0.92], "flip": True}
    assert run["onnx_mb"] == round((run_dir / "model.onnx").stat().st_size / 1e6, 3)
    assert json.loads((out / "train.json").read_text())["epochs_run"] == 2

    # Scored on every protocol the evaluate stage reports, on this project's test faces.
    metrics = json.loads((out / "metrics.json").read_text())["narrow"]
    assert metrics["test"]["n"] == len(facts["test"]) == 96
    assert 0 < metrics["reference_private"]["n"] < metrics["test"]["n"]
    assert 0 < metrics["clean_test"]["n"] < metrics["test"]["n"]
    # The ONNX export that was timed is the trained model.
    faces = np.load(project / "data/arrays/original_test.npz")["images"][:16]
    views = Views((1.0, 0.92), flip=True)
    torch_logits = TorchClassifier.from_checkpoint(run_dir / "model.pt", views=views).logits(faces)
    exported = OnnxClassifier(run_dir / "model.onnx")
    assert exported.meta["views"] == run["views"]
    assert np.abs(exported.logits(faces) - torch_logits).max() < 1e-3
    detail = json.loads((out / "evaluation/narrow.json").read_text())
    assert detail["views"] == run["views"]

    # Logged to the project's MLflow store under the run's name, with its headline figures.
    with sqlite3.connect(project / "mlflow.db") as db:
        logged = dict(
            db.execute(
                "SELECT m.key, m.value FROM metrics m JOIN runs r ON m.run_uuid = r.run_uuid "
                "WHERE r.name LIKE 'train-run narrow%' AND r.status = 'FINISHED'"
            ).fetchall()
        )
    assert logged["reference_private_accuracy"] == metrics["reference_private"]["accuracy"]
    assert logged["ms_per_face_1_thread"] == run["ms_per_face_1_thread"]

    # The pipeline's own models are untouched, and a second run of the name is refused.
    assert {p: md5(p) for p in (project / "models").glob("*.pt")} == pipeline_models
    before = md5(run_dir / "model.pt")
    line = one_error_line(run_ferlab(project, *args))
    assert line.startswith("error: models/runs/narrow: a run named 'narrow' exists")
    assert "--force" in line and md5(run_dir / "model.pt") == before

    # An override of the study model's options would change nothing the live model trains.
    line = one_error_line(
        run_ferlab(project, "train-run", "w", "--fast", "-S", "model.baseline.width=0.5")
    )
    assert line.startswith("error: -S model.baseline.width=0.5: the live model (--fast) takes")
    assert "use -S fast.options.width=0.5" in line
    assert not (project / "models/runs/w").exists()

    # Settings that would stop the run stop it before any training, in one line.
    line = one_error_line(
        run_ferlab(project, "train-run", "zero", "--fast", "-S", "fast.train.lr=0")
    )
    assert line == "error: train.epochs, train.batch_size and train.lr must be positive"
    assert not (project / "models/runs/zero").exists()
    assert not (project / "reports/runs/zero").exists()

    # So is a model the ONNX export cannot take: at 56 px the baseline's last map is 4×4, which
    # the exporter cannot pool to 3×3. The run would train, then fail at its timing.
    done = run_ferlab(project, "train-run", "px56", "--fast", "-S", "fast.input_size=56")
    line = one_error_line(done)
    assert line.startswith("error: baseline at 56 px cannot be exported to ONNX (")
    assert "adaptive_avg_pool2d" in line and "change fast.input_size, fast.model" in line
    assert "graph" not in done.stdout + done.stderr  # the exporter's dump is kept aside
    assert not (project / "models/runs/px56").exists()
    assert not (project / "reports/runs/px56").exists()
    # As are views the export cannot take (crops without the whole face, for this model).
    crops = "evaluate.tta_crops_by_model={fast: [0.92]}"
    line = one_error_line(run_ferlab(project, "train-run", "crop", "--fast", "-S", crops))
    assert line.startswith("error: this run's export: test-time crops [0.92] cannot be exported")
    assert not (project / "models/runs/crop").exists()

    # The side-by-side table reads the run's own reports.
    table = subprocess.run(
        [sys.executable, str(ROOT / "scripts/runs_table.py"), str(out), "--out", "cands"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert table.returncode == 0, table.stderr
    row = json.loads((project / "cands.json").read_text())["rows"][0]
    assert row["reference"] == metrics["reference_private"]["accuracy"]
    assert row["epochs"] == 2 and row["model"] == "baseline"
    text = (project / "cands.md").read_text()
    assert f"| narrow | baseline | {row['parameters'] / 1e6:.2f}M | 2 |" in text
    # Its cost is that of the views the export scores: here four forward passes a face.
    assert f"| {row['ms_per_face_1_thread']:.3f} | face, 0.92 crop, mirrored |" in text
    command = "ferlab train-run narrow --fast -S fast.train.epochs=2 -S fast.options.width=0.25"
    assert f"- narrow: `{command}`" in text

    # Averaged with another model, scored on the same protocols: one model alone is the run's
    # own evaluation; a missing checkpoint is named in one line.
    ensemble = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts/ensemble_runs.py"),
            "models/runs/narrow/model.pt",
            "models/fast.pt",
            "--out",
            "ens",
        ],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert ensemble.returncode == 0, ensemble.stderr
    rows = json.loads((project / "ens.json").read_text())["rows"]
    assert [len(r["models"]) for r in rows] == [1, 2]
    for protocol in ("reference_private", "clean_test", "test"):
        assert rows[0][protocol]["accuracy"] == metrics[protocol]["accuracy"]
    assert rows[0]["val"] == metrics["val"]["accuracy"]
    assert "| 2 | `models/fast.pt` |" in (project / "ens.md").read_text()
    missing = subprocess.run(
        [sys.executable, str(ROOT / "scripts/ensemble_runs.py"), "models/none.pt"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert missing.returncode != 0
    assert missing.stderr.strip().splitlines()[-1] == (
        "ensemble_runs: models/none.pt: no such checkpoint; train it first"
    )
