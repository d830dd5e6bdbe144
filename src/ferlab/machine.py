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


def cpu_name() -> str:
    """The CPU's model name and the logical CPUs this process may use, from /proc/cpuinfo
    (`model name` on x86; ARM boards such as the Raspberry Pi give `Model` or `Hardware`)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    name = next(
        (fields[k] for k in ("model name", "model", "hardware") if fields.get(k, "").strip()),
        "unknown CPU",
    )
    if name.isdigit():  # x86's `model` is a number; fall back to the platform's name
        name = platform.processor() or platform.machine()
    return f"{name} ({logical_cpus()} logical CPUs)"
