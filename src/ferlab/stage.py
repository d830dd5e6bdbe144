"""What every stage script shares: errors a user can fix end the stage with one line."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from ferlab.data import DataError
from ferlab.io import OutputError, output_error

# Bad input data and outputs that cannot be written: the message already names the file and
# the fix, so a traceback would only hide it.
USER_ERRORS: tuple[type[BaseException], ...] = (DataError, OutputError)


def run_stage(name: str, main: Callable[[], object]) -> int:
    """Run a stage's `main`; print `<name> failed: <message>` and return 1 on a user error.

    The MLflow run opened inside `main` has already ended as FAILED when this prints.
    OSErrors for a full disk or missing write permission raised outside `ferlab.io` (by a
    library writing its own file) get the same treatment when they name their file.
    """
    try:
        main()
    except USER_ERRORS as exc:
        print(f"{name} failed: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        clear = output_error(Path(exc.filename), exc) if isinstance(exc.filename, str) else None
        if clear is None:
            raise
        print(f"{name} failed: {clear}", file=sys.stderr)
        return 1
    return 0
