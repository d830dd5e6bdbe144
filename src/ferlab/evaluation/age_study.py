"""Kids vs adults: how the expression model does on each age group of the test split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ferlab.age.data import AGE_CLASSES
from ferlab.classes import CLASSES
from ferlab.evaluation.metrics import classification_metrics, confusion_matrix
from ferlab.io import atomic_path

GROUP_TITLES = {"kid": "Kids", "adult": "Adults"}
# The seed study's counts on its 3,586-image test set (its own age tagging).
SEED_COUNTS = {"kid": 620, "adult": 2947, "total": 3586}


def groups_for(paths: list[str] | np.ndarray, tags: pd.DataFrame) -> np.ndarray:
    """The age group of each path, from data/age_tags.csv; every path must be tagged."""
    lookup = dict(zip(tags["path"].astype(str), tags["age_group"], strict=True))
    missing = [str(p) for p in paths if str(p) not in lookup]
    if missing:
        raise ValueError(
            f"{len(missing)} test image(s) have no age tag, e.g. {missing[0]}; "
            "rerun `dvc repro tag_age` so data/age_tags.csv matches the test split"
        )
    groups = np.array([lookup[str(p)] for p in paths])
    unknown = set(groups) - set(AGE_CLASSES)
    if unknown:
        raise ValueError(f"data/age_tags.csv: age groups {sorted(unknown)} are not kid/adult")
    return groups


def group_study(labels: np.ndarray, probs: np.ndarray, groups: np.ndarray) -> dict[str, Any]:
    """Per-group metrics and 8×8 confusion matrices (8×8 even where a class is absent)."""
    labels = np.asarray(labels, dtype=int)
    preds = probs.argmax(axis=1)
    out: dict[str, Any] = {
        "n": len(labels),
        "classes": list(CLASSES),
        "all": _summary(labels, probs),
        "groups": {},
    }
    for group in AGE_CLASSES:
        mask = groups == group
        entry: dict[str, Any] = {"n": int(mask.sum())}
        if mask.any():
            entry.update(_summary(labels[mask], probs[mask]))
        else:
            entry.update(accuracy=None, balanced_accuracy=None, macro_f1=None)
        entry["confusion"] = confusion_matrix(labels[mask], preds[mask]).tolist()
        entry["counts"] = {c: int((labels[mask] == i).sum()) for i, c in enumerate(CLASSES)}
        out["groups"][group] = entry
    return out


def _summary(labels: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    m = classification_metrics(labels, probs)
    keys = ("accuracy", "balanced_accuracy", "macro_f1", "per_class_recall")
    return {k: m[k] for k in keys}


def counts_table(study: dict[str, Any]) -> pd.DataFrame:
    """Rows Kids and Adults; columns Total and the 8 classes (the seed's shape)."""
    rows = []
    for group in AGE_CLASSES:
        entry = study["groups"][group]
        rows.append({"group": GROUP_TITLES[group], "Total": entry["n"], **entry["counts"]})
    return pd.DataFrame(rows).set_index("group")


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _views_line(views: dict[str, Any] | None) -> list[str]:
    """How each face was scored (the evaluate stage's test-time views), as a paragraph."""
    if not views:
        return []
    if list(views["crops"]) == [1.0]:
        how = "the whole face" + (" and its mirror image" if views["flip"] else " alone")
    else:
        crops = ", ".join(f"{c:g}" for c in views["crops"])
        mirror = " and their mirror images" if views["flip"] else ""
        how = f"the mean of its centre crops {crops} (fractions of the side){mirror}"
    return [f"The study model scores each face as the evaluate stage does: {how}.", ""]


def study_markdown(study: dict[str, Any], tag_sources: dict[str, int] | None = None) -> str:
    """Counts beside the seed's, per-group accuracy, per-class recall."""
    table = counts_table(study)
    n = study["n"]
    lines = [
        "# Kids vs adults on the FER2013+ test split",
        "",
        "## Counts",
        "",
        "| group | Total | " + " | ".join(CLASSES) + " |",
        "|---|---:|" + "---:|" * len(CLASSES),
    ]
    for group, row in table.iterrows():
        lines.append(
            f"| {group} | {row['Total']:,} | " + " | ".join(f"{row[c]:,}" for c in CLASSES)
        )
        lines[-1] += " |"
    lines += [
        "",
        "Beside the seed study's counts (its test set had 3,586 images; 620 + 2,947 = 3,567 "
        "were tagged):",
        "",
        "| group | this run | share | seed study | seed share |",
        "|---|---:|---:|---:|---:|",
    ]
    for group in AGE_CLASSES:
        ours = study["groups"][group]["n"]
        seed = SEED_COUNTS[group]
        lines.append(
            f"| {GROUP_TITLES[group]} | {ours:,} | {100 * ours / max(n, 1):.1f}% | {seed:,} | "
            f"{100 * seed / SEED_COUNTS['total']:.1f}% |"
        )
    lines.append(f"| Total | {n:,} | | {SEED_COUNTS['total']:,} | |")
    if tag_sources:
        wording = {"model": "by the age model", "manual": "from hand-checked labels"}
        parts = ", ".join(f"{v:,} {wording.get(k, k)}" for k, v in sorted(tag_sources.items()))
        lines += ["", f"Age groups assigned: {parts}."]
    lines += [
        "",
        "## Expression accuracy per group",
        "",
        *_views_line(study.get("views")),
        "| group | n | accuracy (%) | balanced accuracy (%) | macro-F1 (%) |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, title in (*GROUP_TITLES.items(), ("all", "All")):
        entry = study["all"] if key == "all" else study["groups"][key]
        count = n if key == "all" else entry["n"]
        lines.append(
            f"| {title} | {count:,} | {_pct(entry['accuracy'])} | "
            f"{_pct(entry['balanced_accuracy'])} | {_pct(entry['macro_f1'])} |"
        )
    lines += [
        "",
        "## Recall per class (%)",
        "",
        "| group | " + " | ".join(CLASSES) + " |",
        "|---|" + "---:|" * len(CLASSES),
    ]
    for group in AGE_CLASSES:
        recall = study["groups"][group].get("per_class_recall") or {}
        cells = [_pct(recall.get(c)) for c in CLASSES]
        lines.append(f"| {GROUP_TITLES[group]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Balanced accuracy averages recall over the classes present in the group, so a class "
        "with few examples in a group makes it noisy.",
    ]
    sparse = [
        f"{c} among {GROUP_TITLES[g].lower()} ({row[c]})"
        for g, (_, row) in zip(AGE_CLASSES, table.iterrows(), strict=True)
        for c in CLASSES
        if row[c] < 20
    ]
    if sparse:
        lines[-1] += " Fewer than 20 examples: " + ", ".join(sparse) + "."
    return "\n".join(lines) + "\n"


def plot_confusions(study: dict[str, Any], path: str | Path) -> None:
    """Row-normalised 8×8 confusion matrices side by side, one per age group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(AGE_CLASSES), figsize=(12, 5.4))
    for ax, group in zip(axes, AGE_CLASSES, strict=True):
        matrix = np.array(study["groups"][group]["confusion"], dtype=float)
        rows = matrix.sum(axis=1, keepdims=True)
        norm = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(CLASSES)):
            for j in range(len(CLASSES)):
                color = "white" if norm[i, j] > 0.5 else "black"
                ax.text(
                    j, i, f"{int(matrix[i, j])}", ha="center", va="center", fontsize=7, color=color
                )
        acc = study["groups"][group]["accuracy"]
        n = study["groups"][group]["n"]
        accuracy = "" if acc is None else f", acc {_pct(acc)}%"
        ax.set_title(f"{GROUP_TITLES[group]} (n={n:,}{accuracy})")
        ax.set_xticks(range(len(CLASSES)), CLASSES, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(CLASSES)), CLASSES, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
    fig.suptitle("Confusion by age group (colour: row-normalised; numbers: counts)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
