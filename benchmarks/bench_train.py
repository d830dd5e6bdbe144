"""Training throughput (images/s) of every registered model, one training step as the loop runs it.

Each case runs in its own process with a fixed thread count, cases interleaved over rounds
so that a change in machine load hits all of them alike; the table reports the median round.
A step is the loop's real work: whole-batch augmentation (`augment_batch`), forward, loss,
backward, AdamW step. DDAMFN is timed as params.yaml commits it (the study model, `model.ddamfn`)
and at the paper's width 1.0; its MixConv runs as separate group convs (`split`, the default) or
as one depthwise conv with zero-padded kernels (`fused`). `--compile` adds cases under
`torch.compile`: the live model (bf16, as it trains), the study model at 48 and 112 px and the
paper's width at 112 (their first steps compile: the warm-up column says how long that took).

    python benchmarks/bench_train.py                      # writes reports/benchmark_train.{json,md}
    python benchmarks/bench_train.py --rounds 1 --steps 3 --out /tmp/bench   # a quick look
    python benchmarks/bench_train.py --threads 2 --only ddamfn --sizes 112 --compile \
        --out reports/benchmark_train_112                  # DDAMFN at 112, eager and compiled
    python benchmarks/bench_train.py --batch 128 --only baseline --compile \
        --out reports/benchmark_train_live_compile   # the live model eager and compiled (bf16),
                                                     # and the full-width baseline eager
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from ferlab.config import load_params
from ferlab.machine import cpu_name, load_average, write_benchmark
from ferlab.training.run import TrainJob

ROOT = Path(__file__).resolve().parents[1]
PARAMS = load_params(ROOT / "params.yaml")
# The live model as params.yaml commits it (fast.model, fast.options; dropout does not change
# a step's cost), and the SepNet it replaced (model.sepnet).
LIVE_JOB = TrainJob.fast(PARAMS)
LIVE = {k: v for k, v in LIVE_JOB.options.items() if k != "dropout"}
SEPNET = {k: v for k, v in PARAMS["model"]["sepnet"].items() if k != "dropout"}
STUDY = {k: v for k, v in PARAMS["model"]["ddamfn"].items() if k != "dropout"}
PAPER = {**STUDY, "width": 1.0}  # the paper's DDAMFN: the same options at full width
CASES = [
    # (model, input size, precision, memory format, MixConv, model options, torch.compile)
    (LIVE_JOB.model, 48, "fp32", "channels_last", "-", LIVE, False),
    (LIVE_JOB.model, 48, "bf16", "channels_last", "-", LIVE, False),
    ("baseline", 48, "fp32", "channels_last", "-", {}, False),
    ("baseline", 48, "bf16", "channels_last", "-", {}, False),
    ("sepnet", 48, "fp32", "channels_last", "-", SEPNET, False),
    ("ddamfn", 48, "fp32", "channels_last", "split", STUDY, False),
    ("ddamfn", 48, "fp32", "channels_last", "fused", STUDY, False),
    ("ddamfn", 48, "fp32", "contiguous", "split", STUDY, False),
    ("ddamfn", 48, "bf16", "channels_last", "split", STUDY, False),
    ("ddamfn", 112, "fp32", "channels_last", "split", STUDY, False),
    ("ddamfn", 112, "fp32", "channels_last", "fused", STUDY, False),
    ("ddamfn", 48, "fp32", "channels_last", "split", PAPER, False),
    ("ddamfn", 112, "fp32", "channels_last", "split", PAPER, False),
    ("ddamfn", 112, "fp32", "channels_last", "fused", PAPER, False),
]
# torch.compile at both sizes: the 112-px cases test the 35 images/s goal at the
# paper's size (the reference implementation measured 11.6 at width 1.0, 2 threads).
COMPILED = [
    (LIVE_JOB.model, 48, "bf16", "channels_last", "-", LIVE, True),
    ("ddamfn", 48, "fp32", "channels_last", "split", STUDY, True),
    ("ddamfn", 112, "fp32", "channels_last", "split", STUDY, True),
    ("ddamfn", 112, "fp32", "channels_last", "split", PAPER, True),
]


def native_bf16() -> bool:
    """Whether oneDNN has bf16 kernels here (AVX-512 BF16 / AMX); without them bf16 autocast
    is emulated and several times slower than fp32, so those cases are not worth timing."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


WORKER = r"""
import sys, time, json, torch
sys.path.insert(0, {src!r})
torch.set_num_threads({threads})
from ferlab.models import build_model
from ferlab.models.mfn import MixDepthwise
from ferlab.training.augment import augment_batch
from ferlab.training.losses import total_loss
torch.manual_seed(0)
model = build_model({model!r}, input_size={size}, **{options!r})
for m in model.modules():
    if isinstance(m, MixDepthwise):
        m.fused = {fused}
fmt = torch.channels_last if {fmt!r} == "channels_last" else torch.contiguous_format
model = model.to(memory_format=fmt).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
if hasattr(model, "forward_with_heads"):
    forward = model.forward_with_heads
else:
    def forward(x):
        return model(x), None
if {compiled}:
    forward = torch.compile(forward)
faces = torch.rand({batch}, 1, 48, 48)
target = torch.softmax(torch.randn({batch}, 8), 1)
g = torch.Generator().manual_seed(0)
def step():
    x = ((augment_batch(faces, g, out_size={size}) - 0.5) / 0.5).contiguous(memory_format=fmt)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled={bf16}):
        logits, heads = forward(x)
    loss = total_loss(logits.float(), target, None if heads is None else heads.float(), lam=0.1)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
t = time.perf_counter()
for _ in range(2):
    step()
warmup = time.perf_counter() - t
t = time.perf_counter()
for _ in range({steps}):
    step()
rate = {steps} * {batch} / (time.perf_counter() - t)
print(json.dumps({{"images_per_s": rate, "warmup_s": warmup}}))
"""


def run_case(case: tuple, threads: int, steps: int, batch: int) -> dict:
    """One case in a fresh process: {"images_per_s", "warmup_s"} (the first two steps)."""
    model, size, precision, fmt, mixconv, options, compiled = case
    code = WORKER.format(
        options=options,
        src=str(ROOT / "src"),
        threads=threads,
        model=model,
        size=size,
        fused=mixconv == "fused",
        fmt=fmt,
        batch=batch,
        bf16=precision == "bf16",
        steps=steps,
        compiled=compiled,
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _options(options: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "default"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated model names")
    parser.add_argument("--sizes", default="", help="comma-separated input sizes, e.g. 112")
    parser.add_argument("--compile", action="store_true", help="add compiled cases")
    parser.add_argument("--out", default=str(ROOT / "reports" / "benchmark_train"))
    args = parser.parse_args()
    cases = [
        c
        for c in CASES + (COMPILED if args.compile else [])
        if (not args.only or c[0] in args.only.split(","))
        and (not args.sizes or str(c[1]) in args.sizes.split(","))
    ]
    bf16 = native_bf16()
    if not bf16:
        cases = [c for c in cases if c[2] != "bf16"]
    results: list[list[dict]] = [[] for _ in cases]
    for r in range(args.rounds):
        for i, case in enumerate(cases):
            results[i].append(run_case(case, args.threads, args.steps, args.batch))
            print(f"round {r + 1} {case}: {results[i][-1]['images_per_s']:.1f} img/s", flush=True)
    rows = []
    for c, runs in zip(cases, results, strict=True):
        rates = [run["images_per_s"] for run in runs]
        rows.append(
            {
                "model": c[0],
                "input_size": c[1],
                "precision": c[2],
                "memory_format": c[3],
                "mixconv": c[4],
                "options": c[5],
                "compile": c[6],
                "images_per_s": sorted(rates)[len(rates) // 2],
                "rounds": rates,
                "warmup_s": max(run["warmup_s"] for run in runs),
            }
        )
    command = " ".join(["python benchmarks/bench_train.py", *sys.argv[1:]])  # as run
    lines = [
        f"# Training throughput ({cpu_name()}, {args.threads} thread(s), batch {args.batch})",
        "",
        f"Median of {args.rounds} interleaved rounds of {args.steps} steps; load average after: "
        f"{' '.join(load_average())}. `{command}`. A step is the loop's: "
        "batch augmentation, forward, loss, backward, AdamW. Warm-up: the slowest round's first "
        "two steps (with torch.compile, the compilation).",
        "",
    ]
    if not bf16:
        lines += ["No native bf16 on this CPU (oneDNN reports none): bf16 cases not timed.", ""]
    lines += [
        "| model | options | input | precision | memory format | MixConv | compiled | images/s "
        "| warm-up s |",
        "|---|---|---|---|---|---|---|---:|---:|",
    ]
    lines += [
        f"| {r['model']} | {_options(r['options'])} | {r['input_size']} | {r['precision']} | "
        f"{r['memory_format']} | {r['mixconv']} | {'yes' if r['compile'] else 'no'} | "
        f"{r['images_per_s']:.1f} | {r['warmup_s']:.1f} |"
        for r in rows
    ]
    report = {
        "threads": args.threads,
        "native_bf16": bf16,
        "batch": args.batch,
        "steps": args.steps,
        "rows": rows,
    }
    write_benchmark(args.out, report, lines)


if __name__ == "__main__":
    main()
