"""argparse ``type=`` validators for trackerd's options: ranges, modes, users, groups.

Each one turns the text into the value or raises ArgumentTypeError with a message
that says what is wrong, so argparse reports it next to the option's name and a
range is never checked again after parsing.
"""

from __future__ import annotations

import argparse
import grp
import pwd
from collections.abc import Callable


def _number(kind: type[int] | type[float], text: str) -> int | float:
    try:
        return kind(text)
    except ValueError:
        noun = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None


def int_between(low: int, high: int) -> Callable[[str], int]:
    """A whole number in [low, high]."""

    def parse(text: str) -> int:
        value = int(_number(int, text))
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, not {value}")
        return value

    parse.__name__ = "number"
    return parse


def seconds_between(low: float, high: float) -> Callable[[str], float]:
    """A duration in seconds in [low, high] (not NaN, not infinite)."""

    def parse(text: str) -> float:
        value = float(_number(float, text))
        if not low <= value <= high:  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g} seconds")
        return value

    parse.__name__ = "seconds"
    return parse


def file_mode(text: str) -> int:
    """An octal permission mode such as 0660 or 660."""
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode such as 0660") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"{text!r} is not a permission mode (0 to 0777)")
    return mode


def user_id(text: str) -> int:
    """A user, by name or number."""
    if text.isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        raise argparse.ArgumentTypeError(f"no such user: {text}") from None


def group_id(text: str) -> int:
    """A group, by name or number."""
    if text.isdigit():
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise argparse.ArgumentTypeError(f"no such group: {text}") from None


#: What a component adds its options to: the parser itself or one of its groups.
Arguments = argparse._ActionsContainer
