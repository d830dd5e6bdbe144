"""The `ferlab` command line: thin commands over the library."""

from __future__ import annotations

import os
from typing import Annotated

import typer

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")

app = typer.Typer(
    help="Reproducible facial expression recognition on FER2013+.", no_args_is_help=True
)


@app.command()
def ui(
    host: str = typer.Option("127.0.0.1", help="Address to bind; loopback unless you mean it."),
    port: int = typer.Option(5000, help="Port of the MLflow UI."),
) -> None:
    """Open the MLflow UI on this project's tracking store (mlflow.db by default)."""
    from ferlab import tracking

    typer.echo(f"MLflow UI for {tracking.tracking_uri()} on http://{host}:{port}")
    tracking.open_ui(host, port)


@app.command()
def evaluate(
    folder: str = typer.Argument(
        ..., help="Labelled faces: one subfolder per class (angry/, happy/, ... any case)."
    ),
    model: str | None = typer.Option(
        None, help="A .pt checkpoint or an .onnx export; default: the model bundled with ferlab."
    ),
    out: str = typer.Option(
        "ferlab-eval",
        "--out",
        help="Folder for metrics.json, predictions.csv and the confusion figures.",
    ),
    no_detect: bool = typer.Option(
        False, "--no-detect", help="Images are already-cropped faces: skip face detection."
    ),
    tta_flip: bool = typer.Option(False, "--tta-flip", help="Average each face with its mirror."),
    tau: float = typer.Option(
        0.0, help="Prior-corrected decision: logits − τ·log(training prior); 0 = plain argmax."
    ),
    force: bool = typer.Option(
        False, "--force", help="Replace this command's files in a non-empty --out folder."
    ),
) -> None:
    """Score a model on a labelled face folder: all 8 classes, and the classes present."""
    from ferlab.evaluation.folder import evaluate_folder
    from ferlab.faces.detect import FaceDetector
    from ferlab.inference import load_classifier
    from ferlab.realtime import RealtimeSettings

    try:
        settings = RealtimeSettings.load()
        classifier = load_classifier(model, tta_flip=tta_flip, logit_adjust_tau=tau)
        detector = None if no_detect else FaceDetector(score_threshold=settings.detect_score)
        result = evaluate_folder(
            folder,
            classifier,
            out,
            detector,
            detect_max_side=settings.detect_max_side,
            force=force,
            model_file=model or "bundled model.onnx",
            log=typer.echo,
        )
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from None
    every, present = result["all_classes"], result["present_classes"]
    typer.echo(
        f"{result['faces']} faces in {result['images']} images"
        + (f" ({result['no_face']['count']} without a face)" if result["no_face"]["count"] else "")
        + f": accuracy {every['accuracy']:.4f}, balanced {every['balanced_accuracy']:.4f} over "
        f"8 classes; {present['accuracy']:.4f} / {present['balanced_accuracy']:.4f} over the "
        f"{len(result['classes_present'])} present -> {out}"
    )


def _fail(message: str) -> typer.Exit:
    """Print one clear error line and exit with status 1."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def _pipeline(model: str | None, threads: int, **overrides: object):
    """The per-frame pipeline with params.yaml's realtime settings (when run in the project)."""
    from ferlab.inference import load_classifier
    from ferlab.realtime import FramePipeline, RealtimeSettings

    settings = RealtimeSettings.load(**overrides)
    return FramePipeline(load_classifier(model, threads=threads), settings)


MODEL_HELP = "A .pt checkpoint or an .onnx export; default: the model bundled with ferlab."


@app.command()
def predict(
    paths: Annotated[
        list[str], typer.Argument(help="Image files and/or folders (searched deeply).")
    ],
    no_detect: bool = typer.Option(
        False, "--no-detect", help="Inputs are already-cropped faces: skip face detection."
    ),
    model: str | None = typer.Option(None, help=MODEL_HELP),
    out: str = typer.Option("predictions.csv", help="CSV to write (one row per face)."),
    threshold: float = typer.Option(
        0.0, help='Label "not detected" below this top probability (0: always the top class).'
    ),
) -> None:
    """Classify the faces in images: CSV of file, face, box, label, confidence, probabilities."""
    from ferlab.faces.detect import FaceDetector
    from ferlab.inference import load_classifier
    from ferlab.realtime import RealtimeSettings
    from ferlab.realtime.predict import predict_images

    try:
        settings = RealtimeSettings.load()
        classifier = load_classifier(model)
        detector = None if no_detect else FaceDetector(score_threshold=settings.detect_score)
        summary = predict_images(
            paths,
            classifier,
            out,
            detector,
            detect_max_side=settings.detect_max_side,
            threshold=threshold,
            log=typer.echo,
        )
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from None
    counts = ", ".join(f"{label} {n}" for label, n in summary.labels.most_common())
    typer.echo(
        f"{summary.images} images, {summary.faces} faces"
        + (f", {summary.without_face} images without a face" if summary.without_face else "")
        + f" -> {out}"
        + (f" ({counts})" if counts else "")
    )


@app.command()
def video(
    source: str = typer.Argument(..., help="Video file to annotate."),
    out: str | None = typer.Option(None, "--out", help="Annotated video to write (.mp4)."),
    csv: str | None = typer.Option(None, "--csv", help="Per-frame CSV timeline to write."),
    model: str | None = typer.Option(None, help=MODEL_HELP),
    threshold: float | None = typer.Option(None, help="Override realtime.threshold."),
    smoothing: str | None = typer.Option(None, help="Override realtime.smoothing."),
    max_frames: int | None = typer.Option(None, help="Stop after this many frames."),
    threads: int = typer.Option(0, help="CPU threads for the classifier (0: all)."),
) -> None:
    """Annotate a video file: boxes, labels, FPS, and a per-frame CSV timeline."""
    from ferlab.realtime import StreamError, annotate_video

    if not out and not csv:
        raise _fail("nothing to write: give --out annotated.mp4 and/or --csv timeline.csv")
    try:
        pipeline = _pipeline(model, threads, threshold=threshold, smoothing=smoothing)
        result = annotate_video(source, pipeline, out, csv, max_frames=max_frames, log=typer.echo)
    except (FileNotFoundError, ValueError, StreamError) as exc:
        raise _fail(str(exc)) from None
    if not result.complete:
        raise _fail(result.message)
    typer.echo(f"{result.message} at {result.fps:.1f} FPS, {result.faces} face detections")


@app.command()
def camera(
    device: str = typer.Option("0", help="Camera number, or a video file standing in for one."),
    mode: str = typer.Option(
        "auto",
        help="auto | window | mjpeg | file (auto: file with --out, else window, else mjpeg).",
    ),
    port: int = typer.Option(8080, help="Port of the MJPEG stream on 127.0.0.1."),
    out: str | None = typer.Option(None, "--out", help="Write annotated frames to this video."),
    csv: str | None = typer.Option(None, "--csv", help="Per-frame CSV timeline to write."),
    model: str | None = typer.Option(None, help=MODEL_HELP),
    threshold: float | None = typer.Option(None, help="Override realtime.threshold."),
    smoothing: str | None = typer.Option(None, help="Override realtime.smoothing."),
    max_frames: int | None = typer.Option(None, help="Stop after this many frames."),
    threads: int = typer.Option(0, help="CPU threads for the classifier (0: all)."),
) -> None:
    """Live expression recognition from a camera: a window, an MJPEG stream or a video file."""
    from ferlab.realtime import StreamError
    from ferlab.realtime.camera import run_camera

    try:
        pipeline = _pipeline(model, threads, threshold=threshold, smoothing=smoothing)
        result = run_camera(device, pipeline, mode, port, out, csv, max_frames, log=typer.echo)
    except (FileNotFoundError, ValueError, StreamError) as exc:
        raise _fail(str(exc)) from None
    if not result.complete:
        raise _fail(result.message)
    typer.echo(f"{result.message} at {result.fps:.1f} FPS")


@app.command()
def export(
    checkpoint: str = typer.Argument("models/model.pt", help="Checkpoint to export."),
    out: str = typer.Option("model.onnx", help="fp32 ONNX file to write."),
    int8: str = typer.Option(
        "none",
        help="Also write <out stem>.int8.onnx: none | dynamic | static (static "
        "calibrates on the cached training arrays).",
    ),
    arrays: str = typer.Option("data/arrays", help="Cached arrays, for static calibration."),
    opset: int = typer.Option(17, help="ONNX opset (17 or newer)."),
) -> None:
    """Export a checkpoint to ONNX (metadata inside), optionally with an int8 copy."""
    from pathlib import Path

    from ferlab.export import export_onnx, quantize_int8

    try:
        meta = export_onnx(checkpoint, out, opset)
        typer.echo(f"{out}: fp32 ONNX, opset {opset}, variant {meta['variant']}")
        if int8 != "none":
            faces = None
            if int8 == "static":
                from ferlab.data.arrays import load_split
                from ferlab.export import sample_indices

                images, _, _ = load_split("train", meta["variant"], arrays)
                faces = images[sample_indices(len(images), 512, seed=0)]
            target = Path(out).with_suffix(".int8.onnx")
            quantize_int8(out, target, int8, faces)
            typer.echo(f"{target}: int8 ONNX ({int8})")
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from None


if __name__ == "__main__":
    app()


@app.command("train-run")
def train_run(
    name: str = typer.Argument(..., help="Run name: models/runs/NAME/ and reports/runs/NAME/."),
    overrides: list[str] = typer.Option(
        [], "--set", "-S", help="params.yaml override, e.g. -S model.name=baseline (repeatable)."
    ),
) -> None:
    """Train and evaluate one variation outside the DAG, for side-by-side comparisons.

    The DVC pipeline (`dvc repro`, `dvc exp run`) is the way to reproduce the study; this
    command reuses the cached arrays to compare models or preprocessing variants quickly.
    """
    from pathlib import Path

    from ferlab import tracking
    from ferlab.config import apply_overrides, load_params
    from ferlab.evaluation.evaluate import evaluate_checkpoint
    from ferlab.training.run import train_from_params

    params = apply_overrides(load_params(), overrides)
    checkpoint = Path("models/runs") / name / "model.pt"
    out = Path("reports/runs") / name
    subset = {"seed": params["seed"], "model": params["model"], "train": params["train"]}
    with tracking.stage_run(f"train:{name}", subset, experiment=params["mlflow"]["experiment"]):
        train_from_params(params, checkpoint_path=checkpoint, reports=out)
        results = evaluate_checkpoint(checkpoint, reports=out)
        tracking.log_metrics(
            {f"test_{k}": results["test"][k] for k in ("accuracy", "balanced_accuracy")}
        )
    m = results["test"]
    typer.echo(f"{name}: test accuracy {m['accuracy']:.4f} balanced {m['balanced_accuracy']:.4f}")
