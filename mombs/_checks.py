"""Argument checks at the door: one implementation of each, shared by the library and the runner.

Each raises :class:`ValueError` naming the argument, the value given and what
is allowed. numpy scalars count as Python numbers; ``bool`` is never an integer.
"""

from __future__ import annotations

import math
import numbers

__all__ = ["check_choice", "check_int", "check_real", "is_int", "is_real"]


def is_int(value) -> bool:
    """An integer (Python or numpy), not a ``bool``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value) -> bool:
    """A finite real number (Python or numpy), not a ``bool``."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_int(name: str, value, low: int | None = None, high: int | None = None, *, optional: bool = False) -> None:
    """Checks that ``value`` is an integer in ``[low, high)``.

    Args:
        name: the argument's name, for the message.
        value: what was given.
        low: smallest allowed value (inclusive), or ``None`` for no bound.
        high: bound above (exclusive), or ``None`` for no bound.
        optional: ``None`` is allowed too.

    Raises:
        ValueError: ``"{name}={value!r} must be an integer >= {low}"`` (or ``in [low, high)``).
    """
    if optional and value is None:
        return
    if not is_int(value) or (low is not None and value < low) or (high is not None and value >= high):
        if low is not None and high is not None:
            allowed = f" in [{low}, {high})"
        elif low is not None:
            allowed = f" >= {low}"
        elif high is not None:
            allowed = f" < {high}"
        else:
            allowed = ""
        raise ValueError(f"{name}={value!r} must be an integer{allowed}" + (" or null" if optional else ""))


def check_real(
    name: str,
    value,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
    why: str = "",
) -> None:
    """Checks that ``value`` is a finite number between ``low`` and ``high``.

    Args:
        name: the argument's name, for the message.
        value: what was given.
        low: the lower bound; ``low_open`` excludes it.
        high: the upper bound; ``high_open`` excludes it.
        optional: ``None`` is allowed too.
        why: appended to the message (say why the range is what it is).

    Raises:
        ValueError: naming the argument, the value and the allowed range.
    """
    if optional and value is None:
        return
    ok = (
        is_real(value)
        and (value > low if low_open else value >= low)
        and (value < high if high_open else value <= high)
    )
    if not ok:
        if high == math.inf and low == -math.inf:
            allowed = "finite"
        elif high == math.inf:
            allowed = f"{'>' if low_open else '>='} {low:g}"
        elif low == -math.inf:
            allowed = f"{'<' if high_open else '<='} {high:g}"
        else:
            allowed = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name}={value!r} must be a number {allowed}" + (" or null" if optional else "") + why)


def check_choice(name: str, value, choices) -> None:
    """Checks that ``value`` is one of ``choices`` (names); the message lists them sorted."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}={value!r} is not known; choose one of {sorted(choices)}")
