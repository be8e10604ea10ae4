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
#: What str.strip() strips (and the pattern's \s is), in ASCII text, but the line
#: break that joins a batch (counted apart).
_ASCII_SPACE: Final = "".join(chr(c) for c in range(128) if chr(c).isspace() and c != 10)


def sent_senders(values: list[str | None]) -> list[str | None]:
    """``[sent_sender(v) if v else v for v in values]`` (property tests hold it to
    that), for a whole batch, and cheaply when the batch is uniform: every sender
    but the null ones (None, "", "<>") ``local@domain``, or every one
    ``<local@domain>``, in ASCII without space. What holds for the whole batch is
    checked on the batch joined, and the domain parts come from one split of it:
    C loops, a new string per value and no Python statement. Any other batch goes
    a value at a time. (The flusher holds the GIL meanwhile: a regular expression
    costs several times more a value, and so does a method call per value.)
    """
    texts = [value or "" for value in values] if None in values else cast("list[str]", values)
    joined = "\n".join(texts)
    if "@" not in joined:
        return values  # bare domain parts and literals: nothing to cut
    nulls = "<>" in joined and "<>" in texts
    if joined.count("@") != len(texts) - texts.count("") - (texts.count("<>") if nulls else 0):
        # Not uniform (a mixed batch): one "@" a sender is needed, and this one
        # test, a few C passes, saves the rest (a quarter of a mixed batch's cost).
        return _one_by_one(values)
    if (
        joined.count("\n") != len(texts) - 1  # a value holds a line break
        or not joined.isascii()
        or any(space in joined for space in _ASCII_SPACE)
        or max(map(len, texts)) > MAX_VALUE_LENGTH
    ):
        return _one_by_one(values)
    senders = texts
    if nulls or "" in texts:  # the null sender, as "", None or "<>": cut the others
        senders = list(filter(_NULL_SENDER.__ne__, filter(None, texts)))
        joined = "\n".join(senders)
        if not senders:
            return values
    cut = _cut_uniform(joined, len(senders))
    if cut is None:
        return _one_by_one(values)
    sent = cast("list[str | None]", cut)
    if senders is not texts:
        null = sorted([*positions(texts, ""), *positions(texts, _NULL_SENDER)] if nulls else
                      positions(texts, ""))  # fmt: skip
        for index in null:  # in order: each lands at its own index
            sent.insert(index, values[index])
    return sent


#: Every byte but the angle brackets, "@" and the line break: what bytes.translate()
#: deletes to leave a batch's skeleton, "@\n@\n...@" when each sender holds one
#: "@", "<@>\n<@>\n...<@>" when each is also wrapped in one pair of brackets.
_NOT_SKELETON: Final = bytes(byte for byte in range(256) if byte not in b"<>@\n")


def _cut_uniform(joined: str, count: int) -> list[str] | None:
    """The domain parts of ``count`` senders joined by line breaks (ASCII, no other
    space, none empty), if every one is ``local@domain`` or every one is
    ``<local@domain>``; None otherwise."""
    skeleton = joined.encode("ascii").translate(None, _NOT_SKELETON)
    if skeleton[:1] == b"<":
        if (
            skeleton != b"<@>\n" * (count - 1) + b"<@>"
            or joined[0] != "<"  # each "<" opens a sender, each ">" closes one
            or joined[-1] != ">"
            or joined.count("\n<") != count - 1
            or joined.count(">\n") != count - 1
        ):
            return None
        parts = joined.replace(">", "").replace("\n", "@").split("@")
        empty = "<"  # a local part of "<" alone
    elif skeleton == b"@\n" * (count - 1) + b"@":
        parts = joined.replace("\n", "@").split("@")
        empty = ""
    else:
        return None  # a sender without "@", with more than one, or an angle bracket
    if "" in parts or empty in parts:
        return None  # a local part or a domain missing
    return parts[1::2]


_NULL_SENDER: Final = "<>"


def _one_by_one(values: list[str | None]) -> list[str | None]:
    return [sent_sender(value) if value else value for value in values]
