"""Test-time resize study: shrink (or enlarge) each test face, bring it back, classify.

For a size s and a (down, up) interpolation pair, every test image (side S, 48 for FER2013+) is
resized to s×s with `down` and then to the model's input size with `up`. The accuracy over the
grid of sizes × pairs shows how much detail the model needs. Where a step would not change the
size it is skipped, so the pair at s = S with input size S is the unchanged image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from ferlab.evaluation.metrics import classification_metrics
from ferlab.io import atomic_path, write_text

INTERPOLATIONS: dict[str, int] = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos4": cv2.INTER_LANCZOS4,
}

Predict = Callable[[np.ndarray], np.ndarray]  # uint8 faces N×S×S -> probabilities N×C


def parse_method(method: str) -> tuple[str, str]:
    """'cubic/linear' -> ('cubic', 'linear'); one clear error for anything else."""
    parts = method.split("/")
    if len(parts) != 2 or any(p not in INTERPOLATIONS for p in parts):
        raise ValueError(
            f"study_resize.methods: {method!r} is not 'down/up' with both of "
            f"{', '.join(INTERPOLATIONS)} (e.g. 'cubic/linear'); fix params.yaml"
        )
    return parts[0], parts[1]


def round_trip(images: np.ndarray, size: int, method: str, input_size: int) -> np.ndarray:
    """Resize N×S×S uint8 faces to size×size with the first interpolation, then to
    input_size×input_size with the second. Steps that keep the size are skipped."""
    if images.ndim != 3:
        raise ValueError(f"expected N×H×W grayscale faces, got shape {images.shape}")
    if size < 1:
        raise ValueError(f"study_resize.sizes: {size} is not a positive side length")
    down, up = (INTERPOLATIONS[name] for name in parse_method(method))
    out = []
    for face in images:
        if face.shape != (size, size):
            face = cv2.resize(face, (size, size), interpolation=down)
        if face.shape != (input_size, input_size):
            face = cv2.resize(face, (input_size, input_size), interpolation=up)
        out.append(face)
    if not out:
        return np.zeros((0, input_size, input_size), np.uint8)
    return np.stack(out)


def run_study(
    predict: Predict,
    images: np.ndarray,
    labels: np.ndarray,
    sizes: Sequence[int],
    methods: Sequence[str],
    input_size: int,
    log: Callable[[str], None] = print,
) -> dict:
    """Accuracy and balanced accuracy for every (method, size), plus the unresized baseline.

    Returns a JSON-ready dict: `accuracy[method][str(size)]`, `balanced_accuracy[...]`,
    `baseline` (metrics of the images as they are, classified directly), and the settings.
    """
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    for method in methods:
        parse_method(method)
    baseline = classification_metrics(labels, predict(images))
    accuracy: dict[str, dict[str, float]] = {}
    balanced: dict[str, dict[str, float]] = {}
    for method in methods:
        accuracy[method], balanced[method] = {}, {}
        for size in sizes:
            probs = predict(round_trip(images, int(size), method, input_size))
            metrics = classification_metrics(labels, probs)
            accuracy[method][str(size)] = metrics["accuracy"]
            balanced[method][str(size)] = metrics["balanced_accuracy"]
            log(
                f"  {method:>17} {size:>4}px  acc {metrics['accuracy']:.4f}  "
                f"bal {metrics['balanced_accuracy']:.4f}"
            )
    return {
        "n": len(labels),
        "source_size": int(images.shape[1]),
        "input_size": int(input_size),
        "sizes": [int(s) for s in sizes],
        "methods": list(methods),
        "baseline": {
            "accuracy": baseline["accuracy"],
            "balanced_accuracy": baseline["balanced_accuracy"],
        },
        "accuracy": accuracy,
        "balanced_accuracy": balanced,
    }


def table_csv(result: dict, key: str = "accuracy") -> str:
    """Rows = methods, columns = sizes (the seed's shape), values as fractions."""
    lines = ["method," + ",".join(str(s) for s in result["sizes"])]
    for method in result["methods"]:
        values = (f"{result[key][method][str(s)]:.4f}" for s in result["sizes"])
        lines.append(f"{method}," + ",".join(values))
    return "\n".join(lines) + "\n"


def _markdown_table(result: dict, key: str) -> list[str]:
    sizes = result["sizes"]
    lines = [
        "| down / up | " + " | ".join(f"{s}×{s}" for s in sizes) + " |",
        "|---|" + "---:|" * len(sizes),
    ]
    for method in result["methods"]:
        row = result[key][method]
        best = max(row.values())
        cells = []
        for s in sizes:
            text = f"{100 * row[str(s)]:.2f}"
            cells.append(f"**{text}**" if row[str(s)] == best else text)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def table_markdown(result: dict) -> str:
    """The study as Markdown: accuracy and balanced accuracy tables, and how to read them."""
    src = result["source_size"]
    enlarged = [s for s in result["sizes"] if s > src]
    lines = [
        "# Test-time resize study",
        "",
        f"Each of the {result['n']:,} test faces ({src}×{src}) is resized to s×s with the first "
        f"interpolation and back to the model's input size ({result['input_size']}×"
        f"{result['input_size']}) with the second, then classified. Accuracy in %; the best "
        "size of each row in bold. Without any resize the model scores "
        f"{100 * result['baseline']['accuracy']:.2f}% "
        f"(balanced {100 * result['baseline']['balanced_accuracy']:.2f}%).",
        "",
        "## Accuracy (%)",
        "",
        *_markdown_table(result, "accuracy"),
        "",
        "## Balanced accuracy (%)",
        "",
        *_markdown_table(result, "balanced_accuracy"),
        "",
        "## How to read it",
        "",
        f"- FER2013+ faces are natively {src}×{src}. The sizes below {src} measure how the model "
        "copes with faces that arrive with less detail (small or distant faces).",
    ]
    if enlarged:
        lines.append(
            f"- The sizes above {src} ({', '.join(str(s) for s in enlarged)}) are an enlargement "
            f"of the {src}-pixel image followed by a reduction back to the input size: they add "
            "no detail and say nothing about how the model would do on higher-resolution faces; "
            "they only measure the interpolation round trip's own blur and ringing."
        )
    if src in result["sizes"] and src == result["input_size"]:
        lines.append(
            f"- At {src}×{src} no resize happens, so every row equals the unresized accuracy."
        )
    return "\n".join(lines) + "\n"


def plot_study(result: dict, path: str | Path) -> None:
    """Accuracy against size, one line per interpolation pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    sizes = result["sizes"]
    for method in result["methods"]:
        values = [100 * result["accuracy"][method][str(s)] for s in sizes]
        ax.plot(sizes, values, marker="o", label=method)
    ax.axvline(result["source_size"], color="grey", linestyle=":", linewidth=1)
    ax.text(result["source_size"], ax.get_ylim()[0], " native", color="grey", va="bottom")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.minorticks_off()
    ax.set_xlabel("intermediate size (px, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Test-time resize study")
    ax.grid(alpha=0.3)
    ax.legend(title="down / up")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def write_outputs(result: dict, csv_path: Path, md_path: Path, png_path: Path) -> None:
    write_text(csv_path, table_csv(result))
    write_text(md_path, table_markdown(result))
    plot_study(result, png_path)
