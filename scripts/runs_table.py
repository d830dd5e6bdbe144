"""Side-by-side table of `ferlab train-run` runs (reports/runs/NAME/): one row per run.

Each row is read from the run's own reports: run.json (what was trained, its ONNX size and
per-face cost), train.json (epochs, minutes, best validation accuracy) and metrics.json (the
evaluate stage's protocols). Rows are ordered by validation accuracy, the only split a choice
may be made on; the test protocols are what that choice then scores.

    python scripts/runs_table.py reports/runs/plain-w05 reports/runs/sepnet-live \\
        --out reports/candidates_fast --title "Live-model candidates"
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ferlab.io import write_json, write_text  # noqa: E402

FILES = ("run.json", "train.json", "metrics.json")


def read_run(folder: Path) -> dict:
    """One row from a run folder; a missing report names the folder and the command."""
    found = {}
    for name in FILES:
        path = folder / name
        if not path.is_file():
            raise SystemExit(f"runs_table: {path}: missing; run `ferlab train-run` for it")
        found[name] = json.loads(path.read_text())
    run, train, metrics = (found[n] for n in FILES)
    scored = metrics[run["name"]]

    def score(protocol: str, key: str) -> float | None:
        # A protocol can be absent: the reference protocol needs the FER+ votes file.
        return (scored.get(protocol) or {}).get(key)

    return {
        "name": run["name"],
        "job": run["job"],
        "model": run["model"],
        "options": run["options"],
        "overrides": run["overrides"],
        "parameters": train["n_parameters"],
        "epochs": train["epochs_run"],
        "train_minutes": round(train["train_minutes"], 1),
        "images_per_s": round(train["images_per_s"], 1),
        "val": train["best_val_accuracy"],
        "reference": score("reference_private", "accuracy"),
        "clean": score("clean_test", "accuracy"),
        "clean_balanced": score("clean_test", "balanced_accuracy"),
        "clean_prior_corrected_balanced": score("clean_test", "prior_corrected_balanced_accuracy"),
        "onnx_mb": run["onnx_mb"],
        "ms_per_face_1_thread": run["ms_per_face_1_thread"],
        # The views the timed export scores; older runs did not record them.
        "views": run.get("views"),
        "cpu": run["cpu"],
    }


def views_label(views: dict | None) -> str:
    """How many forward passes a face cost in the timed export, in words."""
    if views is None:
        return "not recorded"
    crops = ", ".join("face" if c == 1.0 else f"{c:g} crop" for c in views["crops"])
    return crops + (", mirrored" if views["flip"] else "")


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def table(rows: list[dict], title: str) -> str:
    cpus = sorted({r["cpu"] for r in rows})
    lines = [
        f"# {title}",
        "",
        "One `ferlab train-run` per row (overrides below), each scored like the evaluate stage; "
        "rows ordered by validation accuracy. Figures in %; train minutes and ms per face "
        "(batch 1, one thread, ONNX Runtime) measured on " + ", ".join(cpus) + ".",
        "",
        "| run | model | parameters | epochs | val | FER+ reference | clean test | "
        "clean balanced | train minutes | ms/face | views timed | ONNX MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['model']} | {r['parameters'] / 1e6:.2f}M | {r['epochs']} | "
            f"{pct(r['val'])} | {pct(r['reference'])} | {pct(r['clean'])} | "
            f"{pct(r['clean_balanced'])} | {r['train_minutes']:.1f} | "
            f"{r['ms_per_face_1_thread']:.3f} | {views_label(r['views'])} | {r['onnx_mb']:.2f} |"
        )
    lines += ["", "Overrides of each run (`-S`, on top of params.yaml as committed):", ""]
    for r in rows:
        words = [
            "ferlab",
            "train-run",
            r["name"],
            *(["--fast"] if r["job"] == "train_fast" else []),
        ]
        words += [w for o in r["overrides"] for w in ("-S", o)]
        lines.append(f"- {r['name']}: `{' '.join(shlex.quote(w) for w in words)}`")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="reports/runs/NAME folders")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    parser.add_argument("--title", default="Runs side by side")
    args = parser.parse_args()
    rows = sorted((read_run(f) for f in args.runs), key=lambda r: -r["val"])
    write_json(args.out.with_suffix(".json"), {"rows": rows})
    text = table(rows, args.title)
    write_text(args.out.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()
