"""Data validation with great-expectations, from suites kept as readable JSON files.

The suites live in src/ferlab/expectations/*.json. Each names the table it checks in
meta.ferlab.table (`images`: one row per file; `class_counts`: one row per split and class)
and may use {"$PARAMETER": name} for values taken from params.yaml at run time
(`suite_parameters` lists them). The outcome is written as reports/validation.json and a
readable reports/validation.md; the manifest is written only when every expectation holds.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from ferlab.classes import CLASSES
from ferlab.config import flatten
from ferlab.data import RAW_SPLITS, DataError
from ferlab.data.leakage import (
    SCOPE_LABELS,
    SCOPES,
    apply_policy,
    find_duplicates,
    leakage_report,
    plot_examples,
)
from ferlab.data.manifest import build_manifest, write_manifest
from ferlab.io import write_json, write_text

log = logging.getLogger(__name__)

EXPECTATIONS_DIR = Path(__file__).resolve().parents[1] / "expectations"
EXAMPLES = 10  # failing rows listed per expectation


def suite_parameters(vparams: dict[str, Any]) -> dict[str, Any]:
    """Values for {"$PARAMETER": name} in the suites: the validate params, flattened, and more."""
    values = {key.replace(".", "_"): value for key, value in flatten(vparams).items()}
    policy = vparams["leakage"]["policy"]
    values.update(
        classes=list(CLASSES),
        raw_splits=list(RAW_SPLITS),
        image_modes=[vparams["image_mode"]],
        allowed_test_duplicate=[False] if policy == "fail" else [False, True],
    )
    return values


def _parameter_names(obj: Any) -> set[str]:
    if isinstance(obj, dict):
        if set(obj) == {"$PARAMETER"}:
            return {obj["$PARAMETER"]}
        return set().union(*(_parameter_names(v) for v in obj.values()))
    if isinstance(obj, list):
        return set().union(*(_parameter_names(v) for v in obj))
    return set()


def load_suites(folder: str | Path = EXPECTATIONS_DIR) -> list[dict]:
    """Every *.json suite of `folder`, checked for the keys ferlab needs."""
    suites = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            spec = json.loads(path.read_text())
            table = spec["meta"]["ferlab"]["table"]
            expectations = spec["expectations"]
            assert isinstance(expectations, list) and all("type" in e for e in expectations)
        except (ValueError, KeyError, TypeError, AssertionError) as exc:
            raise DataError(
                f"{path}: not a valid expectation suite ({type(exc).__name__}: {exc}); it needs "
                "name, meta.ferlab.table and a list of expectations with type and kwargs"
            ) from None
        spec["file"] = path
        spec["table"] = table
        suites.append(spec)
    if not suites:
        raise DataError(f"{folder}: no expectation suites (*.json)")
    return suites


def class_counts_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per split × class: every known class (0 when missing) plus unknown folders."""
    observed = frame.groupby(["split", "label"]).size()
    splits = list(RAW_SPLITS) + sorted(set(frame["split"]) - set(RAW_SPLITS))
    labels = list(CLASSES) + sorted(set(frame["label"]) - set(CLASSES))
    rows = []
    for split in splits:
        for label in labels:
            count = int(observed.get((split, label), 0))
            if label in CLASSES or count:
                rows.append({"split": split, "label": label, "count": count})
    return pd.DataFrame(rows, columns=["split", "label", "count"])


def run_suites(
    tables: dict[str, pd.DataFrame], suites: list[dict], parameters: dict[str, Any]
) -> list[dict]:
    """Run every suite on its table in an ephemeral great-expectations context.

    Returns one plain dict per expectation: type, kwargs as run, notes, fix, success and
    what was observed (unexpected values, rows that failed, or the exception).
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    # This one GX module forces its logger to INFO and announces a temporary docs folder.
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("ferlab")
    out: list[dict] = []
    for spec in suites:
        name, table = spec["name"], spec["table"]
        if table not in tables:
            raise DataError(
                f"{spec['file']}: meta.ferlab.table is {table!r}; known tables: {', '.join(tables)}"
            )
        unknown = _parameter_names(spec["expectations"]) - set(parameters)
        if unknown:
            raise DataError(
                f"{spec['file']}: unknown $PARAMETER {', '.join(sorted(unknown))}; "
                f"available: {', '.join(sorted(parameters))}"
            )
        try:
            expectations = [
                ExpectationConfiguration(
                    type=e["type"],
                    kwargs=e.get("kwargs", {}),
                    meta=e.get("meta"),
                    notes=e.get("notes"),
                ).to_domain_obj()
                for e in spec["expectations"]
            ]
        except Exception as exc:  # GX raises many types for a bad type name or kwargs
            raise DataError(f"{spec['file']}: invalid expectation ({exc})") from None
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
        batch = source.add_dataframe_asset(f"{name}_table").add_batch_definition_whole_dataframe(
            "all"
        )
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{name}_run", data=batch, suite=suite)
        )
        result = definition.run(
            batch_parameters={"dataframe": tables[table]},
            expectation_parameters=parameters,
            result_format={
                "result_format": "SUMMARY",
                "partial_unexpected_count": EXAMPLES,
                "unexpected_index_column_names": spec["meta"]["ferlab"].get("identify_rows_by", []),
            },
        )
        out.extend(_describe(spec, res.to_json_dict()) for res in result.results)
    return out


def _describe(spec: dict, res: dict) -> dict:
    config = res["expectation_config"]
    kwargs = {k: v for k, v in config["kwargs"].items() if k != "batch_id"}
    condition = kwargs.pop("row_condition", None)
    kwargs.pop("condition_parser", None)
    if isinstance(condition, dict):
        condition = condition.get("pass_through_filter", str(condition))
    result = res.get("result") or {}
    exception = res.get("exception_info") or {}
    entry = {
        "suite": spec["name"],
        "file": Path(spec["file"]).name,
        "expectation": config["type"],
        "column": kwargs.pop("column", None),
        "condition": condition,
        "expected": kwargs,
        "notes": config.get("notes") or "",
        "fix": (config.get("meta") or {}).get("fix", ""),
        "success": bool(res["success"]),
    }
    for key in ("observed_value", "unexpected_count", "element_count", "missing_count"):
        if result.get(key) is not None:
            entry[key] = result[key]
    if result.get("partial_missing_list"):
        entry["missing_values"] = sorted(result["partial_missing_list"], key=str)
    if result.get("partial_unexpected_list"):
        entry["unexpected_values"] = result["partial_unexpected_list"][:EXAMPLES]
    if result.get("partial_unexpected_index_list"):
        entry["failing_rows"] = result["partial_unexpected_index_list"][:EXAMPLES]
    if exception.get("raised_exception"):
        entry["exception"] = exception.get("exception_message")
    return entry


def counts_by_split(frame: pd.DataFrame) -> dict[str, dict[str, int]]:
    table = class_counts_table(frame)
    return {
        split: {row.label: int(row.count) for row in rows.itertuples()}
        for split, rows in table.groupby("split", sort=False)
    }


def build_report(
    frame: pd.DataFrame, results: list[dict], leakage: dict, parameters: dict, suites: list[dict]
) -> dict:
    """The content of reports/validation.json."""
    failed = [r for r in results if not r["success"]]
    counts = counts_by_split(frame)
    return {
        "success": not failed,
        "images": len(frame),
        "totals": {split: sum(c.values()) for split, c in counts.items()},
        "counts": counts,
        "expectations": {
            "evaluated": len(results),
            "successful": len(results) - len(failed),
            "failed": len(failed),
        },
        "failed": failed,
        "leakage": {
            "policy": leakage["policy"],
            "phash_max_distance": leakage["phash_max_distance"],
            **{
                f"{kind}_{scope}_{what}": leakage[kind][scope][what]
                for kind in ("exact", "near")
                for scope in SCOPES
                for what in ("pairs", "label_conflicts")
            },
            "train_images_duplicating_test": leakage["train_images_duplicating_test"],
            "dropped_train_images": leakage["dropped_train_images"],
        },
        "parameters": parameters,
        "suites": [f"src/ferlab/expectations/{Path(s['file']).name}" for s in suites],
    }


def _fmt(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 300 else text[:297] + "..."


def render_markdown(report: dict) -> str:
    """reports/validation.md: what passed, what failed and why, and what to do about it."""
    status = "PASSED" if report["success"] else "FAILED"
    exp = report["expectations"]
    lines = [
        f"# Data validation: {status}",
        "",
        f"{report['images']} images under data/raw checked against "
        f"{', '.join(f'`{s}`' for s in report['suites'])}: "
        f"{exp['successful']} of {exp['evaluated']} expectations met.",
        "",
    ]
    if report["failed"]:
        lines += [
            "The manifest (data/manifest.csv) was not written; later stages cannot run until "
            "the problems below are fixed.",
            "",
            "## Failed expectations",
            "",
        ]
        for n, item in enumerate(report["failed"], 1):
            where = f" on `{item['column']}`" if item.get("column") else ""
            cond = f" (rows where {item['condition']})" if item.get("condition") else ""
            lines += [
                f"### {n}. {item['notes'] or item['expectation']}",
                "",
                f"- check: `{item['expectation']}`{where}{cond}, {item['file']}",
            ]
            if item["expected"]:
                lines.append(f"- expected: {_fmt(item['expected'])}")
            if "observed_value" in item:
                lines.append(f"- observed: {_fmt(item['observed_value'])}")
            if item.get("unexpected_count"):
                lines.append(f"- failing rows: {item['unexpected_count']}")
            if item.get("missing_values"):
                lines.append(f"- missing: {_fmt(item['missing_values'])}")
            if item.get("unexpected_values"):
                lines.append(f"- unexpected values: {_fmt(item['unexpected_values'])}")
            for row in item.get("failing_rows", []):
                lines.append(f"  - {_fmt(row)}")
            if item.get("exception"):
                lines.append(f"- error: {item['exception']}")
            if item["fix"]:
                lines.append(f"- fix: {item['fix']}")
            lines.append("")
    params = report["parameters"]
    counts = report["counts"]
    splits = list(counts)
    lines += ["## Images per class", "", "| class | " + " | ".join(splits) + " |"]
    lines.append("|---|" + "---:|" * len(splits))
    labels = list(dict.fromkeys(label for c in counts.values() for label in c))
    for label in labels:
        lines.append(
            f"| {label} | " + " | ".join(str(counts[s].get(label, 0)) for s in splits) + " |"
        )
    lines.append("| **total** | " + " | ".join(str(report["totals"][s]) for s in splits) + " |")
    bounds = [
        f"{s} {params[f'min_per_class_{s}']}–{params[f'max_per_class_{s}']}"
        for s in splits
        if f"min_per_class_{s}" in params and f"max_per_class_{s}" in params
    ]
    lines += [
        "",
        f"Bounds per class (validate.min_per_class / max_per_class): {', '.join(bounds)}. "
        f"Expected images: {params['image_size']}×{params['image_size']}, mode "
        f"{params['image_mode']}.",
        "",
    ]
    leak = report["leakage"]
    lines += [
        "## Duplicates",
        "",
        f"Exact = same sha256; near = different files whose pHash differs in at most "
        f"{leak['phash_max_distance']} of 64 bits. Policy `{leak['policy']}`: "
        f"{leak['train_images_duplicating_test']} train images copy a test image, "
        f"{leak['dropped_train_images']} of them are dropped from training.",
        "",
        "| pairs | " + " | ".join(SCOPE_LABELS[s] for s in SCOPES) + " |",
        "|---|" + "---:|" * len(SCOPES),
    ]
    for kind in ("exact", "near"):
        lines.append(
            f"| {kind} | " + " | ".join(str(leak[f"{kind}_{s}_pairs"]) for s in SCOPES) + " |"
        )
        lines.append(
            f"| {kind}, labels differ | "
            + " | ".join(str(leak[f"{kind}_{s}_label_conflicts"]) for s in SCOPES)
            + " |"
        )
    lines += [
        "",
        "Details in reports/leakage.json; example pairs in "
        "[figures/leakage_examples.png](figures/leakage_examples.png).",
        "",
        "Edit the checks in src/ferlab/expectations/*.json and their values in the `validate` "
        "group of params.yaml.",
        "",
    ]
    return "\n".join(lines)


def failure_message(report: dict, md_path: str | Path) -> str:
    """One message for the console: what failed, a few of the rows, where the report is."""
    parts = []
    for item in report["failed"]:
        text = item["notes"] or item["expectation"]
        rows = [
            row["path"] if "path" in row else " ".join(f"{k}={v}" for k, v in row.items())
            for row in item.get("failing_rows", [])[:3]
        ]
        if item.get("missing_values"):
            rows.append("missing " + ", ".join(map(str, item["missing_values"][:3])))
        if item.get("exception"):
            rows.append(str(item["exception"])[:200])
        parts.append(f"{text} [{'; '.join(rows)}]" if rows else text)
    return (
        f"data validation failed ({len(report['failed'])} of {report['expectations']['evaluated']} "
        f"expectations): " + " | ".join(parts) + f"; see {md_path}"
    )


def validate_raw(
    vparams: dict[str, Any],
    raw: str | Path = "data/raw",
    reports: str | Path = "reports",
    manifest_path: str | Path = "data/manifest.csv",
    base: str | Path = ".",
    suites_dir: str | Path = EXPECTATIONS_DIR,
) -> dict:
    """Build the manifest, find duplicates, run the suites and write every report.

    The manifest is written only on success; on failure any older manifest is removed, so no
    later stage reads a description of data that did not pass.
    """
    reports = Path(reports)
    suites = load_suites(suites_dir)
    parameters = suite_parameters(vparams)
    policy = vparams["leakage"]["policy"]
    max_distance = int(vparams["leakage"]["phash_max_distance"])

    frame = build_manifest(raw, base)
    log.info("looking for exact and near duplicates among %d images", len(frame))
    duplicates = find_duplicates(frame, max_distance)
    frame = apply_policy(frame, duplicates, policy)
    leakage = leakage_report(frame, duplicates, max_distance, policy)

    log.info("running %d expectation suites", len(suites))
    tables = {"images": frame, "class_counts": class_counts_table(frame)}
    results = run_suites(tables, suites, parameters)
    report = build_report(frame, results, leakage, parameters, suites)

    write_json(reports / "leakage.json", leakage)
    plot_examples(frame, duplicates, reports / "figures" / "leakage_examples.png", base)
    write_json(reports / "validation.json", report)
    write_text(reports / "validation.md", render_markdown(report))
    if report["success"]:
        write_manifest(frame, manifest_path)
    else:
        Path(manifest_path).unlink(missing_ok=True)
    return report


def report_metrics(report: dict) -> dict[str, float]:
    """Flat numbers for MLflow: success, totals, per-class counts, duplicate counts."""
    metrics: dict[str, float] = {
        "validation_success": float(report["success"]),
        "images": report["images"],
        "expectations_failed": report["expectations"]["failed"],
    }
    for split, counts in report["counts"].items():
        metrics[f"images_{split}"] = report["totals"][split]
        for label, n in counts.items():
            metrics[f"count_{split}_{label}"] = n
    for key, value in report["leakage"].items():
        if isinstance(value, int) and not isinstance(value, bool):
            metrics[f"leakage_{key}"] = value
    return metrics
