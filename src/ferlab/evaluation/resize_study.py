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


def stratified_subset(labels: np.ndarray, max_images: int, seed: int) -> np.ndarray:
    """Sorted indices of at most `max_images` samples, each class keeping its share (seeded).

    0, or a limit at or above the number of samples, keeps everything.
    """
    n = len(labels)
    if max_images <= 0 or max_images >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        take = max(1, round(len(idx) * max_images / n))
        chosen.append(rng.choice(idx, size=min(take, len(idx)), replace=False))
    return np.sort(np.concatenate(chosen))


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
    source = int(images.shape[1])
    baseline = classification_metrics(labels, predict(images))
    accuracy: dict[str, dict[str, float]] = {}
    balanced: dict[str, dict[str, float]] = {}
    # Cells whose round trip is the same operation (e.g. every pair at the native size) are
    # classified once: inference is the whole cost of the study.
    done: dict[tuple, dict] = {}
    for method in methods:
        accuracy[method], balanced[method] = {}, {}
        down, up = parse_method(method)
        for size in sizes:
            size = int(size)
            key = (
                down if size != source else None,
                size,
                up if size != input_size else None,
            )
            if key not in done:
                probs = predict(round_trip(images, size, method, input_size))
                done[key] = classification_metrics(labels, probs)
            metrics = done[key]
            accuracy[method][str(size)] = metrics["accuracy"]
            balanced[method][str(size)] = metrics["balanced_accuracy"]
            log(
                f"  {method:>17} {size:>4}px  acc {metrics['accuracy']:.4f}  "
                f"bal {metrics['balanced_accuracy']:.4f}"
            )
    return {
        "n": len(labels),
        "source_size": source,
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


def _standard_error(result: dict) -> float:
    p = result["baseline"]["accuracy"]
    return float(np.sqrt(p * (1 - p) / max(result["n"], 1)))


def _sample_note(result: dict) -> str:
    total = result.get("test_images", result["n"])
    if total <= result["n"]:
        return ""
    return (
        f", a class-stratified, seeded sample of the {total:,} test faces "
        "(`study_resize.max_images`: every cell is a full pass of the model, slow on a CPU)"
    )


def table_markdown(result: dict) -> str:
    """The study as Markdown: accuracy and balanced accuracy tables, and how to read them."""
    src = result["source_size"]
    enlarged = [s for s in result["sizes"] if s > src]
    lines = [
        "# Test-time resize study",
        "",
        f"Each test face ({src}×{src}) is resized to s×s with the first interpolation and back "
        f"to the model's input size ({result['input_size']}×{result['input_size']}) with the "
        f"second, then classified. Faces: {result['n']:,}{_sample_note(result)}. Accuracy in %; "
        "the best size of each row in bold. Without any resize the model scores "
        f"{100 * result['baseline']['accuracy']:.2f}% "
        f"(balanced {100 * result['baseline']['balanced_accuracy']:.2f}%) on these faces.",
        "",
        f"With {result['n']:,} faces one cell's standard error is about "
        f"{100 * _standard_error(result):.1f} points; cells of one column share their faces, "
        "so differences between rows are less noisy than that.",
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
