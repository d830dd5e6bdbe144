"""Reports name the machine: two CPUs with one model name must not read the same when their
vector units differ (a cloud VM's "AMD EPYC" with or without AVX-512 and native bf16)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferlab.machine import cpu_name, logical_cpus, write_benchmark

EPYC_ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma avx512f avx512dq avx512bw avx512_bf16
"""
EPYC_ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma
"""
RASPBERRY_PI_4 = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41

Hardware\t: BCM2835
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""


def test_same_model_name_different_vector_units_are_told_apart() -> None:
    cpus = logical_cpus()
    assert cpu_name(EPYC_ZEN4) == f"AMD EPYC (AVX-512, native bf16; {cpus} logical CPUs)"
    assert cpu_name(EPYC_ZEN3) == f"AMD EPYC (AVX2; {cpus} logical CPUs)"


def test_arm_board_is_named_by_its_model_and_neon() -> None:
    assert cpu_name(RASPBERRY_PI_4) == (
        f"Raspberry Pi 4 Model B Rev 1.4 (NEON; {logical_cpus()} logical CPUs)"
    )


def test_no_cpuinfo_still_gives_a_name() -> None:
    assert cpu_name("").endswith(f"({logical_cpus()} logical CPUs)")


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="needs Linux /proc/cpuinfo")
def test_this_machine_is_named_from_its_own_cpuinfo() -> None:
    text = Path("/proc/cpuinfo").read_text()
    assert cpu_name() == cpu_name(text)
    if "avx512_bf16" in text.split():
        assert "native bf16" in cpu_name()


def test_a_benchmark_report_names_the_machine_and_its_load(tmp_path: Path, capsys) -> None:
    import json

    lines = ["# A benchmark", "", "| case | ms |", "|---|---:|", "| a | 1.000 |"]
    write_benchmark(tmp_path / "bench", {"rounds": 3, "rows": [{"case": "a", "ms": 1.0}]}, lines)
    figures = json.loads((tmp_path / "bench.json").read_text())
    assert figures["cpu"] == cpu_name() and figures["rows"] == [{"case": "a", "ms": 1.0}]
    assert len(figures["load_average_after"]) == 3  # Linux: the 1, 5 and 15-minute figures
    assert (tmp_path / "bench.md").read_text() == "\n".join(lines) + "\n"
    assert "| a | 1.000 |" in capsys.readouterr().out
