"""Training and inference speed of the registered models on this CPU.

For each model/input size and each execution mode (fp32 or bf16 autocast, NCHW or
channels_last "cl", 1 or 2 threads) it measures
- training: forward + total_loss (CE + 0.1·L_att) + backward + Adam step, batch 64;
- inference ms per face at batch 1 and batch 64 (eval mode, torch.inference_mode).

The 2-core machine is shared, so modes are measured in interleaved rounds and the best wall
images/s of the rounds ranks them; each measurement also records this process's CPU time
("images per CPU-second", which moves less when a neighbour takes a core) and the load.
A one-step torch.profiler table of the fastest and slowest training mode (48×48 cases) shows
where the time goes.

    python benchmarks/bench_models.py            # all cases, writes reports/benchmark_models.*
    python benchmarks/bench_models.py --only ddamfn@48 baseline@48 --no-infer --no-write
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.queues import Queue
from pathlib import Path
from queue import Empty

import torch
from torch.utils.flop_counter import FlopCounterMode

from ferlab.io import write_json, write_text
from ferlab.machine import cpu_name
from ferlab.models import build_model
from ferlab.training.losses import total_loss

ROOT = Path(__file__).resolve().parents[1]
BATCH = 64
BASE_MODES = ("fp32", "fp32+cl", "bf16", "bf16+cl")


def modes_for(threads: list[int]) -> list[str]:
    """Mode names such as 'bf16+cl/1t': precision, memory format, thread count."""
    return [f"{m}/{t}t" for t in threads for m in BASE_MODES]


def uses_channels_last(mode: str) -> bool:
    return "+cl" in mode


def threads_of(mode: str) -> int:
    return int(mode.rsplit("/", 1)[1].rstrip("t"))


@dataclass(frozen=True)
class Case:
    model: str
    size: int
    width: float = 1.0
    activation: str = "prelu"

    @property
    def key(self) -> str:
        key = f"{self.model}@{self.size}"
        if self.width != 1.0:
            key += f"/w{self.width:g}"
        if self.activation != "prelu":
            key += f"/{self.activation}"
        return key

    def build(self) -> torch.nn.Module:
        torch.manual_seed(0)
        return build_model(
            self.model, input_size=self.size, heads=2, width=self.width, activation=self.activation
        )


CASES = (
    Case("ddamfn", 48),
    Case("ddamfn", 48, 0.5),
    Case("baseline", 48),
    Case("ddamfn", 48, activation="relu"),
    Case("baseline", 48, activation="relu"),
    Case("ddamfn", 64),
    Case("ddamfn", 112),
)


def macs_per_face(case: Case) -> float:
    """Multiply-adds of one forward pass (convolutions and matrix products)."""
    model = case.build().eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 1, case.size, case.size))
    return counter.get_total_flops() / 2


def prepare(case: Case, mode: str, batch: int) -> tuple[torch.nn.Module, torch.Tensor]:
    model = case.build()
    x = torch.randn(batch, 1, case.size, case.size)
    torch.set_num_threads(threads_of(mode))
    if uses_channels_last(mode):
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return model, x


def autocast(mode: str) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode.startswith("bf16"))


def train_step_fn(case: Case, mode: str) -> Callable[[], None]:
    model, x = prepare(case, mode, BATCH)
    model.train()
    target = torch.arange(BATCH) % 8
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    has_heads = hasattr(model, "forward_with_heads")

    def step() -> None:
        with autocast(mode):
            if has_heads:
                logits, heads = model.forward_with_heads(x)
            else:
                logits, heads = model(x), None
            loss = total_loss(logits, target, heads, 0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def infer_fn(case: Case, mode: str, batch: int) -> Callable[[], None]:
    model, x = prepare(case, mode, batch)
    model.eval()

    def run() -> None:
        with torch.inference_mode(), autocast(mode):
            model(x)

    return run


def rate(fn: Callable[[], None], seconds: float, warmup: int = 1) -> tuple[float, float, int]:
    """(wall s, CPU s) per call, over at least one call and about `seconds` of wall time."""
    for _ in range(warmup):
        fn()
    calls, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return elapsed / calls, (time.process_time() - cpu_start) / calls, calls


def profile_step(case: Case, mode: str, rows: int = 8) -> list[dict]:
    """Top operators (self CPU time) of one training step."""
    from torch.profiler import ProfilerActivity, profile

    step = train_step_fn(case, mode)
    step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    events = sorted(
        prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total
    )
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [
        {
            "op": e.key,
            "shapes": str(e.input_shapes)[:90],
            "calls": e.count,
            "self_ms": round(e.self_cpu_time_total / 1e3, 1),
            "share": round(e.self_cpu_time_total / total, 3),
        }
        for e in events[:rows]
    ]


def profile_isolated(case: Case, mode: str) -> list[dict]:
    """`profile_step` in a fresh process; a crash gives one row saying so."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        try:
            return pool.submit(profile_step, case, mode).result()
        except BrokenProcessPool:
            return [
                {
                    "op": "profiling failed (worker died)",
                    "shapes": "",
                    "calls": 0,
                    "self_ms": 0,
                    "share": 0.0,
                }
            ]


def measure_once(case: Case, mode: str, seconds: float, infer: bool) -> tuple[dict, str]:
    """One round of one case and mode: (measurements, progress line)."""
    load = os.getloadavg()[0]
    wall, cpu, steps = rate(train_step_fn(case, mode), seconds)
    got = {"train_img_s": BATCH / wall, "train_img_per_cpu_s": BATCH / cpu, "load_avg": load}
    line = f"{case.key:18s} {mode:11s} train {BATCH / wall:6.1f} img/s ({BATCH / cpu:6.1f}/CPU-s)"
    if infer:
        t1, _, _ = rate(infer_fn(case, mode, 1), seconds / 2, warmup=3)
        t64, _, _ = rate(infer_fn(case, mode, BATCH), seconds / 2)
        got |= {"infer_b1_ms": t1 * 1e3, "infer_b64_ms_per_face": t64 * 1e3 / BATCH}
        line += f" | infer b1 {t1 * 1e3:6.2f} ms, b64 {t64 * 1e3 / BATCH:6.3f} ms/face"
    return got, f"{line}  ({steps} steps, load {load:.1f})"


def worker(case: Case, modes: list[str], seconds: float, infer: bool, queue: Queue) -> None:
    """All modes of one case in a fresh process: memory is returned between cases (ddamfn
    at 112 peaks at ~7 GB), and a crash or an OOM kill costs one case, not the run."""
    for mode in modes:
        got, line = measure_once(case, mode, seconds, infer)
        got["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        queue.put((mode, got, line))


def measure(cases: list[Case], args: argparse.Namespace) -> dict[str, dict]:
    """Interleaved rounds over cases × modes; keeps every round, summarises the best."""
    modes = modes_for(args.threads)
    results: dict[str, dict[str, dict]] = {c.key: {m: {} for m in modes} for c in cases}
    peak_rss: dict[str, float] = {}
    ctx = multiprocessing.get_context("spawn")
    for rnd in range(args.rounds):
        for case in cases:
            if case.size > 64 and rnd >= args.large_rounds:
                continue  # a 112 step takes ~5× a 48 one; fewer rounds keep the run short
            queue = ctx.Queue()
            proc = ctx.Process(
                target=worker, args=(case, modes, args.seconds, not args.no_infer, queue)
            )
            proc.start()
            done = 0
            while done < len(modes):
                try:
                    mode, got, line = queue.get(timeout=5)
                except Empty:
                    if proc.is_alive():
                        continue
                    break
                done += 1
                entry = results[case.key][mode]
                for key, value in got.items():
                    entry.setdefault(f"{key}_rounds", []).append(round(value, 3))
                peak_rss[case.key] = max(peak_rss.get(case.key, 0.0), got["peak_rss_gb"])
                print(f"round {rnd + 1}/{args.rounds} {line}", flush=True)
            proc.join()
            for mode in modes[done:]:
                results[case.key][mode].setdefault("failed", []).append(
                    f"round {rnd + 1}: worker exit code {proc.exitcode}"
                )
                print(f"round {rnd + 1} {case.key} {mode}: FAILED (exit {proc.exitcode})")

    summary: dict[str, dict] = {}
    for case in cases:
        modes_of_case = results[case.key]
        for entry in modes_of_case.values():
            if "train_img_s_rounds" not in entry:
                continue
            entry["train_img_s"] = round(max(entry["train_img_s_rounds"]), 1)
            entry["train_img_per_cpu_s"] = round(
                statistics.median(entry["train_img_per_cpu_s_rounds"]), 1
            )
            if "infer_b1_ms_rounds" in entry:
                entry["infer_b1_ms"] = round(min(entry["infer_b1_ms_rounds"]), 2)
                entry["infer_b64_ms_per_face"] = round(
                    min(entry["infer_b64_ms_per_face_rounds"]), 3
                )
        measured = [m for m, e in modes_of_case.items() if "train_img_s" in e]

        def wall_rate(mode: str, modes: dict = modes_of_case) -> float:
            return modes[mode]["train_img_s"]

        item = {
            "model": case.model,
            "input_size": case.size,
            "width": case.width,
            "activation": case.activation,
            "params": sum(p.numel() for p in case.build().parameters()),
            "mmacs_per_face": round(macs_per_face(case) / 1e6, 1),
            "peak_rss_gb": round(peak_rss.get(case.key, float("nan")), 2),
            "fastest_train_mode": max(measured, key=wall_rate) if measured else None,
            "slowest_train_mode": min(measured, key=wall_rate) if measured else None,
        }
        summary[case.key] = {**item, "modes": modes_of_case}
    return summary


def markdown(report: dict) -> str:
    machine, settings = report["machine"], report["settings"]
    lines = [
        "# Model speed on this CPU",
        "",
        f"Machine: **{machine['cpu']}**, {machine['cores']} cores, torch {machine['torch']}, "
        f"{report['date']}. Batch {BATCH}; a training step is forward + CE + 0.1·L_att + "
        "backward + Adam. Modes: fp32 or bf16 autocast, NCHW or channels_last (cl), "
        "torch.set_num_threads 1 or 2 (1t/2t). "
        f"{settings['rounds']} interleaved rounds ({settings['large_rounds']} for inputs > 64) "
        f"of ~{settings['seconds']} s per measurement (at least one timed step after one "
        "warm-up step). The machine was shared with other jobs (load average "
        f"{report['load_avg_range'][0]:.1f}–{report['load_avg_range'][1]:.1f} on 2 cores): "
        "*train img/s* is the best round's wall-clock rate and ranks the modes; an idle machine "
        "gives more. *img/CPU-s* is images per CPU-second of this process (median of rounds).",
        "",
        f"Command: `{report['command']}`",
        "",
        "| case | params | MMACs/face | mode | train img/s (rounds) | train img/CPU-s "
        "| infer b1 ms/face | infer b64 ms/face |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for key, item in report["results"].items():
        for mode, entry in item["modes"].items():
            if "train_img_s" not in entry:
                lines.append(f"| {key} | | | {mode} | failed: {'; '.join(entry['failed'])} | | | |")
                continue
            mark = " **fastest**" if mode == item["fastest_train_mode"] else ""
            b1 = entry.get("infer_b1_ms", float("nan"))
            b64 = entry.get("infer_b64_ms_per_face", float("nan"))
            lines.append(
                f"| {key} | {item['params']:,} | {item['mmacs_per_face']} | {mode}{mark} "
                f"| {entry['train_img_s']:.1f} "
                f"({', '.join(f'{r:.0f}' for r in entry['train_img_s_rounds'])}) "
                f"| {entry['train_img_per_cpu_s']:.1f} "
                f"| {b1:.2f} | {b64:.3f} |"
            )
    lines += ["", "## Fastest training setting per case", ""]
    for key, item in report["results"].items():
        if item["fastest_train_mode"] is None:
            continue
        best = item["modes"][item["fastest_train_mode"]]
        lines.append(
            f"- {key}: **{item['fastest_train_mode']}**, {best['train_img_s']:.1f} img/s "
            f"({best['train_img_per_cpu_s']:.1f} img/CPU-s); peak memory of the benchmark "
            f"process {item['peak_rss_gb']:.1f} GB"
        )
    if report.get("profiles"):
        lines += ["", "## Where a training step spends its time (torch.profiler, one step)", ""]
        for key, by_mode in report["profiles"].items():
            for mode, rows in by_mode.items():
                lines += [
                    f"{key}, {mode}:",
                    "",
                    "| op | input shapes | calls | self ms | share |",
                    "|---|---|---:|---:|---:|",
                ]
                for r in rows:
                    lines.append(
                        f"| {r['op']} | `{r['shapes']}` | {r['calls']} | {r['self_ms']} "
                        f"| {r['share']:.0%} |"
                    )
                lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="case keys, e.g. ddamfn@48 ddamfn@48/w0.5")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--large-rounds", type=int, default=1, help="rounds for inputs > 64")
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-infer", action="store_true", help="training speed only")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmark_models")
    args = parser.parse_args()

    cases = [c for c in CASES if not args.only or c.key in args.only]
    if not cases:
        sys.exit(f"--only matched no case; known: {', '.join(c.key for c in CASES)}")
    results = measure(cases, args)
    report = make_report(results, args)
    for key, item in results.items():
        best = item["modes"][item["fastest_train_mode"]]
        print(
            f"{key}: fastest training mode {item['fastest_train_mode']} "
            f"({best['train_img_s']} img/s, {best['train_img_per_cpu_s']} img/CPU-s)"
        )
    if not args.no_write:  # written before profiling, so a failure there loses nothing
        write_report(report, args.out)
    if not args.no_profile:
        for case in (c for c in cases if c.size == 48):  # larger inputs: same ops, longer
            item = results[case.key]
            chosen = (item["fastest_train_mode"], item["slowest_train_mode"])
            for mode in dict.fromkeys(m for m in chosen if m):
                print(f"profiling {case.key} {mode}", flush=True)
                report["profiles"].setdefault(case.key, {})[mode] = profile_isolated(case, mode)
        if not args.no_write:
            write_report(report, args.out)


def write_report(report: dict, out: Path) -> None:
    write_json(out.with_suffix(".json"), report)
    write_text(out.with_suffix(".md"), markdown(report))
    print(f"wrote {out.with_suffix('.json')} and .md", flush=True)


def make_report(results: dict[str, dict], args: argparse.Namespace) -> dict:
    loads = [
        load
        for item in results.values()
        for entry in item["modes"].values()
        for load in entry["load_avg_rounds"]
    ]
    report = {
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
        },
        "settings": {
            "batch": BATCH,
            "rounds": args.rounds,
            "large_rounds": args.large_rounds,
            "seconds": args.seconds,
            "threads": args.threads,
        },
        "command": " ".join(["python benchmarks/bench_models.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_avg_range": [min(loads), max(loads)],
        "results": results,
        "profiles": {},
    }
    return report


if __name__ == "__main__":
    main()
