"""Test-time views of the evaluated models: what each set adds on validation, and what it costs
a face, measured side by side in one run.

For each candidate of `evaluate.models` asked for (the committed checkpoints) and each view set
(the whole face alone; with its mirror; with centre crops too), the model with those views
(`ferlab.inference.Views`, as the evaluate stage scores and the export stage exports them) is
scored on the validation split only: accuracy, and log loss at the temperature fitted there.
Its static int8 export (calibrated as the export stage does) is timed at batch 1 on one thread
(`ferlab.export.per_face_ms`), cases interleaved over rounds, median round reported.

    python benchmarks/bench_tta_views.py                 # reports/benchmark_tta_views.*
    python benchmarks/bench_tta_views.py --models fast --rounds 1 --out /tmp/views
    python benchmarks/bench_tta_views.py --models study --crop-sets "1,0.96,0.92;1,0.96,0.92,0.88"

`--crop-sets` replaces the default sets with centre-crop lists (`;` between sets), each scored
with its mirror views.

`--search` chooses a model's crops on validation instead: each crop of a grid is scored once
(with its mirror), and every set of up to `--max-crops` of them is ranked by the validation
accuracy of the mean of its logits, which is what `Views` computes; fewer views win ties. No
export is timed: a view costs about the same whatever its crop.

    python benchmarks/bench_tta_views.py --models study \
        --search 1,0.98,0.96,0.94,0.92,0.9,0.88,0.85 --out reports/benchmark_tta_views_search
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ferlab.config import load_params
from ferlab.data.arrays import load_split
from ferlab.evaluation.calibration import fit_temperature, nll
from ferlab.evaluation.evaluate import EvaluateSettings
from ferlab.export import export_onnx, per_face_ms, quantize_int8, sample_indices
from ferlab.inference import Views, load_classifier
from ferlab.machine import cpu_name, load_average, write_benchmark

ROOT = Path(__file__).resolve().parents[1]
VIEW_SETS = [
    ("whole face", Views((1.0,), flip=False)),
    ("+ mirror", Views((1.0,), flip=True)),
    ("+ mirror, 0.92 crop", Views((1.0, 0.92), flip=True)),
    ("+ mirror, 0.96 and 0.92 crops", Views((1.0, 0.96, 0.92), flip=True)),
]


def crop_sets(text: str) -> list[tuple[str, Views]]:
    """`1,0.92;1,0.96,0.92` -> labelled view sets, each crop with its mirror."""
    sets = []
    for item in filter(None, (part.strip() for part in text.split(";"))):
        views = Views(tuple(float(c) for c in item.split(",")), flip=True)
        sets.append((f"+ mirror, crops {', '.join(f'{c:g}' for c in views.crops)}", views))
    return sets


def set_accuracy(
    logits_by_crop: dict[float, np.ndarray], crops: Sequence[float], labels: np.ndarray
) -> float:
    """Validation accuracy of the mean of these crops' logits: what `Views(crops)` scores."""
    mean = np.mean([logits_by_crop[c] for c in crops], axis=0)
    return float((mean.argmax(1) == labels).mean())


def rank_crop_sets(
    logits_by_crop: dict[float, np.ndarray], labels: np.ndarray, max_crops: int
) -> list[dict[str, Any]]:
    """Every set of 1..max_crops crops, best validation accuracy first (fewer crops on ties)."""
    rows = []
    for k in range(1, max_crops + 1):
        for crops in itertools.combinations(sorted(logits_by_crop, reverse=True), k):
            accuracy = set_accuracy(logits_by_crop, crops, labels)
            rows.append({"crops": list(crops), "n_views": 2 * k, "val_accuracy": accuracy})
    return sorted(rows, key=lambda r: (-r["val_accuracy"], r["n_views"]))


def search(args: argparse.Namespace, settings: EvaluateSettings, names: list[str]) -> None:
    """`--search`: the ranked crop sets of each model, with the set params.yaml gives it."""
    try:
        grid = sorted({float(c) for c in args.search.split(",") if c.strip()}, reverse=True)
        Views(tuple(grid))
    except ValueError as exc:
        raise SystemExit(f"--search {args.search!r}: {exc}") from None
    val_faces, val_labels, _ = load_split("val", root=ROOT / "data" / "arrays")
    report: dict[str, Any] = {"grid": grid, "max_crops": args.max_crops, "models": {}}
    command = shlex.join(["python", "benchmarks/bench_tta_views.py", *sys.argv[1:]])
    lines = [
        f"# Test-time crops chosen on validation ({cpu_name()})",
        "",
        f"Validation split only ({len(val_labels):,} faces; the test split is not read). Each "
        f"crop of {', '.join(f'{c:g}' for c in grid)} (fraction of the face side kept, with its "
        f"mirror) scored once; every set of up to {args.max_crops} of them ranked by the "
        "validation accuracy of the mean of its logits. `" + command + "`.",
    ]
    for name in names:
        logits_by_crop = {}
        for crop in grid:
            views = Views((crop,), flip=True)
            classifier = load_classifier(settings.models[name], views=views, temperature=1.0)
            if crop == grid[0]:
                # Two crops of one pixel side would be one view, and a set of them is refused.
                try:
                    Views(tuple(grid)).sides(int(classifier.input_size))
                except ValueError as exc:
                    raise SystemExit(f"--search {args.search!r} for {name}: {exc}") from None
            logits_by_crop[crop] = classifier.logits(val_faces)
            print(f"{name} crop {crop:g}: scored", flush=True)
        ranked = rank_crop_sets(logits_by_crop, val_labels, args.max_crops)
        current = list(settings.views_for(name).crops)
        current_accuracy = (
            set_accuracy(logits_by_crop, current, val_labels)
            if all(c in logits_by_crop for c in current)
            else None
        )
        report["models"][name] = {
            "params_crops": current,
            "params_val_accuracy": current_accuracy,
            "ranked": ranked,
        }
        lines += [
            "",
            f"## {name} (params.yaml: crops {', '.join(f'{c:g}' for c in current)}"
            + (f", {100 * current_accuracy:.2f}%)" if current_accuracy is not None else ")"),
            "",
            "| rank | crops | views | val accuracy |",
            "|---:|---|---:|---:|",
        ]
        for i, row in enumerate(ranked[: args.top], 1):
            crops = ", ".join(f"{c:g}" for c in row["crops"])
            lines.append(f"| {i} | {crops} | {row['n_views']} | {100 * row['val_accuracy']:.2f} |")
    write_benchmark(args.out, report, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="fast,fast_pair", help="evaluate.models names")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=300, help="timed faces per measurement")
    parser.add_argument("--out", default=str(ROOT / "reports" / "benchmark_tta_views"))
    parser.add_argument("--crop-sets", default="", help='e.g. "1,0.96,0.92;1,0.96,0.92,0.88"')
    parser.add_argument("--search", default="", help="crop grid to choose from, e.g. 1,0.96,0.92")
    parser.add_argument("--max-crops", type=int, default=4, help="largest set --search ranks")
    parser.add_argument("--top", type=int, default=15, help="rows of each --search table")
    args = parser.parse_args()
    try:
        view_sets = crop_sets(args.crop_sets) if args.crop_sets else VIEW_SETS
    except ValueError as exc:
        parser.error(f"--crop-sets {args.crop_sets!r}: {exc}")
    params = load_params(ROOT / "params.yaml")
    settings = EvaluateSettings.from_params(params)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in settings.models]
    if unknown:
        parser.error(f"{unknown} are not in params.yaml evaluate.models {list(settings.models)}")
    if args.search:
        search(args, settings, names)
        return
    val_faces, val_labels, _ = load_split("val", root=ROOT / "data" / "arrays")
    train_faces, _, _ = load_split("train", root=ROOT / "data" / "arrays")
    calibration = train_faces[sample_indices(len(train_faces), 512, int(params["seed"]))]

    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            source = settings.models[name]
            for label, views in view_sets:
                classifier = load_classifier(source, views=views, temperature=1.0)
                logits = classifier.logits(val_faces)
                temperature = fit_temperature(logits, val_labels)
                fp32 = Path(tmp) / f"{name}_{views.count}.onnx"
                export_onnx(source, fp32, views=views)
                int8 = fp32.with_suffix(".int8.onnx")
                quantize_int8(fp32, int8, "static", calibration)
                rows.append(
                    {
                        "model": name,
                        "views": label,
                        "n_views": views.count,
                        "crops": list(views.crops),
                        "flip": views.flip,
                        "val_accuracy": float((logits.argmax(1) == val_labels).mean()),
                        "val_nll_calibrated": nll(logits, val_labels, temperature),
                        "int8_path": str(int8),
                    }
                )
                print(f"{name} {label}: val {rows[-1]['val_accuracy']:.4f}", flush=True)
        times: dict[int, list[float]] = {}
        for r in range(args.rounds):
            for i, row in enumerate(rows):
                ms = per_face_ms(row["int8_path"], threads=1, repeats=args.repeats)
                times.setdefault(i, []).append(ms)
                print(f"round {r + 1} {row['model']} {row['views']}: {ms:.3f} ms", flush=True)
    for i, row in enumerate(rows):
        del row["int8_path"]
        row["int8_ms_per_face_1_thread"] = round(statistics.median(times[i]), 3)

    load = load_average()
    command = shlex.join(["python", "benchmarks/bench_tta_views.py", *sys.argv[1:]])
    lines = [
        f"# Test-time views of the evaluated models ({cpu_name()})",
        "",
        f"Validation split only ({len(val_labels):,} faces; the test split is not read). Log "
        "loss at the temperature fitted on the same faces. int8: static, the export stage's "
        f"calibration; ONNX Runtime, batch 1, one thread, median of {args.rounds} interleaved "
        f"rounds of {args.repeats} faces; load average after: {' '.join(load)}. "
        f"`{command}`.",
        "",
        "| model | views | n | val accuracy | val log loss | int8 ms a face, 1 thread |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['views']} | {r['n_views']} | {100 * r['val_accuracy']:.2f} | "
            f"{r['val_nll_calibrated']:.4f} | {r['int8_ms_per_face_1_thread']:.3f} |"
        )
    options = {"models": names, "crop_sets": args.crop_sets, "repeats": args.repeats}
    write_benchmark(args.out, {"rounds": args.rounds, **options, "rows": rows}, lines)


if __name__ == "__main__":
    main()
