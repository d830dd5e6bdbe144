"""Training throughput of one process against several single-thread DDP processes on a CPU.

Depthwise-heavy nets such as DDAMFN gain little from a second intra-op thread on a small CPU
(see reports/benchmark_models.md), so the train stage runs `train.processes` torchrun processes
of one thread each, DistributedDataParallel over gloo. This measures what that buys: the same
training step (forward with heads, CE + λ·L_att, backward, Adam; fp32, channels_last, batch 64 a
process) as 1 process × 1 thread, 1 process × N threads and N processes × 1 thread, in
interleaved rounds, and writes reports/benchmark_ddp.{json,md}.

    python benchmarks/bench_ddp.py                       # ddamfn@48 and baseline@48, 2 rounds
    python benchmarks/bench_ddp.py --models ddamfn --steps 5 --rounds 1 --no-write
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time
from datetime import datetime
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from bench_models import cpu_name  # benchmarks/ is on sys.path when run as a script

from ferlab.io import write_json, write_text
from ferlab.models import build_model
from ferlab.training.loop import _WithHeads
from ferlab.training.losses import total_loss

ROOT = Path(__file__).resolve().parents[1]
BATCH = 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker(
    rank: int, world: int, threads: int, model_name: str, size: int, steps: int, port: int, out
) -> None:
    """Time `steps` training steps (after 2 warm-up steps); rank 0 puts images/s in `out`."""
    torch.set_num_threads(threads)
    if world > 1:
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
        )
    torch.manual_seed(0)
    model = build_model(model_name, input_size=size).to(memory_format=torch.channels_last)
    view: torch.nn.Module = _WithHeads(model)
    if world > 1:
        view = torch.nn.parallel.DistributedDataParallel(view)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(BATCH, 1, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 8, (BATCH,))

    def step() -> None:
        logits, heads = view(x)
        loss = total_loss(logits, y, heads, lam=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    if world > 1:
        dist.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if world > 1:
        dist.barrier()
    seconds = time.perf_counter() - start
    if rank == 0:
        out.put(world * BATCH * steps / seconds)
    if world > 1:
        dist.destroy_process_group()


def measure(processes: int, threads: int, model_name: str, size: int, steps: int) -> float:
    context = mp.get_context("spawn")
    out = context.Queue()
    args = (processes, threads, model_name, size, steps, free_port(), out)
    mp.start_processes(worker, args=args, nprocs=processes, join=True, start_method="spawn")
    return float(out.get(timeout=60))


def summarise(values: list[float]) -> dict[str, float | list[float]]:
    return {"best": max(values), "median": statistics.median(values), "rounds": values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["ddamfn", "baseline"])
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--steps", type=int, default=12, help="timed steps a measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    n = args.cores
    layouts = [(1, 1), (1, n), (n, 1)]  # (processes, threads each)
    rates: dict[str, dict[str, list[float]]] = {}
    for round_no in range(args.rounds):
        for model_name in args.models:
            for processes, threads in layouts:
                rate = measure(processes, threads, model_name, args.size, args.steps)
                key = f"{processes} process{'es' if processes > 1 else ''} × {threads} thread"
                key += "s" if threads > 1 else ""
                rates.setdefault(model_name, {}).setdefault(key, []).append(rate)
                print(f"round {round_no + 1} {model_name}@{args.size} {key}: {rate:.1f} img/s")

    load = os.getloadavg()
    result = {
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "date": datetime.now().isoformat(timespec="minutes"),
        "batch_per_process": BATCH,
        "input_size": args.size,
        "steps": args.steps,
        "load_average_after": [round(v, 2) for v in load],
        "images_per_s": {m: {k: summarise(v) for k, v in r.items()} for m, r in rates.items()},
    }
    lines = [
        "# One process or several single-thread DDP processes (CPU training)",
        "",
        f"Machine: {result['machine']}, torch {result['torch']}, {result['date']}; "
        f"fp32 + channels_last, batch {BATCH} a process, {args.steps} timed steps after 2 "
        f"warm-up steps, {args.rounds} interleaved rounds (best shown; load average after: "
        f"{', '.join(map(str, result['load_average_after']))}). Command: "
        "`python benchmarks/bench_ddp.py`.",
        "",
        "| model | layout | train img/s (best) | rounds | vs 1 process × 1 thread |",
        "|---|---|---:|---|---:|",
    ]
    for model_name, by_layout in result["images_per_s"].items():
        single = next(iter(by_layout.values()))["best"]
        for key, stats in by_layout.items():
            rounds = ", ".join(f"{v:.0f}" for v in stats["rounds"])
            lines.append(
                f"| {model_name}@{args.size} | {key} | {stats['best']:.1f} | {rounds} | "
                f"{stats['best'] / single:.2f}× |"
            )
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_json(ROOT / "reports/benchmark_ddp.json", result)
        write_text(ROOT / "reports/benchmark_ddp.md", text)


if __name__ == "__main__":
    main()
