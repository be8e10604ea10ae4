"""How a Client's arguments are checked: counts and seconds, each in its range.

Checked once, at construction: a wrong value would otherwise fail far from its
cause (the daemon refusing every intern request, a queue that drops every
record, a flusher spinning on a zero wait). Pure, no I/O.
"""

from __future__ import annotations

import math
import operator


def whole(name: str, value: object, low: int, high: int | None = None) -> int:
    """A Client parameter that counts something: an int (not a bool) in low..high."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not a bool")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}") from None
    if number < low or (high is not None and number > high):
        bounds = f"from {low:,} to {high:,}" if high is not None else f"at least {low:,}"
        raise ValueError(f"{name} must be {bounds}, not {number:,}")
    return number


def seconds(name: str, value: object, *, zero: bool) -> float:
    """A Client parameter in seconds: a finite number, > 0 (or >= 0 when zero is allowed)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not zero):
        bounds = "a finite number >= 0" if zero else "a finite number > 0"
        raise ValueError(f"{name} must be {bounds}, not {seconds!r}")
    return seconds
