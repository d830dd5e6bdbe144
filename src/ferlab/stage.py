"""What every stage script shares: errors a user can fix end the stage with one line."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from ferlab.data import DataError
from ferlab.io import OutputError, output_error

# Bad input data and outputs that cannot be written: the message already names the file and
# the fix, so a traceback would only hide it.
USER_ERRORS: tuple[type[BaseException], ...] = (DataError, OutputError)


class Terminated(SystemExit):
    """SIGTERM as an exception, so `finally` blocks run: temporaries are removed, the MLflow
    run ends FAILED instead of staying RUNNING, and child processes are not orphaned."""


def terminate_on_sigterm() -> None:
    """Turn SIGTERM (what `kill` and DVC send) into `Terminated` in the main thread."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise Terminated(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def run_stage(name: str, main: Callable[[], object]) -> int:
    """Run a stage's `main`; print `<name> failed: <message>` and return 1 on a user error.

    The MLflow run opened inside `main` has already ended as FAILED when this prints.
    OSErrors for a full disk or missing write permission raised outside `ferlab.io` (by a
    library writing its own file) get the same treatment when they name their file.
    """
    terminate_on_sigterm()
    try:
        main()
    except USER_ERRORS as exc:
        print(f"{name} failed: {exc}", file=sys.stderr)
        return 1
    except Terminated:
        print(f"{name} stopped by SIGTERM; its outputs were not written", file=sys.stderr)
        return 143
    except FileNotFoundError as exc:
        # A missing input: our loaders name the file and the stage to run first.
        detail = str(exc) if exc.filename is None else f"{exc.filename}: {exc.strerror}"
        print(f"{name} failed: {detail}", file=sys.stderr)
        return 1
    except OSError as exc:
        clear = output_error(Path(exc.filename), exc) if isinstance(exc.filename, str) else None
        if clear is None:
            raise
        print(f"{name} failed: {clear}", file=sys.stderr)
        return 1
    return 0
