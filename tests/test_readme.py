"""The README's headline numbers are the committed reports' (generated, never hand-copied)."""

from __future__ import annotations

from pathlib import Path

from ferlab.evaluation.report import summary_table

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- summary:start -->", "<!-- summary:end -->"


def readme_block() -> list[str]:
    text = (ROOT / "README.md").read_text()
    assert START in text and END in text, "README.md lost its generated summary block"
    return text.split(START, 1)[1].split(END, 1)[0].strip().splitlines()


def test_readme_summary_is_the_table_the_reports_give() -> None:
    expected = summary_table(ROOT / "reports")
    assert len(expected) > 2, "reports/metrics.json has no evaluated model"
    assert readme_block() == expected, (
        "README.md's summary disagrees with reports/: paste "
        "`python -c 'from ferlab.evaluation.report import summary_table as t; "
        'print(*t("reports"), sep=chr(10))\'` between the summary markers'
    )
