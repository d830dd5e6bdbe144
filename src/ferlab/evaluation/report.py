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
    for name, rel in TRAIN_STAGES.values():
        if (reports / rel).is_file():
            lines += [f"### `{name}`", "", *_training_rows(reports, rel)]
    if len(lines) == 2:
        return lines + _missing("train.json", "train")
    return lines


def _training_rows(reports: Path, rel: str) -> list[str]:
    lines: list[str] = []
    train = _load(reports, rel)
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
    folder = str(Path(rel).parent)
    figure = (
        "figures/training_curves.png" if folder == "." else f"{folder}/figures/training_curves.png"
    )
    lines += _figure(reports, figure, "training curves")
    return lines


# Protocol order in the report: the figures without leakage first.
PROTOCOL_ROWS: tuple[tuple[str, str], ...] = (
    ("clean_test", "clean test (no copy in train)"),
    ("reference_private", "FER+ PrivateTest, reference majority protocol"),
    ("reference_public", "FER+ PublicTest, reference majority protocol"),
    ("test", "all 7,100 test images, plurality labels"),
)


def _model_entries(metrics: Any) -> dict[str, dict[str, Any]] | None:
    """reports/metrics.json's per-model entries; None for a file in another layout."""
    if not isinstance(metrics, dict) or not metrics:
        return None
    entries = {k: v for k, v in metrics.items() if isinstance(v, dict) and "calibration" in v}
    return entries or None


# Each train stage's checkpoint -> (its name in the report, its training report).
TRAIN_STAGES = {
    "models/model.pt": ("study", "train.json"),
    "models/fast.pt": ("fast", "fast/train.json"),
    "models/fast_second.pt": ("fast_second", "fast_second/train.json"),
}


def _train_reports(reports: Path, name: str) -> list[str]:
    """An evaluated model's training reports, from the checkpoint(s) its evaluation names: a
    mean of models has one per member (its training minutes are their sum)."""
    source = (_load(reports, f"evaluation/{name}.json") or {}).get("checkpoint")
    paths = [source] if isinstance(source, str) else list(source or [])
    if paths and all(p in TRAIN_STAGES for p in paths):
        return [TRAIN_STAGES[p][1] for p in paths]
    return [f"{name}/train.json"]


def summary_table(reports: str | Path) -> list[str]:
    """One row per evaluated model: the few numbers the README quotes (a test checks that the
    README holds this table verbatim, so its numbers are always the committed reports')."""
    reports = Path(reports)
    entries = _model_entries(_load(reports, "metrics.json")) or {}
    exports = _load(reports, "export.json") or {}
    lines = [
        "| model | FER+ reference (PrivateTest) | clean test | clean test, balanced | "
        "plurality test | epochs | training (min, 2 cores) | ms a face, ONNX fp32 / int8 "
        "(1 thread, its test-time views) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in entries.items():
        trains = [_load(reports, r) or {} for r in _train_reports(reports, name)]
        speed = (exports.get(name) or {}).get("ms_per_face_1_thread") or {}
        ms = " / ".join(f"{speed[p]:.2f}" for p in ("fp32", "int8") if p in speed) or "–"
        runs = [t.get("epochs_run") for t in trains]
        epochs = " + ".join(str(e) for e in runs) if None not in runs else "–"
        spent = [t.get("train_minutes") for t in trains]
        minutes = sum(spent) if all(isinstance(v, int | float) for v in spent) else None
        lines.append(
            f"| `{name}`: {m.get('model', '?')} | {_pct(m['reference_private']['accuracy'])}% | "
            f"{_pct(m['clean_test']['accuracy'])}% | "
            f"{_pct(m['clean_test']['balanced_accuracy'])}% | {_pct(m['test']['accuracy'])}% | "
            f"{epochs} | "
            f"{f'{minutes:.0f}' if isinstance(minutes, int | float) else '–'} | {ms} |"
        )
    return lines


def headline_section(reports: Path) -> list[str]:
    lines = ["## Headline results", ""]
    if _model_entries(_load(reports, "metrics.json")):
        lines += [*summary_table(reports), ""]
    metrics = _load(reports, "metrics.json")
    if metrics is None:
        return lines + _missing("metrics.json", "evaluate")
    entries = _model_entries(metrics)
    if entries is None:
        lines += [
            "_`reports/metrics.json` predates the protocol evaluation (no per-model entries); "
            "run `dvc repro evaluate`._",
            "",
        ]
        return lines
    for name, m in entries.items():
        test, clean = m.get("test") or {}, m.get("clean_test") or {}
        lines += [
            f"### `{name}` ({m.get('model', '?')}, {m.get('variant', '?')} faces)",
            "",
            "| protocol | n | accuracy (%) | balanced accuracy (%) | macro-F1 (%) | "
            "prior-corrected balanced accuracy (%) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for key, label in PROTOCOL_ROWS:
            row = m.get(key)
            if not isinstance(row, dict):
                lines.append(
                    f"| {label} | – | _not scored: see reports/evaluation/{name}.json_ | | | |"
                )
                continue
            lines.append(
                f"| {label} | {_num(row.get('n', '–'))} | {_pct(row.get('accuracy'))} | "
                f"{_pct(row.get('balanced_accuracy'))} | {_pct(row.get('macro_f1'))} | "
                f"{_pct(row.get('prior_corrected_balanced_accuracy'))} |"
            )
        lines.append("")
        if isinstance(test.get("n"), int) and isinstance(clean.get("n"), int):
            leaked = test["n"] - clean["n"]
            lines += [
                f"The plurality figure includes {leaked:,} test images "
                f"({100 * leaked / max(test['n'], 1):.1f}%) that have an exact or near copy in "
                "the training data (see Leakage below): a model may have seen them, so it "
                "overstates accuracy on new faces. The clean test leaves them out; the reference "
                "protocol is the one published FER+ results use (Microsoft FERPlus, majority "
                "mode: single votes dropped, kept when one emotion has more than half the rest).",
                "",
            ]
        cal = m.get("calibration") or {}
        if cal:
            lines += [
                f"Calibration on the test set: expected calibration error "
                f"{_pct(cal.get('ece'))}% → {_pct(cal.get('ece_calibrated'))}% after temperature "
                f"scaling (T = {_num(cal.get('temperature'))}, fitted on validation by NLL; "
                f"test NLL {_num(cal.get('nll'))} → {_num(cal.get('nll_calibrated'))}). "
                "Prior-corrected: argmax of logits/T − τ·log(training class prior).",
                "",
            ]
    return lines


def metrics_section(reports: Path) -> list[str]:
    lines = ["## Test metrics", ""]
    metrics = _load(reports, "metrics.json")
    if metrics is None:
        return lines + _missing("metrics.json", "evaluate")
    entries = _model_entries(metrics)
    if entries is None:
        lines += ["_See the note under Headline results._", ""]
        return lines
    for name, m in entries.items():
        lines += [f"### `{name}`", ""]
        detail = _load(reports, f"evaluation/{name}.json")
        protocols = (detail or {}).get("protocols") or {}
        if protocols:
            lines += [
                "Recall per class (%), plain argmax / prior-corrected:",
                "",
                "| protocol | " + " | ".join(CLASSES) + " |",
                "|---|" + "---:|" * len(CLASSES),
            ]
            for key, label in PROTOCOL_ROWS:
                part = protocols.get(key)
                if not part:
                    continue
                plain = part.get("per_class_recall") or {}
                fixed = (part.get("prior_corrected") or {}).get("per_class_recall") or {}
                cells = [f"{_pct(plain.get(c))} / {_pct(fixed.get(c))}" for c in CLASSES]
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
            lines.append("")
        else:
            lines += [
                f"_`reports/evaluation/{name}.json` not found; run `dvc repro evaluate`._",
                "",
            ]
        test = m.get("test") or {}
        seed = SEED_ACCURACY.get(m.get("variant", "original"))
        if seed is not None and "accuracy" in test:
            diff = 100 * (test["accuracy"] - seed)
            lines += [
                f"The seed study reported {_pct(SEED_ACCURACY['original'])}% test accuracy on "
                f"the original crops and {_pct(SEED_ACCURACY['retinaface'])}% with RetinaFace "
                f"preprocessing, on the plurality test; `{name}` is {abs(diff):.2f} points "
                f"{'below' if diff < 0 else 'above'} {_pct(seed)}% there.",
                "",
            ]
        for key in ("clean_test", "reference_private", "test"):
            lines += _figure(
                reports, f"figures/evaluation/{name}_confusion_{key}.png", f"{name} {key} confusion"
            )
        lines += _figure(reports, f"figures/evaluation/{name}_reliability.png", "reliability")
        lines += _figure(
            reports, f"figures/evaluation/{name}_attention_maps.png", f"{name} attention maps"
        )
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
    headline_section,
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
