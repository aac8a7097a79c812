"""Warnings as the command prints them: one line, ``mombs: warning: ...``.

The command line sets :data:`warnings.formatwarning` to :func:`warning_line`
unless ``--debug`` is given; ``mombs compare``'s worker processes take the same
setting from their parent (:mod:`mombs.compare`), so a warning raised in a run
reads the same whether ``jobs`` is 1 or more.
"""

from __future__ import annotations


def warning_line(message, category, filename, lineno, line=None) -> str:
    """A warning as the one line ``mombs: warning: ...`` (where it was raised is behind --debug).

    Args:
        message: The warning or its text; runs of whitespace, newlines included, become one space.
        category: The warning's class (not shown).
        filename: Where it was raised (not shown).
        lineno: The line it was raised on (not shown).
        line: The source line (not shown).

    Returns:
        The line, ending in a newline.
    """
    return f"mombs: warning: {' '.join(str(message).split())}\n"
