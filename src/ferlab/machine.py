"""The machine a benchmark or an ablation ran on, named the same way in every report."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def logical_cpus() -> int:
    """The logical CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# Vector and matrix instructions that change how fast training and inference run, best first: the
# `flags` (x86) or `Features` (ARM) words of /proc/cpuinfo that mark them. Two CPUs with the same
# model name (a cloud VM's "AMD EPYC") can differ here by several-fold in bf16 throughput.
VECTOR_FEATURES = (
    ("amx_bf16", "AMX bf16"),
    ("avx512_bf16", "AVX-512, native bf16"),
    ("avx512f", "AVX-512"),
    ("avx2", "AVX2"),
    ("asimd", "NEON"),
    ("neon", "NEON"),
)


def cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU's model name, its best vector instructions and the logical CPUs this process may
    use, from /proc/cpuinfo (`model name` on x86; ARM boards such as the Raspberry Pi give
    `Model` or `Hardware`), e.g. "AMD EPYC (AVX-512, native bf16; 2 logical CPUs)"."""
    fields: dict[str, str] = {}
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    name = next(
        (fields[k] for k in ("model name", "model", "hardware") if fields.get(k, "").strip()),
        "unknown CPU",
    )
    if name.isdigit():  # x86's `model` is a number; fall back to the platform's name
        name = platform.processor() or platform.machine()
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    vector = next((label for flag, label in VECTOR_FEATURES if flag in flags), None)
    prefix = f"{vector}; " if vector else ""
    return f"{name} ({prefix}{logical_cpus()} logical CPUs)"


def write_benchmark(out: str | Path, report: dict, lines: list[str]) -> None:
    """A benchmark's report as `<out>.json` (the figures, plus the CPU and the load average
    after the run) and `<out>.md` (`lines`, a title and a table), and the table on stdout."""
    from ferlab.io import write_json, write_text

    out = Path(out)
    write_json(
        out.with_suffix(".json"),
        {"cpu": cpu_name(), **report, "load_average_after": load_average()},
    )
    text = "\n".join(lines) + "\n"
    write_text(out.with_suffix(".md"), text)
    print(text, end="")


def load_average() -> list[str]:
    """The 1-, 5- and 15-minute load averages, as /proc/loadavg gives them ([] off Linux)."""
    try:
        return Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        return []
