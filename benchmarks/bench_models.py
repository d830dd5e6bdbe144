"""Training and inference speed of the registered models on this CPU.

For each model/input size and each execution mode (fp32 or bf16 autocast, NCHW or
channels_last) it measures
- training images/s: forward + total_loss (CE + 0.1·L_att) + backward + Adam step, batch 64;
- inference ms per face at batch 1 and batch 64 (eval mode, torch.inference_mode).
Modes are measured in interleaved rounds and the best round is kept, because the 2-core
machine is shared and a neighbour's burst would otherwise decide the ranking; the load average
at each round is recorded. A one-step torch.profiler table of the fastest and slowest
training mode shows where the time goes.

    python benchmarks/bench_models.py                 # full run, writes reports/benchmark_models.*
    python benchmarks/bench_models.py --only ddamfn@48 baseline@48 --no-infer --rounds 1
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ferlab.io import write_json, write_text
from ferlab.models import build_model
from ferlab.training.losses import total_loss

ROOT = Path(__file__).resolve().parents[1]
BATCH = 64
MODES = ("fp32", "fp32+cl", "bf16", "bf16+cl")


@dataclass(frozen=True)
class Case:
    model: str
    size: int
    width: float = 1.0

    @property
    def key(self) -> str:
        return f"{self.model}@{self.size}" + ("" if self.width == 1.0 else f"/w{self.width:g}")


CASES = (
    Case("ddamfn", 48),
    Case("ddamfn", 48, 0.5),
    Case("baseline", 48),
    Case("ddamfn", 64),
    Case("ddamfn", 112),
)


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def prepare(case: Case, mode: str, batch: int) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(case.model, input_size=case.size, heads=2, width=case.width)
    x = torch.randn(batch, 1, case.size, case.size)
    if mode.endswith("+cl"):
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


def rate(fn: Callable[[], None], seconds: float, warmup: int = 1) -> tuple[float, int]:
    """Seconds per call over at least one call and about `seconds` of wall time."""
    for _ in range(warmup):
        fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return elapsed / calls, calls


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


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """The profiler prints start/stop lines on stderr; keep the progress log readable."""
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def measure(cases: list[Case], args: argparse.Namespace) -> dict[str, dict]:
    """Interleaved rounds over cases × modes; keeps every round and the best one."""
    results: dict[str, dict[str, dict]] = {c.key: {m: {} for m in MODES} for c in cases}
    for rnd in range(args.rounds):
        for case in cases:
            for mode in MODES:
                load = os.getloadavg()[0]
                entry = results[case.key][mode]
                per_step, steps = rate(train_step_fn(case, mode), args.seconds)
                ips = BATCH / per_step
                entry.setdefault("train_img_s_rounds", []).append(round(ips, 1))
                entry.setdefault("load_avg_rounds", []).append(round(load, 2))
                line = f"round {rnd + 1} {case.key:16s} {mode:8s} train {ips:6.1f} img/s"
                if not args.no_infer:
                    t1, _ = rate(infer_fn(case, mode, 1), args.seconds / 2, warmup=3)
                    t64, _ = rate(infer_fn(case, mode, BATCH), args.seconds / 2)
                    entry.setdefault("infer_b1_ms_rounds", []).append(round(t1 * 1e3, 2))
                    entry.setdefault("infer_b64_ms_per_face_rounds", []).append(
                        round(t64 * 1e3 / BATCH, 3)
                    )
                    line += f" | infer b1 {t1 * 1e3:6.2f} ms, b64 {t64 * 1e3 / BATCH:6.3f} ms/face"
                print(f"{line}  ({steps} steps, load {load:.1f})", flush=True)

    summary: dict[str, dict] = {}
    for case in cases:
        modes = results[case.key]
        for entry in modes.values():
            entry["train_img_s"] = max(entry["train_img_s_rounds"])
            if "infer_b1_ms_rounds" in entry:
                entry["infer_b1_ms"] = min(entry["infer_b1_ms_rounds"])
                entry["infer_b64_ms_per_face"] = min(entry["infer_b64_ms_per_face_rounds"])
        model = build_model(case.model, input_size=case.size, width=case.width)
        item = {
            "model": case.model,
            "input_size": case.size,
            "width": case.width,
            "params": sum(p.numel() for p in model.parameters()),
            "fastest_train_mode": max(modes, key=lambda m: modes[m]["train_img_s"]),
            "slowest_train_mode": min(modes, key=lambda m: modes[m]["train_img_s"]),
        }
        if not args.no_infer:
            item["fastest_infer_b1_mode"] = min(modes, key=lambda m: modes[m]["infer_b1_ms"])
        summary[case.key] = {**item, "modes": modes}
    return summary


def markdown(report: dict) -> str:
    machine = report["machine"]
    lines = [
        "# Model speed on this CPU",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} "
        f"({machine['threads']} threads). Batch {BATCH}; training = forward + CE + 0.1·L_att + "
        "backward + Adam step. Best of "
        f"{report['settings']['rounds']} interleaved rounds of ~{report['settings']['seconds']} s "
        "per configuration; the machine is shared, so the load average at each round is in the "
        "JSON. Modes: fp32 or bf16 autocast, NCHW or channels_last (cl).",
        "",
        f"Command: `{report['command']}`",
        "",
        "| model | params | mode | train img/s | infer b1 ms/face | infer b64 ms/face |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for key, item in report["results"].items():
        for mode, entry in item["modes"].items():
            mark = " **fastest**" if mode == item["fastest_train_mode"] else ""
            b1 = entry.get("infer_b1_ms", float("nan"))
            b64 = entry.get("infer_b64_ms_per_face", float("nan"))
            lines.append(
                f"| {key} | {item['params']:,} | {mode}{mark} | {entry['train_img_s']:.1f} "
                f"| {b1:.2f} | {b64:.3f} |"
            )
    lines += ["", "## Fastest training setting", ""]
    for key, item in report["results"].items():
        best = item["fastest_train_mode"]
        lines.append(f"- {key}: **{best}**, {item['modes'][best]['train_img_s']:.1f} img/s")
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
    if report.get("notes"):
        lines += ["## Notes", "", *report["notes"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="case keys, e.g. ddamfn@48 ddamfn@48/w0.5")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--no-infer", action="store_true", help="training speed only")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmark_models")
    args = parser.parse_args()

    cases = [c for c in CASES if not args.only or c.key in args.only]
    if not cases:
        sys.exit(f"--only matched no case; known: {', '.join(c.key for c in CASES)}")
    results = measure(cases, args)
    profiles: dict[str, dict] = {}
    if not args.no_profile:
        for case in cases:
            item = results[case.key]
            for mode in dict.fromkeys((item["fastest_train_mode"], item["slowest_train_mode"])):
                print(f"profiling {case.key} {mode}", flush=True)
                with quiet_stderr():
                    profiles.setdefault(case.key, {})[mode] = profile_step(case, mode)
    report = {
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "settings": {"batch": BATCH, "rounds": args.rounds, "seconds": args.seconds},
        "command": "python " + " ".join(["benchmarks/bench_models.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "results": results,
        "profiles": profiles,
    }
    for key, item in results.items():
        best = item["fastest_train_mode"]
        print(f"{key}: fastest training mode {best}, {item['modes'][best]['train_img_s']} img/s")
    if not args.no_write:
        write_json(args.out.with_suffix(".json"), report)
        write_text(args.out.with_suffix(".md"), markdown(report))
        print(f"wrote {args.out}.json and .md")


if __name__ == "__main__":
    main()
