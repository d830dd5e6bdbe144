"""The one canonical class list, and explicit maps from the other orders in use."""

# Kaggle folder order (alphabetical). Every array, checkpoint and report uses this order.
CLASSES: tuple[str, ...] = (
    "anger",
    "contempt",
    "disgust",
    "fear",
    "happiness",
    "neutral",
    "sadness",
    "surprise",
)
NUM_CLASSES = len(CLASSES)
CLASS_TO_INDEX: dict[str, int] = {name: i for i, name in enumerate(CLASSES)}

# Column order of the FER+ vote CSV and of the DDAMFN reference (it also labels FER+ this way).
FERPLUS_ORDER: tuple[str, ...] = (
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
)
# FERPLUS_TO_CANONICAL[i] is the canonical index of the i-th FER+ class.
FERPLUS_TO_CANONICAL: tuple[int, ...] = tuple(CLASS_TO_INDEX[name] for name in FERPLUS_ORDER)

NOT_DETECTED = "not detected"


def class_index(name: str) -> int:
    """Canonical index of a class name; a clear error for anything else."""
    try:
        return CLASS_TO_INDEX[name]
    except KeyError:
        raise ValueError(f"unknown class {name!r}; expected one of {', '.join(CLASSES)}") from None
