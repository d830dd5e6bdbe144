"""The committed reports are the ones the committed `dvc repro` wrote, and the code's layers
point one way."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def committed_plain_outputs() -> list[tuple[str, str]]:
    """(path, md5) of every `cache: false` file output recorded in dvc.lock."""
    lock_file = ROOT / "dvc.lock"
    if not lock_file.is_file():
        pytest.fail("dvc.lock is not committed: nothing ties reports/ to the run that made them")
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    lock = yaml.safe_load(lock_file.read_text())["stages"]
    plain = set()
    for stage in pipeline.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                if isinstance(entry, dict):
                    path, options = next(iter(entry.items()))
                    if options and options.get("cache") is False:
                        plain.add(path)
    found = []
    for stage in lock.values():
        for out in stage.get("outs", []):
            if out["path"] in plain and "md5" in out and not out["md5"].endswith(".dir"):
                found.append((out["path"], out["md5"]))
    return found


def test_every_committed_report_is_the_one_dvc_lock_records() -> None:
    outputs = committed_plain_outputs()
    assert len(outputs) > 20
    wrong = [
        path
        for path, md5 in outputs
        if not (ROOT / path).is_file() or hashlib.md5((ROOT / path).read_bytes()).hexdigest() != md5
    ]
    assert not wrong, f"edited or produced outside `dvc repro`: {wrong}"


# Layers, bottom up: a module may import its own layer and those below, never above.
LAYERS = [
    {"classes", "config", "io", "figures", "stage", "tracking", "data", "faces", "machine"},
    {"models", "checkpoint"},
    {"training", "inference"},
    {"evaluation", "export", "realtime", "age", "bundle"},
    {"cli"},
]


def layer_of(module: str) -> int:
    top = module.split(".")[1] if module.startswith("ferlab.") else module
    for level, names in enumerate(LAYERS):
        if top in names:
            return level
    raise AssertionError(f"ferlab.{top} is in no layer of this test")


def test_imports_point_down_the_layers() -> None:
    upward = []
    package = ROOT / "src" / "ferlab"
    for path in sorted(package.rglob("*.py")):
        if path.parent == package and path.name == "__init__.py":
            continue
        module = "ferlab." + ".".join(path.relative_to(package).with_suffix("").parts)
        own = layer_of(module)
        for node in ast.walk(ast.parse(path.read_text())):
            named = isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ferlab.")
            if named and layer_of(node.module) > own:
                upward.append(f"{module} imports {node.module}")
    assert not upward, upward


def stages_with_changed_params(repo: Path) -> dict[str, set[str]]:
    """`dvc status`: for each stage, the params.yaml keys it reads that changed."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        ["dvc", "status", "--json"], cwd=repo, env=env, capture_output=True, text=True, check=True
    )
    changed: dict[str, set[str]] = {}
    for stage, entries in json.loads(done.stdout or "{}").items():
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            # DVC lists changed params among the changed deps, under the params file.
            deps = entry.get("changed deps") or {}
            params = deps.get("params.yaml") if isinstance(deps, dict) else None
            keys = set(params) if isinstance(params, dict) else set()
            if keys:
                changed[stage.split(":")[-1]] = keys
    return changed


@pytest.mark.parametrize(
    ("key", "value", "stages"),
    [
        # the test-time views are scored by evaluate (and by study_age, which scores the study
        # model as evaluate does) and put inside the graphs by export
        (("evaluate", "tta_flip"), False, {"evaluate", "study_age", "export"}),
        (("evaluate", "tta_crops"), [1.0, 0.92], {"evaluate", "study_age", "export"}),
        (
            ("evaluate", "tta_crops_by_model"),
            {"study": [1.0, 0.92]},
            {"evaluate", "study_age", "export"},
        ),
        (("fast", "train", "epochs"), 99, {"train_fast", "train_fast_second"}),
        (("fast_second", "seed"), 8, {"train_fast_second"}),
        # the study model's options and schedule are not the live model's (fast.options and
        # fast.train's overrides)
        (("model", "ddamfn", "dropout"), 0.5, {"train"}),
        (("train", "epochs"), 3, {"train"}),
        (("study_resize", "max_images"), 7, {"study_resize"}),
    ],
)
def test_editing_a_knob_reruns_only_the_stages_that_read_it(
    tmp_path: Path, key: tuple[str, ...], value: object, stages: set[str]
) -> None:
    from test_pipeline_e2e import project_copy

    repo = project_copy(tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    node = params
    for part in key[:-1]:
        node = node[part]
    node[key[-1]] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert set(stages_with_changed_params(repo)) == stages


def test_the_live_models_stage_declares_every_train_key_it_reads() -> None:
    """train_fast trains with the train group under fast.train's overrides: it must declare
    exactly the train keys fast.train leaves to the train group (a key it reads but does not
    declare would leave a stale live model when that key changes)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train_fast"]
    declared = {p.split(".", 1)[1] for p in stage["params"] if p.startswith("train.")}
    read = set(params["train"]) - set(params["fast"]["train"])
    assert declared == read, (
        f"dvc.yaml train_fast: declare {sorted(read - declared)}, drop {sorted(declared - read)}"
    )


def test_the_study_model_depends_on_the_teachers_it_learns_from() -> None:
    """train distils from train.teachers: each must be a dep (a retrained teacher retrains the
    student), and the live models, the teachers themselves, must not distil."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    teachers = params["train"]["teachers"] if params["train"]["teacher_weight"] > 0 else []
    assert set(teachers) <= set(stages["train"]["deps"]), "dvc.yaml train: add each teacher"
    live = {**params["train"], **params["fast"]["train"]}
    assert not live["teachers"] or live["teacher_weight"] == 0


def test_the_age_models_stage_declares_every_training_key_it_reads() -> None:
    """age_model trains with the train group under the age group's keys (TrainConfig takes
    both): each training setting it reads must be declared where it is read from, or changing
    it would leave a stale age model."""
    from dataclasses import fields

    from ferlab.training.loop import TrainConfig

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["age_model"]
    settings = {f.name for f in fields(TrainConfig)} - {"seed"}  # the seed is the top level's
    from_age = settings & set(params["age"])
    from_train = (settings & set(params["train"])) - from_age
    declared = set(stage["params"])
    missing = {f"age.{k}" for k in from_age} | {f"train.{k}" for k in from_train}
    missing -= declared
    extra = {p for p in declared if p.startswith("train.")} - {f"train.{k}" for k in from_train}
    assert not missing and not extra, (
        f"dvc.yaml age_model: declare {sorted(missing)}, drop {sorted(extra)}"
    )


def test_the_second_live_model_reads_what_the_first_does_but_its_seed() -> None:
    """train_fast_second is train_fast's job from another seed: the same params and code, or a
    change to the live recipe would leave half of the `fast_pair` candidate stale."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    first, second = stages["train_fast"], stages["train_fast_second"]
    assert "fast_second.seed" in second["params"] and "seed" not in second["params"]
    assert set(second["params"]) - {"fast_second.seed"} == set(first["params"]) - {"seed"}
    assert set(second["deps"]) - {"stages/train_fast_second.py"} == set(first["deps"]) - {
        "stages/train.py"
    }


def test_a_fresh_clone_previews_the_whole_plan_with_dvc_status(tmp_path: Path) -> None:
    """The README's preview: on a clone without the data cache `dvc status` names every stage."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, env=env)
    done = subprocess.run(
        ["dvc", "status", "--json"], cwd=clone, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    stages = set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    # `report` reads only committed reports and code, so a clone already has it up to date.
    assert {name.split(":")[-1] for name in json.loads(done.stdout)} == stages - {"report"}
