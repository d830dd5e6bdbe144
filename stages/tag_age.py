"""DVC stage `tag_age`: an age group (kid/adult) and confidence for every FER2013+ test face."""

import sys

from ferlab import tracking
from ferlab.age.data import AGE_CLASSES
from ferlab.age.model import read_override, tag_faces
from ferlab.config import load_params
from ferlab.data.arrays import load_split
from ferlab.inference import Classifier
from ferlab.io import atomic_path
from ferlab.stage import run_stage

TAGS = "data/age_tags.csv"


def main() -> None:
    params = load_params()
    age = params["age"]
    with tracking.stage_run("tag_age", params, experiment=params["mlflow"]["experiment"]):
        # Tags come from the plain FER2013+ crops, the kind of face the age model was matched to.
        images, _, paths = load_split("test", variant="original")
        classifier = Classifier.from_checkpoint("models/age.pt", expected_classes=AGE_CLASSES)
        override = read_override(age["labels_override"]) if age["labels_override"] else None
        tags = tag_faces(classifier, images, paths, override)
        with atomic_path(TAGS) as tmp:
            tags.to_csv(tmp, index=False)
        counts = tags["age_group"].value_counts().to_dict()
        manual = int((tags["source"] == "manual").sum())
        tracking.log_metrics(
            {
                "tagged_kids": counts.get("kid", 0),
                "tagged_adults": counts.get("adult", 0),
                "tagged_manual": manual,
                "mean_confidence": float(tags["confidence"].mean()),
            }
        )
        print(
            f"tagged {len(tags)} test faces: {counts.get('kid', 0)} kids, "
            f"{counts.get('adult', 0)} adults ({manual} from hand-checked labels) -> {TAGS}"
        )


if __name__ == "__main__":
    sys.exit(run_stage("tag_age", main))
