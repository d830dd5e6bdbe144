"""scripts/ablation.py: its experiments change only the live model, and its table reads DVC's."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("ablation", ROOT / "scripts/ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ablations_touch_only_the_live_model_and_evaluation(tmp_path: Path) -> None:
    """Applied as DVC applies `-S`, every ablation changes params the study's train stage does
    not read (so DVC never retrains DDAMFN for it), and each changes what it says."""
    from dvc.utils.hydra import apply_overrides

    from ferlab.evaluation.evaluate import EvaluateSettings

    ablation = load_script()
    study = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]["params"]
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    # Params that score an extra crop: "no-tta" must turn off every test-time view.
    with_crops = (
        (ROOT / "params.yaml").read_text().replace("tta_crops: [1.0]", "tta_crops: [1.0, 0.92]")
    )
    assert "tta_crops: [1.0, 0.92]" in with_crops
    for name, _, overrides in ablation.ABLATIONS:
        path = tmp_path / f"{name}.yaml"
        path.write_text(with_crops)
        apply_overrides(str(path), [*ablation.short_schedule(3), *overrides])
        changed = yaml.safe_load(path.read_text())
        # The evaluate stage accepts what each experiment runs with.
        views = EvaluateSettings.from_params(changed).views_for("fast")
        for key in study:
            old, new = base, changed
            for part in str(key).split("."):
                old, new = old.get(part), new.get(part)
            assert old == new, (name, key)
        assert changed["evaluate"]["models"] == {"fast": "models/fast.pt"}
        assert changed["fast"]["train"]["epochs"] == 3
        if name == "labels":
            assert changed["fast"]["train"]["targets"] == "labels"
        if name == "no-tta":
            assert changed["evaluate"]["tta_flip"] is False
            assert changed["evaluate"]["tta_crops"] == [1.0]
            assert views.count == 1
        else:
            assert views.crops == (1.0, 0.92)  # the other rows keep the common views


def test_each_experiment_runs_the_live_stages_and_never_the_study_training() -> None:
    """The study model depends on the live models (its teachers), so an experiment that
    followed the DAG from `evaluate` would retrain DDAMFN; the queued command names its stages
    and runs those alone, every stage that reads the live recipe among them, in DAG order."""
    ablation = load_script()
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    command = ablation.queue_command("ablation-x-3ep", ["-S", "fast.train.epochs=3"])
    assert command[:5] == ["exp", "run", "--queue", "-n", "ablation-x-3ep"]
    assert "--single-item" in command and command[-3:] == list(ablation.STAGES)
    assert "train" not in ablation.STAGES and set(ablation.STAGES) <= set(stages)
    reads_live_recipe = {
        name for name, stage in stages.items()
        if any(str(p) == "fast" or str(p).startswith("fast.") for p in stage.get("params", []))
    }  # fmt: skip
    assert reads_live_recipe and reads_live_recipe <= set(ablation.STAGES)
    # Each stage comes after the stages whose outputs it reads.
    made_by = {out: name for name, stage in stages.items() for out in stage.get("outs", [])
               if isinstance(out, str)}  # fmt: skip
    order = list(ablation.STAGES)
    for name in order:
        for dep in stages[name].get("deps", []):
            if made_by.get(dep) in order:
                assert order.index(made_by[dep]) < order.index(name), (name, dep)


def test_table_rows_come_from_the_experiments_metrics() -> None:
    ablation = load_script()
    metrics = {
        "reports/metrics.json": {
            "fast": {
                "reference_private": {"accuracy": 0.8123},
                "clean_test": {
                    "accuracy": 0.77,
                    "balanced_accuracy": 0.5,
                    "prior_corrected_balanced_accuracy": 0.6,
                },
            }
        },
        "reports/fast/train.json": {"train_minutes": 4.25, "epochs_run": 3},
    }
    row = ablation.row("recipe", "recipe as committed", metrics)
    assert row["reference"] == 0.8123 and row["epochs"] == 3
    text = ablation.table([row], 3, "a CPU")
    assert "| recipe as committed | 81.23 | 77.00 | 50.00 | 60.00 | 4.2 |" in text
    empty = ablation.table([ablation.row("x", "failed run", {})], 3, "a CPU")
    assert "| failed run | – | – | – | – | – |" in empty


def test_unknown_ablation_is_refused_before_any_experiment() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts/ablation.py"), "--only", "nonsense"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "--only from recipe, labels" in done.stderr


def test_results_are_read_from_the_queued_commit_after_head_moves(tmp_path: Path) -> None:
    """A real DVC repo: an experiment run on one commit is still found after a later commit
    moves HEAD (a commit made while the ablation queue runs once lost every result)."""
    ablation = load_script()

    def run(*cmd: str) -> str:
        done = subprocess.run(cmd, cwd=tmp_path, text=True, capture_output=True, check=True)
        return done.stdout.strip()

    run("git", "init", "-q")
    run("git", "config", "user.email", "ci@example.invalid")
    run("git", "config", "user.name", "ci")
    run(sys.executable, "-m", "dvc", "init", "-q")
    (tmp_path / "params.yaml").write_text("x: 1\n")
    write = (
        "import json, yaml; "
        "json.dump({'v': yaml.safe_load(open('params.yaml'))['x']}, open('m.json', 'w'))"
    )
    stage = {
        "cmd": f'{sys.executable} -c "{write}"',
        "params": ["x"],
        "metrics": [{"m.json": {"cache": False}}],
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"score": stage}}))
    run(sys.executable, "-m", "dvc", "repro", "-q")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "baseline")
    queued_on = run("git", "rev-parse", "HEAD")
    run(sys.executable, "-m", "dvc", "exp", "run", "-q", "-n", "exp-x2", "-S", "x=2")
    run("git", "checkout", "-q", "--", ".")
    (tmp_path / "notes.txt").write_text("a commit made while the queue runs\n")
    run("git", "add", "notes.txt")
    run("git", "commit", "-qm", "later")

    found = ablation.experiment_results({"exp-x2"}, queued_on, repo=tmp_path)
    assert found["exp-x2"]["metrics"]["m.json"] == {"v": 2}
    assert ablation.experiment_results({"exp-x2"}, "HEAD", repo=tmp_path) == {}
