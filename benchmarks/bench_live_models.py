"""Per-face cost of live-model architectures in ONNX Runtime, measured side by side in one run.

A face's cost at batch 1 depends on the architecture, not on the trained weights, so each
case is built from the registry with seeded random weights, saved as a checkpoint, exported
by the project's exporter and timed by `ferlab.export.per_face_ms` (the live loop's
classifier) at 1 and 2 threads. Cases are interleaved over rounds so a change in machine
load hits all of them alike; the table reports each case's median round.

    python benchmarks/bench_live_models.py                  # reports/benchmark_live_models.*
    python benchmarks/bench_live_models.py --rounds 1 --out /tmp/live
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from ferlab.checkpoint import save_checkpoint
from ferlab.config import load_params
from ferlab.export import export_onnx, per_face_ms
from ferlab.machine import cpu_name, load_average, write_benchmark
from ferlab.models import build_model
from ferlab.training.run import TrainJob

ROOT = Path(__file__).resolve().parents[1]
PARAMS = load_params(ROOT / "params.yaml")
LIVE = TrainJob.fast(PARAMS)
SEPNET = PARAMS["model"]["sepnet"]
# (label, registry name, options): the committed live model and the candidates beside it
CASES = [
    (f"live model as committed ({LIVE.model})", LIVE.model, LIVE.options),
    ("sepnet (the live model before)", "sepnet", SEPNET),
    ("sepnet, stride-2 stem", "sepnet", {**SEPNET, "stem_stride": 2}),
    ("baseline at model.baseline", "baseline", PARAMS["model"]["baseline"]),
]


def export_case(name: str, options: dict, checkpoint: Path) -> tuple[Path, int]:
    """The case's ONNX export and its parameter count."""
    torch.manual_seed(0)
    model = build_model(name, input_size=48, **options).eval()
    save_checkpoint(checkpoint, model, {"model": {"name": name, **options}, "input_size": 48})
    onnx_path = checkpoint.with_suffix(".onnx")
    export_onnx(checkpoint, onnx_path)
    return onnx_path, sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=300, help="timed faces per measurement")
    parser.add_argument("--out", default=str(ROOT / "reports" / "benchmark_live_models"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        built = [export_case(n, o, Path(tmp) / f"case{i}.pt") for i, (_, n, o) in enumerate(CASES)]
        exports = [path for path, _ in built]
        times: dict[tuple[int, int], list[float]] = {}
        for r in range(args.rounds):
            for i, path in enumerate(exports):
                for threads in (1, 2):
                    ms = per_face_ms(path, threads=threads, repeats=args.repeats)
                    times.setdefault((i, threads), []).append(ms)
                    print(f"round {r + 1} {CASES[i][0]} {threads} thread(s): {ms:.3f} ms")
        rows = []
        for i, ((label, name, options), (path, parameters)) in enumerate(
            zip(CASES, built, strict=True)
        ):
            rows.append(
                {
                    "case": label,
                    "model": name,
                    "options": options,
                    "parameters": parameters,
                    "onnx_mb": round(path.stat().st_size / 1e6, 3),
                    **{
                        f"ms_per_face_{t}_thread": round(statistics.median(times[(i, t)]), 3)
                        for t in (1, 2)
                    },
                }
            )
    load = load_average()
    lines = [
        f"# Live-model architectures: ms a face ({cpu_name()})",
        "",
        f"ONNX Runtime, batch 1, median of {args.rounds} interleaved rounds of {args.repeats} "
        f"faces; random weights (the cost does not depend on them); load average after: "
        f"{' '.join(load)}. `python benchmarks/bench_live_models.py`.",
        "",
        "| architecture | parameters | ONNX MB | ms a face, 1 thread | ms a face, 2 threads |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = [r["case"], f"{r['parameters'] / 1e6:.2f}M", f"{r['onnx_mb']:.2f}"]
        cells += [f"{r[f'ms_per_face_{t}_thread']:.3f}" for t in (1, 2)]
        lines.append("| " + " | ".join(cells) + " |")
    write_benchmark(args.out, {"rounds": args.rounds, "rows": rows}, lines)


if __name__ == "__main__":
    main()
