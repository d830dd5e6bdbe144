"""The `ferlab` command line: thin commands over the library."""

from __future__ import annotations

import os

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
    checkpoint: str = typer.Argument("models/model.pt", help="Checkpoint to score."),
    arrays: str = typer.Option("data/arrays", help="Folder of cached arrays (preprocess stage)."),
    reports: str = typer.Option("reports", help="Where metrics and figures are written."),
) -> None:
    """Score a checkpoint on the cached val and test arrays."""
    from ferlab.evaluation.evaluate import evaluate_checkpoint

    results = evaluate_checkpoint(checkpoint, arrays, reports)
    for split in ("val", "test"):
        m = results[split]
        typer.echo(f"{split}: accuracy {m['accuracy']:.4f} balanced {m['balanced_accuracy']:.4f}")


if __name__ == "__main__":
    app()
