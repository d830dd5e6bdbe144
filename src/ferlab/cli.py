"""The `ferlab` command line: thin commands over the library.

Bad input and outputs that cannot be written end a command with one `error:` line naming the
file and the fix, and exit status 1; never a traceback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from ferlab.inference import Views
    from ferlab.training.run import TrainJob

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")

app = typer.Typer(
    help="Reproducible facial expression recognition on FER2013+.", no_args_is_help=True
)

# `ferlab predict`: CSV written, but some inputs were unreadable (1 means nothing was written).
EXIT_SKIPPED = 2
# How long the MLflow server may take to exit after SIGTERM before it is killed.
UI_STOP_GRACE_S = 10.0


def _fail(message: str) -> typer.Exit:
    """Print one clear error line and exit with status 1."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """The errors a user can fix, as one `error:` line and exit status 1.

    Their messages name the file and the fix (missing input, bad data, an output that is a
    folder or cannot be written, a camera that does not open); a traceback would hide that.
    """
    from ferlab.data import DataError
    from ferlab.io import OutputError, output_error
    from ferlab.realtime.video import StreamError

    try:
        yield
    except (FileNotFoundError, ValueError, DataError, OutputError, StreamError) as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        # A full disk or a permission fault met by a library writing its own file.
        named = Path(exc.filename) if isinstance(exc.filename, str) else None
        clear = output_error(named, exc) if named is not None else None
        if clear is None:
            raise
        raise _fail(str(clear)) from None


def _file_in_folder(out: str, default_name: str) -> Path:
    """`out`, or `out/default_name` when `out` is an existing folder or ends with a slash."""
    if Path(out).is_dir() or out.endswith(("/", os.sep)):
        return Path(out) / default_name
    return Path(out)


def _require_arrays(variant: str, root: str | Path, splits: tuple[str, ...]) -> None:
    """Stop before any work (and any MLflow run) when a cached array file is missing."""
    from ferlab.data.arrays import array_path

    for split in splits:
        path = array_path(split, variant, root)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no cached arrays; run the preprocess stage first "
                "(`dvc repro preprocess`, or `python stages/preprocess.py` in the project)"
            )


def _group_gone(server: subprocess.Popen[bytes], group: int, timeout_s: float) -> bool:
    """Wait until no process of `group` is left (the leader reaped), at most `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        server.poll()  # reap the leader, or it would count as left
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _end_group(server: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM to the server's whole process group (it forks workers), then SIGKILL to
    whatever is still there after `grace_s`."""
    group = server.pid  # start_new_session made the server the leader of its own group
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(group, signum)
        except ProcessLookupError:
            break  # nobody left
        if _group_gone(server, group, grace_s):
            break
    server.wait()


def _serve_until_stopped(command: list[str], grace_s: float = UI_STOP_GRACE_S) -> int:
    """Run a server in its own process group until it exits or this process gets SIGINT or
    SIGTERM; then end the group. Returns the server's exit status, or 0 when stopped.

    Its own group, because a terminal's Ctrl+C reaches only the foreground group and `kill`
    only this process: either way the server (and the workers it forks) would outlive us.
    """
    received: list[int] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server = subprocess.Popen(command, start_new_session=True)
        try:
            while not received and server.poll() is None:
                time.sleep(0.2)
        finally:
            _end_group(server, grace_s)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0 if received else server.returncode


@app.command()
def ui(
    host: str = typer.Option("127.0.0.1", help="Address to bind; loopback unless you mean it."),
    port: int = typer.Option(5000, help="Port of the MLflow UI."),
    workers: int = typer.Option(
        1, help="Server worker processes (each is a whole MLflow server in memory)."
    ),
) -> None:
    """Open the MLflow UI on this project's tracking store (mlflow.db by default).

    Ctrl+C or SIGTERM stops the server this command started, workers included.
    """
    from ferlab.tracking import tracking_uri

    uri = tracking_uri()
    typer.echo(f"MLflow UI for {uri} on http://{host}:{port} (Ctrl+C stops it)")
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    command += ["--host", host, "--port", str(port), "--workers", str(workers)]
    code = _serve_until_stopped(command)
    if code:
        raise _fail(f"the MLflow server exited with status {code} (is port {port} taken?)")
    typer.echo("MLflow UI stopped")


@app.command()
def bundle(
    max_ms: float = typer.Option(2.0, help="Most milliseconds a face (batch 1, one thread)."),
    max_mb: float = typer.Option(2.0, help="Most megabytes the bundled ONNX file may weigh."),
) -> None:
    """Choose the bundled default model from a full run's exports and write its model card.

    Deliberate, never part of `dvc repro`: reads reports/export.json and reports/metrics.json,
    refuses a subset run or a model near chance, and replaces src/ferlab/bundled/.
    """
    with _one_line_errors():
        from ferlab.bundle import bundle as make_bundle
        from ferlab.config import load_params

        make_bundle(load_params(), max_ms=max_ms, max_mb=max_mb, log=typer.echo)


@app.command()
def evaluate(
    folder: str = typer.Argument(
        ..., help="Labelled faces: one subfolder per class (angry/, happy/, ... any case)."
    ),
    model: ModelPath = None,
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

    with _one_line_errors():
        settings = RealtimeSettings.load()
        classifier = load_classifier(model, tta_flip=tta_flip, logit_adjust_tau=tau)
        if tta_flip and (classifier.meta.get("views") or {}).get("flip"):
            typer.echo("--tta-flip: this model scores each face's mirror inside it already")
            classifier.tta_flip = False  # a second mirror would double the work, not the answer
        detector = None if no_detect else FaceDetector(score_threshold=settings.detect_score)
        result = evaluate_folder(
            folder,
            classifier,
            out,
            detector,
            detect_max_side=settings.detect_max_side,
            force=force,
            # as reports name models: the path, or the list of a mean's checkpoints
            model_file=(model[0] if len(model) == 1 else model) if model else "bundled model.onnx",
            log=typer.echo,
        )
    every, present = result["all_classes"], result["present_classes"]
    typer.echo(
        f"{result['faces']} faces in {result['images']} images"
        + (f" ({result['no_face']['count']} without a face)" if result["no_face"]["count"] else "")
        + f": accuracy {every['accuracy']:.4f}, balanced {every['balanced_accuracy']:.4f} over "
        f"8 classes; {present['accuracy']:.4f} / {present['balanced_accuracy']:.4f} over the "
        f"{len(result['classes_present'])} present -> {out}"
    )


TAU_HELP = (
    "Prior-corrected decision: logits − τ·log(training class prior) (τ = 1 trades accuracy for "
    "balanced accuracy: rare expressions are answered more often; see reports/study.md)."
)


def _pipeline(model: list[str] | None, threads: int, tau: float = 0.0, **overrides: object):
    """The per-frame pipeline with params.yaml's realtime settings (when run in the project)."""
    from ferlab.inference import load_classifier
    from ferlab.realtime import FramePipeline, RealtimeSettings

    settings = RealtimeSettings.load(**overrides)
    return FramePipeline(load_classifier(model, threads=threads, logit_adjust_tau=tau), settings)


MODEL_HELP = (
    "A .pt checkpoint or an .onnx export; repeat it with .pt checkpoints for the mean of their "
    "probabilities; default: the model bundled with ferlab."
)

# The options `video` and `camera` share, declared once.
VideoOut = Annotated[
    str | None,
    typer.Option("--out", help="Annotated video to write (.mp4); an existing folder is refused."),
]
TimelineCsv = Annotated[
    str | None,
    typer.Option("--csv", help="Per-frame CSV timeline to write; an existing folder is refused."),
]
ModelPath = Annotated[list[str] | None, typer.Option(help=MODEL_HELP)]
Threshold = Annotated[float | None, typer.Option(help="Override realtime.threshold.")]
Smoothing = Annotated[str | None, typer.Option(help="Override realtime.smoothing.")]
MaxFrames = Annotated[int | None, typer.Option(help="Stop after this many frames.")]
Threads = Annotated[int, typer.Option(help="CPU threads for the classifier (0: all).")]
Profile = Annotated[
    str | None,
    typer.Option(help="realtime.profiles entry, e.g. `pi` (1 thread, smaller, sparser detection)."),
]
Tau = Annotated[float, typer.Option(help=TAU_HELP)]


@app.command()
def predict(
    paths: Annotated[
        list[str], typer.Argument(help="Image files and/or folders (searched deeply).")
    ],
    no_detect: bool = typer.Option(
        False, "--no-detect", help="Inputs are already-cropped faces: skip face detection."
    ),
    model: ModelPath = None,
    out: str = typer.Option(
        "predictions.csv",
        help="CSV to write (one row per face); a folder (existing, or ending in /) gets "
        "predictions.csv inside it.",
    ),
    threshold: float = typer.Option(
        0.0, help='Label "not detected" below this top probability (0: always the top class).'
    ),
    tau: Tau = 0.0,
    strict: bool = typer.Option(
        False,
        "--strict",
        help="Stop at the first unreadable image and write no CSV. Without it such files are "
        f"named on stderr and get an `unreadable` row, and the exit status is {EXIT_SKIPPED}.",
    ),
) -> None:
    """Classify the faces in images: CSV of file, face, box, label, confidence, probabilities."""
    from ferlab.faces.detect import FaceDetector
    from ferlab.inference import load_classifier
    from ferlab.realtime import RealtimeSettings
    from ferlab.realtime.predict import predict_images

    target = _file_in_folder(out, "predictions.csv")
    with _one_line_errors():
        settings = RealtimeSettings.load()
        classifier = load_classifier(model, logit_adjust_tau=tau)
        detector = None if no_detect else FaceDetector(score_threshold=settings.detect_score)
        summary = predict_images(
            paths,
            classifier,
            target,
            detector,
            detect_max_side=settings.detect_max_side,
            threshold=threshold,
            log=typer.echo,
            strict=strict,
            on_unreadable=lambda message: typer.echo(f"error: {message}; skipped", err=True),
        )
    counts = ", ".join(f"{label} {n}" for label, n in summary.labels.most_common())
    typer.echo(
        f"{summary.images} images, {summary.faces} faces"
        + (f", {summary.without_face} images without a face" if summary.without_face else "")
        + f" -> {target}"
        + (f" ({counts})" if counts else "")
    )
    if summary.unreadable:
        typer.echo(
            f"error: {len(summary.unreadable)} of {summary.images} files could not be read "
            f"(rows labelled `unreadable` in {target}); replace or delete them, or use --strict",
            err=True,
        )
        raise typer.Exit(EXIT_SKIPPED)


@app.command()
def video(
    source: str = typer.Argument(..., help="Video file to annotate."),
    out: VideoOut = None,
    csv: TimelineCsv = None,
    model: ModelPath = None,
    threshold: Threshold = None,
    smoothing: Smoothing = None,
    max_frames: MaxFrames = None,
    threads: Threads = 0,
    profile: Profile = None,
    tau: Tau = 0.0,
) -> None:
    """Annotate a video file: boxes, labels, FPS, and a per-frame CSV timeline.

    Ctrl+C or SIGTERM stops after the current frame; the outputs hold every frame processed.
    """
    from ferlab.realtime import annotate_video
    from ferlab.realtime.video import check_outputs

    if not out and not csv:
        raise _fail("nothing to write: give --out annotated.mp4 and/or --csv timeline.csv")
    with _one_line_errors():
        check_outputs(source, out, csv)  # before the model loads: fail fast
        pipeline = _pipeline(
            model, threads, tau, threshold=threshold, smoothing=smoothing, profile=profile
        )
        result = annotate_video(source, pipeline, out, csv, max_frames=max_frames, log=typer.echo)
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
    out: VideoOut = None,
    csv: TimelineCsv = None,
    model: ModelPath = None,
    threshold: Threshold = None,
    smoothing: Smoothing = None,
    max_frames: MaxFrames = None,
    threads: Threads = 0,
    profile: Profile = None,
    tau: Tau = 0.0,
) -> None:
    """Live expression recognition from a camera: a window, an MJPEG stream or a video file.

    Ctrl+C or SIGTERM stops after the current frame; the outputs hold every frame processed.
    """
    from ferlab.realtime.camera import run_camera
    from ferlab.realtime.video import check_outputs

    with _one_line_errors():
        check_outputs(device, out, csv)  # before the model loads: fail fast
        pipeline = _pipeline(
            model, threads, tau, threshold=threshold, smoothing=smoothing, profile=profile
        )
        result = run_camera(device, pipeline, mode, port, out, csv, max_frames, log=typer.echo)
    if not result.complete:
        raise _fail(result.message)
    typer.echo(f"{result.message} at {result.fps:.1f} FPS")


@app.command()
def export(
    checkpoints: list[str] | None = typer.Argument(
        None,
        help="Checkpoint to export (default models/model.pt); several are exported as one "
        "graph, the mean of their probabilities.",
    ),
    out: str = typer.Option(
        "model.onnx",
        help="fp32 ONNX file to write; a folder (existing, or ending in /) gets model.onnx "
        "inside it.",
    ),
    int8: str = typer.Option(
        "none",
        help="Also write <out stem>.int8.onnx: none | dynamic | static (static "
        "calibrates on the cached training arrays).",
    ),
    arrays: str = typer.Option("data/arrays", help="Cached arrays, for static calibration."),
    opset: int = typer.Option(17, help="ONNX opset (17 or newer)."),
    tta_flip: bool = typer.Option(
        False, "--tta-flip", help="Score each face with its mirror too, inside the graph."
    ),
    crops: list[float] = typer.Option(
        [],
        "--crop",
        help="Also score this centre crop (fraction of the side kept, e.g. 0.92), inside the "
        "graph; repeatable. Each view costs a forward pass.",
    ),
) -> None:
    """Export a checkpoint to ONNX (metadata inside), optionally with an int8 copy and with
    test-time views inside the graph (what the export stage does with evaluate.tta_*)."""
    from ferlab.realtime.video import check_output_file

    checkpoints = checkpoints or ["models/model.pt"]
    target = _file_in_folder(out, "model.onnx")
    int8_target = target.with_suffix(".int8.onnx")
    with _one_line_errors():
        # Both outputs are checked before the export writes the first one.
        check_output_file(target, checkpoints)
        if int8 != "none":
            check_output_file(int8_target, checkpoints)
        from ferlab.export import export_onnx, quantize_int8
        from ferlab.inference import Views

        views = Views((1.0, *crops), tta_flip) if tta_flip or crops else None
        meta = export_onnx(checkpoints, target, opset, views=views)  # one item is that checkpoint
        shown = f", {views.count} test-time views" if views else ""
        typer.echo(f"{target}: fp32 ONNX, opset {opset}, variant {meta['variant']}{shown}")
        if int8 != "none":
            faces = None
            if int8 == "static":
                from ferlab.data.arrays import load_split
                from ferlab.export import sample_indices

                images, _, _ = load_split("train", meta["variant"], arrays)
                faces = images[sample_indices(len(images), 512, seed=0)]
            quantize_int8(target, int8_target, int8, faces)
            typer.echo(f"{int8_target}: int8 ONNX ({int8})")


# What `ferlab train-run` logs and prints, where the protocol was scored (the reference
# protocols need the votes file; a protocol with no test faces is left out).
TRAIN_RUN_PROTOCOLS = {
    "reference_private": "FER+ reference",
    "clean_test": "clean test",
    "test": "plurality test",
}


@app.command("train-run")
def train_run(
    name: str = typer.Argument(..., help="Run name: models/runs/NAME/ and reports/runs/NAME/."),
    overrides: list[str] = typer.Option(
        [], "--set", "-S", help="params.yaml override, e.g. -S model.name=baseline (repeatable)."
    ),
    fast: bool = typer.Option(
        False, "--fast", help="Train the live model (params `fast`, stage train_fast's job)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an earlier run of this NAME."),
) -> None:
    """Train and evaluate one variation outside the DAG, for side-by-side comparisons.

    The DVC pipeline (`dvc repro`, `dvc exp run`) is the way to reproduce the study; this
    command reuses the cached arrays to compare models or recipes quickly. The run is scored
    on the evaluate stage's protocols (FER+ reference, clean test, ...), exported to ONNX and
    timed per face (reports/runs/NAME/run.json, written last); `scripts/runs_table.py` lists
    runs side by side.
    """
    from ferlab.stage import Terminated, terminate_on_sigterm

    terminate_on_sigterm()
    try:
        with _one_line_errors():
            metrics, cost, out = _train_run(name, overrides, fast, force)
    except Terminated as stop:
        typer.echo(f"train-run {name} stopped by SIGTERM; its run was not finished", err=True)
        raise typer.Exit(stop.code) from None
    if metrics is None:  # a worker process: rank 0 reports
        return
    scored = ", ".join(
        f"{label} {metrics[protocol]['accuracy']:.4f} (balanced "
        f"{metrics[protocol]['balanced_accuracy']:.4f})"
        for protocol, label in TRAIN_RUN_PROTOCOLS.items()
        if protocol in metrics
    )
    typer.echo(
        f"{name}: {scored}; {cost['ms_per_face_1_thread']} ms a face, {cost['onnx_mb']} MB -> {out}"
    )


@contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """This process's stdout and stderr file descriptors (so C++ logs too) sent to `path`."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with path.open("wb") as sink:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        # Restored whatever happens, so the command's own error line is seen.
        with suppress(OSError):
            sys.stdout.flush()
            sys.stderr.flush()
        for fd, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)


def _committed_checkpoint(fast: bool) -> str:
    """The pipeline's checkpoint a run would replace: it is scored with that model's views."""
    return "models/fast.pt" if fast else "models/model.pt"


def _refuse_unexportable(job: TrainJob, views: Views, fast: bool) -> None:
    """A run ends by exporting its model to ONNX with its test-time views and timing it; an
    architecture, input size or set of views the exporter cannot take is refused now, in one
    line, rather than after the training (an untrained copy is exported to a scratch folder)."""
    import tempfile

    from ferlab.classes import CLASSES
    from ferlab.export import export_model
    from ferlab.inference import with_views
    from ferlab.models import build_model

    model = build_model(job.model, input_size=job.input_size, **job.options).eval()
    meta = {"model": {"name": job.model}, "input_size": job.input_size, "classes": list(CLASSES)}
    model, meta = with_views(model, meta, views)
    with tempfile.TemporaryDirectory(prefix="ferlab-export-check-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        try:
            # When it fails the exporter prints its whole graph from C++: kept aside.
            with _output_to(Path(tmp) / "exporter.log"):
                export_model(model, meta, onnx_path)
        except ValueError as exc:  # the export's own refusals (views without the whole face)
            raise ValueError(str(exc).replace(f"{onnx_path}: ", "this run's export: ")) from exc
        except RuntimeError as exc:  # the exporter's (torch.onnx.OnnxExporterError is one)
            reason = " ".join(str(exc).split("\n")[0].split(". ")[0].split())
            keys = (
                "fast.input_size, fast.model or fast.options"
                if fast
                else "model.input_size, model.name or the model's options"
            )
            raise ValueError(
                f"{job.model} at {job.input_size} px cannot be exported to ONNX ({reason}), "
                f"so the run could not be timed or deployed; change {keys} (the committed "
                "ones export)"
            ) from exc


def _refuse_study_model_overrides(overrides: list[str]) -> None:
    """`model.*` is the study model's group: with --fast it would change nothing trained, so
    the run would silently repeat the committed live model under another name."""
    for item in overrides:
        key, _, value = item.partition("=")  # apply_overrides' form: group.key=value
        if key == "model" or key.startswith("model."):
            parts = key.split(".")
            hint = f"fast.options.{parts[-1]}={value}" if len(parts) == 3 else "fast.options.<key>"
            raise ValueError(
                f"-S {item}: the live model (--fast) takes its options from fast.options, not "
                f"model.*; use -S {hint} (and -S fast.model=<name> for another architecture)"
            )


def _train_run(name: str, overrides: list[str], fast: bool, force: bool):
    from dataclasses import replace

    from ferlab.config import apply_overrides, data_path, load_params
    from ferlab.evaluation.evaluate import MODEL_NAME, EvaluateSettings
    from ferlab.training.distill import (
        require_teachers,
        teacher_bf16,
        teacher_mode,
        teacher_settings,
    )
    from ferlab.training.loop import TrainConfig
    from ferlab.training.run import TrainJob, init_distributed, train_job

    if not MODEL_NAME.match(name) or name.startswith("-"):
        raise ValueError(f"run name {name!r}: use letters, digits, _ or - (it names folders)")
    if fast:
        _refuse_study_model_overrides(overrides)
    params = apply_overrides(load_params(), overrides)
    checkpoint = Path("models/runs") / name / "model.pt"
    out = Path("reports/runs") / name
    job = (TrainJob.fast if fast else TrainJob.study)(params, checkpoint, out)
    worker = "WORLD_SIZE" in os.environ
    if not worker:
        earlier = [p for p in (checkpoint.parent, out) if p.exists()]
        if earlier and not force:
            raise ValueError(
                f"{earlier[0]}: a run named {name!r} exists; choose another NAME or pass --force"
            )
        # Everything that could stop the run is checked before hours of training.
        TrainConfig.from_params(job.train, seed=params["seed"]).validate()
        settings = EvaluateSettings.from_params(params)
        _refuse_unexportable(job, settings.views_of_checkpoint(_committed_checkpoint(fast)), fast)
        _require_arrays(job.train["variant"], "data/arrays", ("train", "val", "test"))
        teachers, teacher_weight = teacher_settings(job.train)
        # Bad teacher values are refused now, not hours into the run.
        teacher_mode(job.train)
        teacher_bf16(job.train)
        require_teachers(teachers if teacher_weight > 0 else [])
        for needed in ("data/manifest.csv", "reports/leakage.json"):
            if not Path(needed).is_file():
                raise FileNotFoundError(
                    f"{needed}: missing (the clean test needs it); run `dvc repro validate`"
                )
        # A replaced run's reports go first, so its old figures never sit beside new ones.
        for stale in ("run.json", "metrics.json", "train.json"):
            (out / stale).unlink(missing_ok=True)
        # The train stages launch `${train.processes}` torchrun processes; so does this, and
        # gets the stage's batches and weights. torchrun replaces this process (signals and
        # exit status pass straight through); its workers run this command again.
        processes = int(params["train"].get("processes", 1))
        if processes > 1:
            args = ["train-run", "--force", *(["--fast"] if fast else [])]
            args += [a for o in overrides for a in ("-S", o)] + ["--", name]
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
            command += [f"--nproc_per_node={processes}", "-m", "ferlab.cli", *args]
            sys.stdout.flush()
            os.execv(sys.executable, command)
    if init_distributed(job.train.get("device", "auto")):
        import torch.distributed as dist

        if dist.get_rank() != 0:
            train_job(params, job)
            return None, None, out

    from ferlab import tracking
    from ferlab.evaluation.evaluate import evaluate_models
    from ferlab.export import export_onnx, per_face_ms
    from ferlab.io import write_json
    from ferlab.machine import cpu_name

    # The evaluate stage's settings, scoring this run's checkpoint only, with the views of the
    # committed model the run would replace (so its figures compare with that model's).
    settings = EvaluateSettings.from_params(params)
    views = settings.views_of_checkpoint(_committed_checkpoint(fast))
    evaluate = replace(
        settings, models={name: str(checkpoint)}, tta_crops_by_model={name: views.crops}
    )
    stage = "train_fast" if fast else "train"
    with tracking.stage_run(stage, params, params["mlflow"]["experiment"], f"train-run {name}"):
        train_job(params, job)
        votes = params["data"].get("votes")
        metrics = evaluate_models(
            evaluate,
            "data/arrays",
            out,
            votes_csv=data_path(votes) if votes else None,
            log=typer.echo,
        )[name]
        onnx_path = checkpoint.with_suffix(".onnx")
        export_onnx(checkpoint, onnx_path, views=views)  # as scored, as deployed
        # Batch 1, one thread, ONNX Runtime: the live loop's cost of a face on this CPU.
        cost = {
            "onnx_mb": round(onnx_path.stat().st_size / 1e6, 3),
            "ms_per_face_1_thread": round(per_face_ms(onnx_path, threads=1), 3),
        }
        tracking.log_metrics(
            {
                **{
                    f"{protocol}_{key}": metrics[protocol][key]
                    for protocol in TRAIN_RUN_PROTOCOLS
                    if protocol in metrics
                    for key in ("accuracy", "balanced_accuracy")
                },
                **cost,
            }
        )
        run = {
            "name": name,
            "job": stage,
            "overrides": list(overrides),
            "model": job.model,
            "options": job.options,
            "input_size": job.input_size,
            "views": views.to_json(),  # scored and exported with
            **cost,
            "cpu": cpu_name(),
        }
        write_json(out / "run.json", run)  # last: a run.json means the run is complete
    return metrics, cost, out


def main() -> None:
    app()


if __name__ == "__main__":
    main()
