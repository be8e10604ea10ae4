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
import operator
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, cast

from servertracker import accel
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
#: What str.strip() strips (and the pattern's \s is), in ASCII text, but the line
#: break that joins a batch (counted apart).
_ASCII_SPACE: Final = "".join(chr(c) for c in range(128) if chr(c).isspace() and c != 10)


def sent_senders(values: list[str | None]) -> list[str | None]:
    """``[sent_sender(v) if v else v for v in values]`` (property tests hold it to
    that), for a whole batch, with no Python statement a value on the batches a
    worker sees: ASCII without space, angle brackets only first and last in a
    sender and "@" only between two other characters, mixed forms and the null
    senders (None, "" and "<>") among them. The batch is joined, its line breaks,
    brackets and "@" found by numpy (a few bytes a sender), the domain parts come
    from one split of it, and each sender's part or whole is picked by one
    itemgetter. Any other batch goes a value at a time (a regular expression a
    value, about 1 µs). Called for a connection that sends interned only, where
    numpy is loaded (value_tables.py). The C extension, when built, does it a
    value at a time in one C loop (_record_queue.c; tests/test_record_queue_c.py
    holds it to sent_sender()).
    """
    if _c_sent_senders is not None:
        sent = _c_sent_senders(values)
        if sent is not None:
            return sent
    import numpy as np  # loaded already: see above

    try:
        joined = "\n".join(cast("list[str]", values))
    except TypeError:  # None among them: as "" (both go as they came)
        joined = "\n".join([value or "" for value in values])
    if "@" not in joined:
        return values  # bare domain parts and literals: nothing to cut
    count = len(values)
    if joined.count("@") > count:
        # Senders with several "@": numpy's work below grows with them ("a@" * 31
        # + "a" 1,024 times held the GIL 1.6 ms, one by one 0.5 ms), while a batch
        # the usual forms make holds at most one a sender.
        return _one_by_one(values)
    if not joined.isascii() or any(space in joined for space in _ASCII_SPACE):
        return _one_by_one(values)
    # Each byte's class (_CLASSES), with a line break before and after the batch:
    # the special bytes' positions, each sender's bounds and which sender holds each.
    classes = np.frombuffer(b"\1" + joined.encode("ascii").translate(_CLASSES) + b"\1", np.uint8)
    special = np.flatnonzero(classes != 0)  # a bool array's is several times faster
    kinds = classes[special]
    bounds = special[kinds == _LINE]
    if len(bounds) != count + 1 or int(np.diff(bounds).max()) > MAX_VALUE_LENGTH + 1:
        return _one_by_one(values)  # a value holds a line break, or is too long
    at, opens, closes = special[kinds == _AT], special[kinds == _OPEN], special[kinds == _CLOSE]
    if (
        classes[at - 1].any()  # a local part missing, or "<@", "@@", "\n@"
        or classes[at + 1].any()  # a domain missing, or "@>" ...
        or (classes[opens - 1] != _LINE).any()  # a "<" not first in its sender
        or (classes[closes + 1] != _LINE).any()  # a ">" not last
    ):
        return _one_by_one(values)
    ats = np.bincount(bounds.searchsorted(at) - 1, minlength=count)
    # Cut (as sent_sender() would) exactly a sender that holds one "@" and either
    # no bracket or "<" first and ">" last.
    usual = ats == 1
    if opens.size or closes.size:
        first = np.bincount(bounds.searchsorted(opens) - 1, minlength=count)
        usual &= first == np.bincount(bounds.searchsorted(closes) - 1, minlength=count)
    if not usual.any():
        return values
    # The pieces between "@" and line breaks, ">" dropped: a sender's last piece
    # (its domain part, when it is cut) comes after one piece for each sender
    # before it and one for each "@" up to its own. The others go whole: picked
    # from the values, after the pieces.
    pieces = (joined.replace(">", "") if closes.size else joined).replace("\n", "@").split("@")
    if ats.all() and usual.all():  # a uniform batch: every sender local@domain
        return cast("list[str | None]", pieces[1::2])
    lasts = np.cumsum(ats) + np.arange(count)
    picks = np.where(usual, lasts, np.arange(len(pieces), len(pieces) + count)).tolist()
    pick = operator.itemgetter(*picks)
    return list(pick([*pieces, *values])) if count > 1 else [pick([*pieces, *values])]


#: The class of each byte of a batch for sent_senders(): line break 1, "<" 2,
#: ">" 3, "@" 4, any other 0.
_LINE, _OPEN, _CLOSE, _AT = 1, 2, 3, 4
_CLASSES: Final = bytes(
    {ord("\n"): _LINE, ord("<"): _OPEN, ord(">"): _CLOSE, ord("@"): _AT}.get(byte, 0)
    for byte in range(256)
)


def _one_by_one(values: list[str | None]) -> list[str | None]:
    return [sent_sender(value) if value else value for value in values]


def _c_split() -> Callable[[list[str | None]], list[str | None] | None] | None:
    """sent_senders()'s C twin, if it is to run and was built with this length bound."""
    module = accel.load("servertracker._record_queue")
    if module is None or module.MAX_VALUE_LENGTH != MAX_VALUE_LENGTH:
        return None
    split: Callable[[list[str | None]], list[str | None] | None] = module.sent_senders
    return split


_c_sent_senders = _c_split()
