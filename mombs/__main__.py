"""``python -m mombs``: the ``mombs`` command (:mod:`mombs.cli`).

This wrapper is also the console script's entry point. It adds one thing to
:func:`mombs.cli.main`: an optional dependency that is not installed ends the
command with one line naming the extra that installs it
(``pip install 'mombs[cli]'``), not a traceback or a bare
``No module named 'yaml'``.
"""

from __future__ import annotations

import sys

from ._extras import missing_extra


def main(argv: list[str] | None = None) -> int:
    """Runs ``mombs`` with ``argv`` (``sys.argv[1:]`` when ``None``); returns the exit status."""
    from .cli import main as cli_main

    try:
        return cli_main(argv)
    except ModuleNotFoundError as err:  # an import before the run started (YAML for --config / --set)
        line = missing_extra(err, "mombs")
        if line is None:
            raise
        raise SystemExit(f"mombs: {line}") from None
    except SystemExit as stop:
        # A run's error is already one line; if its cause is a missing optional
        # module, say which extra installs it instead of 'No module named ...'.
        cause = stop.__context__
        if type(cause) is ModuleNotFoundError and missing_extra(cause) is not None:
            raise SystemExit(f"mombs: {missing_extra(cause, 'this run')}") from None
        raise


if __name__ == "__main__":
    sys.exit(main())
