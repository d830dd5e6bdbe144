"""reports/study.md, generated from the other stages' reports.

Every section is drawn from one or more report files; where a file is missing the section says
which stage writes it, so a partial pipeline still renders a readable report.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ferlab.classes import CLASSES

# The seed study's reference numbers (FER2013+ test accuracy).
SEED_ACCURACY = {"original": 0.8108, "retinaface": 0.8262}

Section = Callable[[Path], list[str]]


def _load(reports: Path, name: str) -> Any | None:
    path = reports / name
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path}: not valid JSON ({exc}); rerun the stage that writes it"
        ) from None


def _missing(name: str, stage: str) -> list[str]:
    return [f"_Not available: `reports/{name}` is missing; run `dvc repro {stage}`._", ""]


def _figure(reports: Path, rel: str, alt: str) -> list[str]:
    if (reports / rel).is_file():
        return [f"![{alt}]({rel})", ""]
    return [f"_Figure `reports/{rel}` not found._", ""]


def _pct(value: Any) -> str:
    return f"{100 * value:.2f}" if isinstance(value, int | float) else "–"


def _num(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Scalars of nested dicts under dotted keys; lists are summarised by their length."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
    elif isinstance(data, list):
        if all(not isinstance(v, dict | list) for v in data) and len(data) <= 8:
            out[prefix[:-1]] = ", ".join(_num(v) for v in data)
        else:
            out[prefix[:-1]] = f"{len(data)} entries"
    else:
        out[prefix[:-1]] = data
    return out


def _count_grid(data: dict[str, Any]) -> list[str] | None:
    """A dict of dicts of numbers (e.g. split -> class -> count) as one table; else None."""
    if not data or not all(isinstance(v, dict) for v in data.values()):
        return None
    columns: list[str] = []
    for inner in data.values():
        if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in inner.values()):
            return None
        columns += [c for c in inner if c not in columns]
    # Canonical class order first, other columns (e.g. total) after.
    columns = [c for c in CLASSES if c in columns] + [c for c in columns if c not in CLASSES]
    lines = ["| | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for key, inner in data.items():
        lines.append(f"| {key} | " + " | ".join(_num(inner.get(c, "–")) for c in columns) + " |")
    return [*lines, ""]


def _generic(data: Any, max_rows: int = 40) -> list[str]:
    """Any JSON report: count grids where it has them, otherwise a key/value table."""
    if isinstance(data, dict):
        grid = _count_grid(data)
        if grid:
            return grid
    flat = _flatten(data)
    lines = ["| key | value |", "|---|---:|"]
    for key, value in list(flat.items())[:max_rows]:
        lines.append(f"| {key} | {_num(value)} |")
    if len(flat) > max_rows:
        lines.append(f"| … | {len(flat) - max_rows} more in the JSON file |")
    return [*lines, ""]


def _demote(body: list[str]) -> list[str]:
    """A stand-alone page as a subsection: its title dropped, `##` headings made `###`."""
    body = body[1:]
    while body and not body[0].strip():
        body = body[1:]
    return [("#" + line if line.startswith("## ") else line) for line in body]


def _class_counts(counts: dict[str, dict[str, int]], totals: dict[str, int] | None) -> list[str]:
    """split -> class -> count as a table (classes in canonical order) with a total column."""
    rows = {
        split: {**per_class, "total": (totals or {}).get(split, sum(per_class.values()))}
        for split, per_class in counts.items()
    }
    return _count_grid(rows) or _generic(counts)


def dataset_section(reports: Path) -> list[str]:
    lines = ["## Dataset", ""]
    validation = _load(reports, "validation.json")
    split = _load(reports, "split_counts.json")
    if validation is None:
        lines += _missing("validation.json", "validate")
    elif isinstance(validation.get("counts"), dict):
        checks = validation.get("expectations") or {}
        failed = validation.get("failed") or []
        lines += [
            f"Validation {'passed' if validation.get('success') else '**failed**'}: "
            f"{_num(validation.get('images', '?'))} images, "
            f"{_num(checks.get('successful', '?'))} of {_num(checks.get('evaluated', '?'))} "
            "data expectations met"
            + (f"; failed: {', '.join(map(str, failed))}" if failed else "")
            + ". Counts as downloaded:",
            "",
            *_class_counts(validation["counts"], validation.get("totals")),
        ]
    else:
        lines += ["Validation (`reports/validation.json`):", "", *_generic(validation)]
    if split is None:
        lines += _missing("split_counts.json", "split")
    elif isinstance(split.get("counts"), dict):
        lines += [
            f"Split ({split.get('mode', '?')}, seed {split.get('seed', '?')}, validation "
            f"fraction {split.get('val_fraction', '?')} carved from train; "
            f"{_num(split.get('dropped_duplicates', 0))} duplicates dropped):",
            "",
            *_class_counts(split["counts"], split.get("totals")),
        ]
    else:
        lines += ["Split counts (`reports/split_counts.json`):", "", *_generic(split)]
    return lines


def leakage_section(reports: Path) -> list[str]:
    lines = ["## Leakage (duplicates within and across splits)", ""]
    leakage = _load(reports, "leakage.json")
    if leakage is None:
        return lines + _missing("leakage.json", "validate")
    kinds = [k for k in ("exact", "near") if isinstance(leakage.get(k), dict)]
    if kinds:
        scopes = list(dict.fromkeys(scope for k in kinds for scope in leakage[k]))
        lines += [
            f"Exact: identical pixels; near: perceptual-hash distance ≤ "
            f"{leakage.get('phash_max_distance', '?')} (and not exact). Policy: "
            f"`{leakage.get('policy', '?')}`.",
            "",
            "| scope | "
            + " | ".join(f"{k} pairs | {k} images | {k} label conflicts" for k in kinds)
            + " |",
            "|---|" + "---:|" * (3 * len(kinds)),
        ]
        for scope in scopes:
            cells = []
            for k in kinds:
                entry = leakage[k].get(scope) or {}
                cells += [_num(entry.get(f, "–")) for f in ("pairs", "images", "label_conflicts")]
            label = scope.replace("train_test", "train ↔ test").replace("_", " ")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines += [
            "",
            f"{_num(leakage.get('train_images_duplicating_test', '?'))} training images "
            f"duplicate a test image; {_num(leakage.get('dropped_train_images', 0))} were "
            "dropped.",
            "",
        ]
    else:
        lines += _generic(leakage)
    lines += _figure(reports, "figures/leakage_examples.png", "leakage examples")
    return lines


def detection_section(reports: Path) -> list[str]:
    lines = ["## Face detection (RetinaFace preprocessing)", ""]
    det = _load(reports, "detection.json")
    if det is None:
        return lines + _missing("detection.json", "preprocess")
    if "detection_rate" in det:
        lines += [
            f"A face was found in **{_pct(det['detection_rate'])}%** of "
            f"{_num(det.get('images', '?'))} images "
            f"({_num(det.get('faces_found', '?'))} faces); images without one keep their plain "
            "crop in the `retinaface` arrays.",
            "",
        ]
        per_split = det.get("per_split") or {}
        if per_split:
            lines += ["| split | images | faces found | rate (%) |", "|---|---:|---:|---:|"]
            for name, part in per_split.items():
                lines.append(
                    f"| {name} | {_num(part.get('images'))} | {_num(part.get('faces_found'))} | "
                    f"{_pct(part.get('detection_rate'))} |"
                )
            lines.append("")
        per_class = det.get("per_class") or {}
        if per_class:
            lines += ["| class | " + " | ".join(per_class) + " |"]
            lines += ["|---|" + "---:|" * len(per_class)]
            rates = (_pct(p.get("detection_rate")) for p in per_class.values())
            lines += ["| rate (%) | " + " | ".join(rates) + " |", ""]
    else:
        lines += _generic(det)
    lines += _figure(reports, "figures/alignment.png", "alignment examples")
    return lines


def training_section(reports: Path) -> list[str]:
    lines = ["## Training", ""]
    train = _load(reports, "train.json")
    if train is None:
        return lines + _missing("train.json", "train")
    known = [
        ("best_epoch", "best epoch"),
        ("epochs_run", "epochs run"),
        ("best_val_accuracy", "best validation accuracy"),
        ("stop_reason", "stopped because"),
        ("train_minutes", "training time (min)"),
        ("images_per_s", "training images per second"),
        ("n_parameters", "parameters"),
    ]
    rows = [(key, label, train[key]) for key, label in known if key in train]
    if rows:
        lines += ["| | |", "|---|---:|"]
        for key, label, value in rows:
            text = f"{_pct(value)}%" if key == "best_val_accuracy" else _num(value)
            lines.append(f"| {label} | {text} |")
        lines.append("")
    else:
        lines += _generic(train)
    lines += _figure(reports, "figures/training_curves.png", "training curves")
    return lines


def metrics_section(reports: Path) -> list[str]:
    lines = ["## Test metrics", ""]
    metrics = _load(reports, "metrics.json")
    if metrics is None:
        return lines + _missing("metrics.json", "evaluate")
    variant = metrics.get("variant", "original")
    lines += [
        f"Model `{metrics.get('model', '?')}` on the `{variant}` preprocessing.",
        "",
        "| split | n | accuracy (%) | balanced accuracy (%) | macro-F1 (%) | loss |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for split in ("val", "test"):
        m = metrics.get(split)
        if isinstance(m, dict):
            lines.append(
                f"| {split} | {_num(m.get('n', '–'))} | {_pct(m.get('accuracy'))} | "
                f"{_pct(m.get('balanced_accuracy'))} | {_pct(m.get('macro_f1'))} | "
                f"{_num(m.get('loss', '–'))} |"
            )
    lines.append("")
    test = metrics.get("test") or {}
    recall = test.get("per_class_recall") or {}
    if recall:
        lines += [
            "Test recall per class (%):",
            "",
            "| " + " | ".join(recall) + " |",
            "|" + "---:|" * len(recall),
            "| " + " | ".join(_pct(v) for v in recall.values()) + " |",
            "",
        ]
    seed = SEED_ACCURACY.get(variant)
    if seed is not None and "accuracy" in test:
        diff = 100 * (test["accuracy"] - seed)
        lines += [
            f"The seed study reported {_pct(SEED_ACCURACY['original'])}% test accuracy on the "
            f"original crops and {_pct(SEED_ACCURACY['retinaface'])}% with RetinaFace "
            f"preprocessing; this run's {variant} model is {abs(diff):.2f} points "
            f"{'below' if diff < 0 else 'above'} {_pct(seed)}%.",
            "",
        ]
    lines += _figure(reports, "figures/confusion_test.png", "test confusion matrix")
    lines += _figure(reports, "figures/confusion_val.png", "validation confusion matrix")
    return lines


def resize_section(reports: Path) -> list[str]:
    from ferlab.evaluation.resize_study import table_markdown

    lines = ["## Test-time resize study", ""]
    result = _load(reports, "study_resize.json")
    if result is None:
        return lines + _missing("study_resize.json", "study_resize")
    body = table_markdown(result).splitlines()
    # Drop the stand-alone page's title, and demote its headings one level.
    lines += [*_demote(body), ""]
    lines += _figure(reports, "figures/study_resize.png", "resize study")
    return lines


def age_section(reports: Path) -> list[str]:
    from ferlab.evaluation.age_study import study_markdown

    lines = ["## Kids vs adults", ""]
    model = _load(reports, "age_model.json")
    study = _load(reports, "study_age.json")
    if model is not None:
        val, data = model.get("val", {}), model.get("data", {})
        lines += [
            f"The age-group model (`{model.get('model', {}).get('name', '?')}`, kids: age ≤ "
            f"{model.get('kids_max_age', '?')}) was trained on {_num(data.get('train', '?'))} "
            f"UTKFace faces and scores **{_pct(val.get('accuracy'))}%** accuracy "
            f"({_pct(val.get('balanced_accuracy'))}% balanced) on "
            f"{_num(val.get('n', '?'))} held-out faces; "
            f"{_num(data.get('skipped_malformed_names', 0))} file(s) with malformed names were "
            "skipped.",
            "",
        ]
        by_age = model.get("val_by_age") or {}
        if by_age:
            lines += ["| held-out ages | " + " | ".join(by_age) + " |"]
            lines += ["|---|" + "---:|" * len(by_age)]
            lines += ["| n | " + " | ".join(_num(v["n"]) for v in by_age.values()) + " |"]
            accs = (_pct(v["accuracy"]) for v in by_age.values())
            lines += ["| accuracy (%) | " + " | ".join(accs) + " |", ""]
        lines += _figure(reports, "figures/study_age_crops.png", "UTKFace crops, kids over adults")
    else:
        lines += _missing("age_model.json", "age_model")
    if study is not None:
        body = study_markdown(study, study.get("tag_sources")).splitlines()
        lines += [*_demote(body), ""]
        lines += _figure(reports, "figures/study_age_confusion.png", "confusion by age group")
    else:
        lines += _missing("study_age.json", "study_age")
    return lines


SECTIONS: tuple[Section, ...] = (
    dataset_section,
    leakage_section,
    detection_section,
    training_section,
    metrics_section,
    resize_section,
    age_section,
)


def build_report(reports: str | Path = "reports") -> str:
    """The whole study as Markdown, with links relative to `reports/`."""
    reports = Path(reports)
    lines = [
        "# FER2013+ study report",
        "",
        "Generated by the `report` stage from the files in `reports/`; do not edit by hand. "
        "Each section names the report it comes from, or says which stage to run when that "
        "report is missing.",
        "",
        f"Seed study reference: {_pct(SEED_ACCURACY['original'])}% test accuracy on the original "
        f"crops, {_pct(SEED_ACCURACY['retinaface'])}% with RetinaFace preprocessing.",
        "",
    ]
    for section in SECTIONS:
        lines += section(reports)
    return "\n".join(lines).rstrip() + "\n"
