"""Training throughput (images/s) of every registered model, one training step as the loop runs it.

Each case runs in its own process with a fixed thread count, cases interleaved over rounds
so that a change in machine load hits all of them alike; the table reports the median round.
A step is the loop's real work: whole-batch augmentation (`augment_batch`), forward, loss,
backward, AdamW step. `--mixconv split` runs DDAMFN's MixConv as separate group convs (the
earlier implementation) for the before/after comparison.

    python benchmarks/bench_train.py                      # writes reports/benchmark_train.{json,md}
    python benchmarks/bench_train.py --rounds 1 --steps 3 --out /tmp/bench   # a quick look
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from ferlab.config import load_params
from ferlab.machine import cpu_name
from ferlab.training.run import TrainJob

ROOT = Path(__file__).resolve().parents[1]
PARAMS = load_params(ROOT / "params.yaml")
# The live model as params.yaml commits it (fast.model, fast.options; dropout does not change
# a step's cost), and the SepNet it replaced (model.sepnet).
LIVE_JOB = TrainJob.fast(PARAMS)
LIVE = {k: v for k, v in LIVE_JOB.options.items() if k != "dropout"}
SEPNET = {k: v for k, v in PARAMS["model"]["sepnet"].items() if k != "dropout"}
CASES = [
    # (model, input size, precision, memory format, MixConv, model options)
    (LIVE_JOB.model, 48, "fp32", "channels_last", "-", LIVE),
    (LIVE_JOB.model, 48, "bf16", "channels_last", "-", LIVE),
    ("sepnet", 48, "fp32", "channels_last", "-", SEPNET),
    ("sepnet", 48, "fp32", "channels_last", "-", {**SEPNET, "stem_stride": 2}),
    ("sepnet", 48, "fp32", "channels_last", "-", {}),  # the original: stride-1 stem, width 1
    ("sepnet", 48, "fp32", "contiguous", "-", {}),
    ("sepnet", 48, "bf16", "channels_last", "-", SEPNET),
    ("baseline", 48, "fp32", "channels_last", "-", {}),
    ("baseline", 48, "bf16", "channels_last", "-", {}),
    ("ddamfn", 48, "fp32", "channels_last", "split", {}),
    ("ddamfn", 48, "fp32", "channels_last", "fused", {}),
    ("ddamfn", 48, "fp32", "contiguous", "split", {}),
    ("ddamfn", 48, "bf16", "channels_last", "split", {}),
    ("ddamfn", 112, "fp32", "channels_last", "split", {}),
    ("ddamfn", 112, "fp32", "channels_last", "fused", {}),
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
faces = torch.rand({batch}, 1, 48, 48)
target = torch.softmax(torch.randn({batch}, 8), 1)
g = torch.Generator().manual_seed(0)
def step():
    x = ((augment_batch(faces, g, out_size={size}) - 0.5) / 0.5).contiguous(memory_format=fmt)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled={bf16}):
        if hasattr(model, "forward_with_heads"):
            logits, heads = model.forward_with_heads(x)
        else:
            logits, heads = model(x), None
    loss = total_loss(logits.float(), target, None if heads is None else heads.float(), lam=0.1)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
for _ in range(2):
    step()
t = time.perf_counter()
for _ in range({steps}):
    step()
print(json.dumps({{"images_per_s": {steps} * {batch} / (time.perf_counter() - t)}}))
"""


def run_case(case: tuple, threads: int, steps: int, batch: int) -> float:
    model, size, precision, fmt, mixconv, options = case
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
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["images_per_s"]


def _options(options: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "default"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated model names")
    parser.add_argument("--out", default=str(ROOT / "reports" / "benchmark_train"))
    args = parser.parse_args()
    cases = [c for c in CASES if not args.only or c[0] in args.only.split(",")]
    bf16 = native_bf16()
    if not bf16:
        cases = [c for c in cases if c[2] != "bf16"]
    rates: list[list[float]] = [[] for _ in cases]
    for r in range(args.rounds):
        for i, case in enumerate(cases):
            rates[i].append(run_case(case, args.threads, args.steps, args.batch))
            print(f"round {r + 1} {case}: {rates[i][-1]:.1f} img/s", flush=True)
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    rows = [
        {
            "model": c[0],
            "input_size": c[1],
            "precision": c[2],
            "memory_format": c[3],
            "mixconv": c[4],
            "options": c[5],
            "images_per_s": sorted(v)[len(v) // 2],
            "rounds": v,
        }
        for c, v in zip(cases, rates, strict=True)
    ]
    report = {
        "machine": {
            "cpu": cpu_name(),
            "threads": args.threads,
            "native_bf16": bf16,
            "load_average_after": load,
        },
        "batch": args.batch,
        "steps": args.steps,
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# Training throughput ({cpu_name()}, {args.threads} thread(s), batch {args.batch})",
        "",
        f"Median of {args.rounds} interleaved rounds of {args.steps} steps; load average after: "
        f"{' '.join(load)}. `python benchmarks/bench_train.py`. A step is the loop's: batch "
        "augmentation, forward, loss, backward, AdamW.",
        "",
    ]
    if not bf16:
        lines += ["No native bf16 on this CPU (oneDNN reports none): bf16 cases not timed.", ""]
    lines += [
        "| model | options | input | precision | memory format | MixConv | images/s |",
        "|---|---|---|---|---|---|---:|",
    ]
    lines += [
        f"| {r['model']} | {_options(r['options'])} | {r['input_size']} | {r['precision']} | "
        f"{r['memory_format']} | {r['mixconv']} | {r['images_per_s']:.1f} |"
        for r in rows
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
