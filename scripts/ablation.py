"""Recipe ablation of the live model: one queued DVC experiment per change, one table.

Each row is a real `dvc exp run` of `train_fast` + `evaluate` on a short schedule
(`--epochs`, default 3) with one change to the committed recipe, scored on the test protocols
the evaluate stage reports (FER+ reference, clean test). Every stage run lands in the
project's MLflow store, tagged with its experiment's name; the workspace is left as it is.
The table goes to reports/ablation_fast.{json,md}.

    python scripts/ablation.py                   # every ablation below, 3 epochs each
    python scripts/ablation.py --epochs 1 --only recipe,no-ema --out /tmp/ablation

Changes go under `fast.train` (the live model's overrides) so the study model's stage keeps
its params, and each experiment runs only `STAGES` (`--single-item`): the study model learns
from the live models (`train.teachers`), so following the DAG from `evaluate` would retrain
DDAMFN from 3-epoch teachers for every row. `~evaluate.models.study` and
`~evaluate.models.fast_pair` score the live model only; the second seed is trained too, on the
same short schedule, because the evaluate stage depends on it.
An ablation whose training params equal another's (the eval-only rows) is restored from DVC's
run-cache and costs only its evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ferlab.io import write_json, write_text  # noqa: E402
from ferlab.machine import cpu_name  # noqa: E402

# The stages each experiment runs, in this order and no others (see the docstring).
STAGES = ("train_fast", "train_fast_second", "evaluate")

# (name, what changes, DVC overrides on top of the short schedule)
ABLATIONS: list[tuple[str, str, list[str]]] = [
    ("recipe", "recipe as committed (votes, EMA 0.995, flip TTA)", []),
    ("labels", "plurality labels instead of vote distributions", ["++fast.train.targets=labels"]),
    ("no-ema", "no weight EMA", ["++fast.train.ema_decay=0"]),
    ("mixup", "mixup α = 0.2", ["++fast.train.mixup_alpha=0.2"]),
    ("smooth", "label smoothing 0.1", ["++fast.train.label_smoothing=0.1"]),
    # No test-time views at all: no mirror and no extra crops, whatever evaluate commits.
    (
        "no-tta",
        "no flip TTA when scoring (same weights as recipe)",
        ["evaluate.tta_flip=false", "evaluate.tta_crops=[1.0]"],
    ),
]


def short_schedule(epochs: int) -> list[str]:
    """The overrides under every row: the live recipe for `epochs`, scored alone (the study
    model and the pair, and the study model's own views, leave evaluate's list)."""
    return [
        f"fast.train.epochs={epochs}",
        "~evaluate.models.study",
        "~evaluate.models.fast_pair",
        "~evaluate.tta_crops_by_model",
    ]


METRICS = {
    "reference": ("reference_private", "accuracy"),
    "clean": ("clean_test", "accuracy"),
    "clean_balanced": ("clean_test", "balanced_accuracy"),
    "clean_prior_corrected_balanced": ("clean_test", "prior_corrected_balanced_accuracy"),
}


def queue_command(name: str, sets: list[str]) -> list[str]:
    """The `dvc` arguments that queue one experiment of `STAGES` alone."""
    return ["exp", "run", "--queue", "-n", name, *sets, "--single-item", *STAGES]


def dvc(*args: str, capture: bool = False, repo: Path = ROOT) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=repo, text=True, capture_output=capture
    )
    if proc.returncode != 0:
        detail = (proc.stderr or "").strip().splitlines()[-1:] if capture else []
        raise SystemExit(f"ablation: `dvc {' '.join(args)}` failed {' '.join(detail)}".strip())
    return proc.stdout if capture else ""


def experiment_results(names: set[str], baseline_rev: str, repo: Path = ROOT) -> dict[str, dict]:
    """name → {params, metrics} of the named experiments derived from `baseline_rev`, from
    `dvc exp show --json` (pinned: a commit made while the queue runs moves HEAD away)."""
    shown = json.loads(dvc("exp", "show", "--json", "--rev", baseline_rev, capture=True, repo=repo))
    found: dict[str, dict] = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            if exp.get("name") in names:
                data = exp["revs"][0]["data"]
                metrics = {path: m.get("data", {}) for path, m in data["metrics"].items()}
                found[exp["name"]] = {"metrics": metrics}
    return found


def row(name: str, change: str, metrics: dict) -> dict:
    fast = metrics.get("reports/metrics.json", {}).get("fast", {})
    train = metrics.get("reports/fast/train.json", {})
    out = {"name": name, "change": change}
    for key, (protocol, metric) in METRICS.items():
        out[key] = (fast.get(protocol) or {}).get(metric)
    out["train_minutes"] = train.get("train_minutes")
    out["epochs"] = train.get("epochs_run")
    return out


def table(rows: list[dict], epochs: int, cpu: str) -> str:
    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.2f}"

    lines = [
        f"# Live-model recipe ablation ({epochs} epochs each, {cpu})",
        "",
        "One `dvc exp run` per row (`python scripts/ablation.py`): `train_fast` on a short "
        "schedule with one change, then `evaluate`. Figures in %; CPU minutes are the train "
        "stage's on this 2-core machine. Model selection uses validation only; these are the "
        "test protocols the evaluate stage reports.",
        "",
        "| change | FER+ reference | clean test | clean balanced | clean balanced, "
        "prior-corrected | train minutes |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        minutes = "–" if r["train_minutes"] is None else f"{r['train_minutes']:.1f}"
        lines.append(
            f"| {r['change']} | {pct(r['reference'])} | {pct(r['clean'])} | "
            f"{pct(r['clean_balanced'])} | {pct(r['clean_prior_corrected_balanced'])} | "
            f"{minutes} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated ablation names")
    parser.add_argument("--out", default=str(ROOT / "reports" / "ablation_fast"))
    args = parser.parse_args()
    known = [a[0] for a in ABLATIONS]
    chosen = [a for a in ABLATIONS if not args.only or a[0] in args.only.split(",")]
    unknown = set(filter(None, args.only.split(","))) - set(known)
    if unknown or args.epochs < 1:
        raise SystemExit(f"ablation: choose --epochs ≥ 1 and --only from {', '.join(known)}")
    # Queued experiments run in copies of the repo: point them all at this project's store.
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{ROOT / 'mlflow.db'}")
    short = short_schedule(args.epochs)
    baseline_rev = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, text=True, capture_output=True, check=True
    ).stdout.strip()
    names = {}
    for name, change, overrides in chosen:
        exp = f"ablation-{name}-{args.epochs}ep"
        names[exp] = (name, change)
        subprocess.run(
            [sys.executable, "-m", "dvc", "exp", "remove", exp], cwd=ROOT, capture_output=True
        )  # a rerun replaces its earlier experiment of the same name
        sets = [x for item in (*short, *overrides) for x in ("-S", item)]
        dvc(*queue_command(exp, sets))
        print(f"ablation: queued {exp}: {change}", flush=True)
    dvc("exp", "run", "--run-all", "--jobs", "1")
    results = experiment_results(set(names), baseline_rev)
    missing = sorted(set(names) - set(results))
    if missing:
        raise SystemExit(f"ablation: no results for {', '.join(missing)}: see `dvc queue logs`")
    rows = [row(n, change, results[exp]["metrics"]) for exp, (n, change) in names.items()]
    out = Path(args.out)
    report = {"epochs": args.epochs, "cpu": cpu_name(), "rows": rows}
    write_json(out.with_suffix(".json"), report)
    text = table(rows, args.epochs, report["cpu"])
    write_text(out.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()
