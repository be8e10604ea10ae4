"""The MAIL FROM split rule: which part of a sender is its domain. Pure, no I/O.

trackerd's normaliser (trackerd/core/normalise.py) imports the rule from here,
so the daemon and the worker library cannot disagree on it: the daemon splits
every sender it receives with split_sender() / split_senders(), and a worker
replaces a sender by its domain part before sending (sent_senders()) only
where that part gives the daemon the same result as the whole.

Why a worker splits at all: a whole address is one of many per domain, so the
worker's value tables (value_tables.py) number far fewer distinct values, and
the daemon's split costs nothing on the usual forms.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator, Sequence
from typing import Any, Final, cast

from servertracker.protocol import MAX_VALUE_LENGTH


class Outcome(enum.Enum):
    """Why a value was not counted."""

    IGNORED = "ignored"  # empty, or the null sender <>: not an error, as in the original
    REJECTED = "rejected"  # malformed: tallied so an operator can see it


IGNORED: Final = Outcome.IGNORED
REJECTED: Final = Outcome.REJECTED


def split_sender(value: str | None) -> str | Outcome:
    """The domain part of a sender given as a whole MAIL FROM address or as its domain part.

    Angle brackets, surrounding space and a source route are removed, and the text
    after the last ``@`` returned (the whole text if there is no ``@``). IGNORED for
    an empty value or the null sender ``<>``, REJECTED for a malformed address.
    This runs for every record, so it takes few steps on the common path.
    """
    if not value:
        return IGNORED
    text = value.strip()
    if len(text) > MAX_VALUE_LENGTH:
        return REJECTED
    if text[-1:] == ">":
        if text[:1] != "<":
            return REJECTED
        text = text[1:-1].strip()
    elif text[:1] == "<":
        return REJECTED
    if not text:
        return IGNORED
    if text[0] == "@":
        # An RFC 5321 source route "@relay,@relay:user@domain": the sender follows it.
        _route, colon, text = text.partition(":")
        if not colon:
            return REJECTED
    at = text.rfind("@")
    if at < 0:
        return text  # the domain part alone, as the original's callers passed it
    if at == 0 or at == len(text) - 1:
        return REJECTED  # no local part, or no domain
    return text[at + 1 :]


# The usual senders, with no space, angle bracket or second "@" in them: a bare
# domain part (what workers send since they split), "local@domain",
# "<local@domain>" and "<domain>", for which split_sender() returns the domain
# part: group 1 (bracketed) or 2. Matched one line per value, for a whole batch
# at once; possessive repeats, so a line is read once and never backtracked. Any
# other line gives "" and split_sender() decides.
_PLAIN = r"[^\s<>@]"
_USUAL_SENDER_LINES = re.compile(
    rf"^(?:<(?:{_PLAIN}++@)?({_PLAIN}++)>|(?:{_PLAIN}++@)?({_PLAIN}++)|.*)$", re.MULTILINE
)


def split_senders(values: Sequence[str | None]) -> list[str | Outcome]:
    """``[split_sender(v) for v in values]``, with the same results (a property test
    holds them to it), but without a Python call per value on the usual forms: a
    batch of bare domain parts is seen to be one by a few scans of the whole, and
    the other usual forms are split by one regular-expression pass."""
    # None and "" are both IGNORED: "" can be joined.
    texts = cast("Sequence[str]", [v or "" for v in values] if None in values else values)
    joined = "\n".join(texts)
    # Values that are too long, or hold line breaks of their own (which would shift
    # every line after them), are left to split_sender() one by one.
    if joined.count("\n") != len(texts) - 1 or max(map(len, texts)) > MAX_VALUE_LENGTH:
        return list(map(split_sender, texts))
    if "@" not in joined and "<" not in joined and ">" not in joined:
        # No value empty or holding space either, if splitting at space gives them
        # back: then each is its own domain part.
        whole = texts if type(texts) is list else list(texts)
        if joined.split() == whole:
            return list(whole)
    found = _USUAL_SENDER_LINES.findall(joined)
    if len(found) != len(texts):
        return list(map(split_sender, texts))
    parts: list[str | Outcome] = list(map("".join, found))  # the group that matched
    for index in positions(parts, ""):
        parts[index] = split_sender(texts[index])
    return parts


def positions(items: list[Any], value: object) -> Iterator[int]:
    """The indices at which value is in items, found by list.count and list.index
    (C loops; no ValueError to raise and catch at the end, which costs more than
    the search in a small batch). The caller may replace each item as it goes."""
    index = -1
    for _ in range(items.count(value)):
        index = items.index(value, index + 1)
        yield index


# --- what a worker sends ------------------------------------------------------


def sent_sender(value: str) -> str:
    """What a worker sends for the sender ``value``: the domain part of the usual
    forms, ``local@domain`` and ``<local@domain>`` (literals alike), else ``value``.

    In those forms (no space, no other angle bracket or "@", within the length
    bound) split_sender() returns the part, and returns the part unchanged when
    given it: so the daemon classifies exactly the same text either way, and
    every count and tally is the same. Anything unusual (a source route, a quoted
    local part, space anywhere, ``<>``, a missing part, an over-long value) goes
    as it came, and the daemon decides.
    """
    if len(value) <= MAX_VALUE_LENGTH:
        usual = _USUAL_SENDER.fullmatch(value)
        if usual is not None:
            return usual[1] or usual[2]
    return value


# The usual forms whose domain part a worker sends: "local@domain" or
# "<local@domain>" with no space, angle bracket or second "@" in them.
_USUAL_SENDER = re.compile(r"<[^\s<>@]+@([^\s<>@]+)>|[^\s<>@]+@([^\s<>@]+)")
# The same, for a whole batch joined by line breaks, cut to the domain part by two
# substitutions (brackets first, then the local part); other lines stay as they are.
_BRACKETED = re.compile(r"^<([^\s<>@]+@[^\s<>@]+)>$", re.MULTILINE)
_LOCAL_PART = re.compile(r"^[^\s<>@]+@(?=[^\s<>@]+$)", re.MULTILINE)


def sent_senders(values: list[str | None]) -> list[str | None]:
    """``[sent_sender(v) if v else v for v in values]`` (a property test holds it to
    that), cut by two regular-expression passes over the whole batch: no Python
    statement per value on the usual forms. None stays None."""
    texts = [value or "" for value in values] if None in values else cast("list[str]", values)
    joined = "\n".join(texts)
    # A value holding a line break would shift every line after it; an over-long
    # one must stay whole (the daemon rejects it whole): both rare, one by one.
    if joined.count("\n") != len(texts) - 1 or max(map(len, texts), default=0) > MAX_VALUE_LENGTH:
        return [sent_sender(value) if value else value for value in values]
    if "@" not in joined:
        return values  # bare domain parts and literals: nothing to cut
    cut = _LOCAL_PART.sub("", _BRACKETED.sub(r"\1", joined))
    lines = cast("list[str | None]", cut.split("\n"))
    if texts is not values:
        for index in positions(values, None):
            lines[index] = None
    return lines
