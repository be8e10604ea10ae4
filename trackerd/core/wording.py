"""Small pieces of English for trackerd's log lines: counts with their nouns. Pure, no I/O."""

from __future__ import annotations


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``1 connection``, ``2 connections``; many is the plural when not noun + "s".

    No digit grouping: commas separate the items of a log line.
    """
    return f"{count} {noun if count == 1 else many or noun + 's'}"


def more_since(suppressed: int) -> str:
    """`` (3 more since)`` after a rate-limited warning; nothing when there were none."""
    return f" ({suppressed} more since)" if suppressed else ""
