"""DVC stage `study_age`: expression accuracy and confusion per age group on the test split."""

import sys

import pandas as pd

from ferlab import tracking
from ferlab.config import load_params
from ferlab.data.arrays import load_split
from ferlab.evaluation.age_study import (
    SEED_COUNTS,
    counts_table,
    group_study,
    groups_for,
    plot_confusions,
    study_markdown,
)
from ferlab.evaluation.evaluate import EvaluateSettings
from ferlab.inference import Classifier
from ferlab.io import atomic_path, write_json, write_text
from ferlab.stage import run_stage

MODEL = "models/model.pt"
OUT_JSON = "reports/study_age.json"
OUT_CSV = "reports/study_age_counts.csv"
OUT_MD = "reports/study_age_counts.md"
OUT_PNG = "reports/figures/study_age_confusion.png"


def main() -> None:
    params = load_params()
    with tracking.stage_run("study_age", params, experiment=params["mlflow"]["experiment"]):
        # Scored as the evaluate stage scores it, with its test-time views, so that the
        # study's "all" row is the evaluate stage's plurality-test accuracy.
        views = EvaluateSettings.from_params(params).views_of_checkpoint(MODEL)
        classifier = Classifier.from_checkpoint(MODEL, views=views)
        # The model is scored on the preprocessing it was trained on (as the evaluate stage does).
        variant = classifier.meta.get("variant", params["train"]["variant"])
        images, labels, paths = load_split("test", variant=variant)
        tags = pd.read_csv("data/age_tags.csv", dtype={"path": str})
        groups = groups_for(paths, tags)
        probs = classifier.predict_proba(images, batch_size=params["evaluate"]["batch_size"])
        study = group_study(labels, probs, groups)
        sources = tags["source"].value_counts().to_dict()
        study["tag_sources"] = {k: int(v) for k, v in sources.items()}
        study["seed_counts"] = SEED_COUNTS
        study["variant"] = variant
        study["views"] = views.to_json()
        write_json(OUT_JSON, study)
        with atomic_path(OUT_CSV) as tmp:
            counts_table(study).to_csv(tmp)
        write_text(OUT_MD, study_markdown(study, study["tag_sources"]))
        plot_confusions(study, OUT_PNG)
        metrics = {}
        for group, entry in study["groups"].items():
            metrics[f"{group}_n"] = entry["n"]
            for key in ("accuracy", "balanced_accuracy"):
                if entry[key] is not None:
                    metrics[f"{group}_{key}"] = entry[key]
        tracking.log_metrics(metrics)
        tracking.log_artifacts(OUT_JSON, OUT_CSV, OUT_MD, OUT_PNG)
        print(study_markdown(study, study["tag_sources"]))


if __name__ == "__main__":
    sys.exit(run_stage("study_age", main))
