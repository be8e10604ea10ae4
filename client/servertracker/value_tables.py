"""Value tables keyed by Python's hash(): whether hash() may key them at all, and
a worker's numbering of the values it sends (the "interned" message).

Both sides keep tables keyed by hash() of a raw value, never by the value: the
daemon's raw-value caches (trackerd/core/raw_cache.py) and a worker's numbering
of the values it sends. That is safe only while hash() of a str is SipHash keyed
with the interpreter's own random secret; with PYTHONHASHSEED set, anyone could
reverse a key by trying values, so both sides turn their tables off.

ValueTables numbers a connection's two columns (docs/protocol.md, "Interned
values"): a value new to the connection takes the next id, first in, first out,
and its text goes in the message that first uses it; a value known goes as its id.
Pure, no I/O.
"""

from __future__ import annotations

import array
import bisect
import collections
import itertools
import operator
import os
import sys
from collections.abc import Callable, Iterator
from typing import Final, TypeAlias, cast

from servertracker import protocol


def hash_is_secret() -> bool:
    """Whether hash() of a str is keyed with a random secret in this interpreter."""
    seed = os.environ.get("PYTHONHASHSEED", "random")
    return bool(sys.flags.hash_randomization) and seed == "random"


# --- a worker's numbering of the values it sends (the "interned" message) ------

#: The reference "not known" (a None value).
NIL: Final = protocol.INTERNED_NIL
#: Python's hash() never returns -1: the mark of an id not defined yet.
_UNDEFINED: Final = -1
#: A message's size, bounded before it is encoded: each new string counts as 4
#: bytes a character (UTF-8's most) plus a header, each reference 4 bytes; each
#: column gets half of a frame, less room for the rest of the message.
_COLUMN_BYTES: Final = (protocol.MAX_MESSAGE_SIZE - 64) // 2
_STRING_HEADER: Final = 5
_REF_SIZE: Final = protocol.INTERNED_REF_SIZE
_NONE_HASH: Final = hash(None)
#: A message defining at most this many values in a column fits its half of a
#: frame whatever their length (values are cut to one over the protocol's limit).
_FEW_TEXTS: Final = (_COLUMN_BYTES - _REF_SIZE * protocol.MAX_PAIRS_PER_MESSAGE) // (
    _STRING_HEADER + 4 * (protocol.MAX_VALUE_LENGTH + 1)
)


class _Numbered:
    """One column of a batch, numbered: its references and the ids it defines.

    The definitions are ``texts[i]`` for id ``ids[i]``, made by the record at
    ``positions[i]`` (None on the fast path, where every definition is made in
    one message and the positions are found only if the other column cuts it).
    ``cuts`` are the records before which a message must end.
    """

    __slots__ = ("cuts", "hashes", "ids", "positions", "refs", "texts")

    def __init__(
        self,
        refs: array.array[int],
        ids: list[int],
        texts: list[str],
        positions: list[int] | None,
        cuts: list[int],
        hashes: list[int],
    ) -> None:
        self.refs, self.ids, self.texts = refs, ids, texts
        self.positions, self.cuts, self.hashes = positions, cuts, hashes

    def definition_positions(self) -> list[int]:
        if self.positions is None:
            # Each defined value's first record (fast path: one id per new hash).
            index = self.hashes.index
            self.positions = [index(hash(text)) for text in self.texts]
        return self.positions


class ValueTable:
    """One column's table: hash() of a value -> id, id -> hash, ids reused FIFO.

    Never the value: only the first message that uses a value carries its text.
    Two values whose 64-bit hashes collide count as one (docs/protocol.md); so
    does a str whose hash equals None's, which counts as "not known".
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._ids: dict[int, int] = {_NONE_HASH: NIL}
        # id -> hash: the int objects the dict holds as keys, so 8 bytes an id.
        self._hashes: list[int] = [_UNDEFINED] * size
        self._next = 0  # the id the next new value takes
        self._full = False  # every id defined: a new value evicts the oldest

    def number(self, values: list[str | None]) -> _Numbered:
        """Number a batch's values, defining ids for the new ones.

        The usual batch takes a few passes in C (hash, look up, pick out the new
        values) and no Python statement per value. A batch whose new values would
        evict an id it references, or wrap around the table, or make a message too
        large, goes a value at a time (_number_one_by_one).
        """
        ids = self._ids
        try:  # every value known: the usual batch, once a worker's values repeat
            # A None (a new value) makes array() raise.
            refs = array.array("I", cast("Iterator[int]", map(ids.get, map(hash, values))))
            return _Numbered(refs, [], [], [], [], [])
        except TypeError:  # None, for a new value
            pass
        hashes = list(map(hash, values))  # each str keeps its hash: no SipHash again
        found = list(map(ids.get, hashes))
        if found.count(None) == len(found):
            new = dict(zip(hashes, values, strict=True))
        else:
            missing = list(map(operator.is_, found, itertools.repeat(None)))
            new = dict(zip(itertools.compress(hashes, missing),
                           itertools.compress(values, missing), strict=True))  # fmt: skip
        texts = cast("list[str]", list(new.values()))
        first = self._next
        end = first + len(new)
        if (
            end > self.size
            or (self._full and not set(found).isdisjoint(range(first, end)))
            or (
                (len(texts) > _FEW_TEXTS or len(values) > protocol.MAX_PAIRS_PER_MESSAGE)
                and _REF_SIZE * len(values) + 4 * sum(map(len, texts))
                + _STRING_HEADER * len(texts) > _COLUMN_BYTES
            )
        ):  # fmt: skip
            return self._number_one_by_one(values, hashes)
        if self._full:  # forget the values whose ids are taken (none is in this batch)
            collections.deque(map(ids.pop, self._hashes[first:end], itertools.repeat(0)), 0)
        defined = dict(zip(new, range(first, end), strict=True))
        ids.update(defined)
        self._hashes[first:end] = new
        self._advance(end)
        # A new value's id from the few just defined, a known one's as found.
        refs = array.array("I", cast("Iterator[int]", map(defined.get, hashes, found)))
        return _Numbered(refs, list(range(first, end)), texts, None, [], hashes)

    def _advance(self, end: int) -> None:
        if end == self.size:
            end, self._full = 0, True
        self._next = end

    def _number_one_by_one(self, values: list[str | None], hashes: list[int]) -> _Numbered:
        """number() a value at a time, ending a message where it must: before a
        new value would take an id the message references (the id's old value, or
        a value it defined), where the ids wrap, and where the message would grow
        too large."""
        ids, table_hashes = self._ids, self._hashes
        refs = array.array("I")
        new_ids: list[int] = []
        texts: list[str] = []
        positions: list[int] = []
        cuts: list[int] = []
        referenced: set[int] = set()  # ids the current message references
        last = -1  # the last id the current message defined
        size_left = _COLUMN_BYTES
        for index, key in enumerate(hashes):
            ref = ids.get(key)
            if ref is None:
                ref = self._next
                text = cast(str, values[index])
                cost = _STRING_HEADER + 4 * len(text)
                size_left -= cost + _REF_SIZE
                if ref in referenced or (last >= 0 and ref != last + 1) or size_left < 0:
                    cuts.append(index)
                    referenced.clear()
                    size_left = _COLUMN_BYTES - cost - _REF_SIZE
                old = table_hashes[ref]
                if old != _UNDEFINED:
                    del ids[old]
                ids[key] = ref
                table_hashes[ref] = key
                self._advance(ref + 1)
                new_ids.append(ref)
                texts.append(text)
                positions.append(index)
                last = ref
            else:
                size_left -= _REF_SIZE
                if size_left < 0:
                    cuts.append(index)
                    referenced.clear()
                    last = -1
                    size_left = _COLUMN_BYTES - _REF_SIZE
            referenced.add(ref)
            refs.append(ref)
        return _Numbered(refs, new_ids, texts, positions, cuts, hashes)


#: One interned message's parts, as protocol.encode_interned() takes them, and
#: the batch's records it holds: [start, end).
Message: TypeAlias = tuple[
    int, int, int, list[str], "array.array[int]", int, list[str], "array.array[int]"
]


class ValueTables:
    """A connection's two tables (connection IPs, senders), both of ``size`` ids."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.conn_ips = ValueTable(size)
        self.senders = ValueTable(size)

    def messages(
        self,
        conn_ips: list[str | None],
        senders: list[str | None],
        between: Callable[[], object] | None = None,
    ) -> list[Message]:
        """The interned messages that carry a batch, in the order they must be sent.

        Usually one. Where either column must end a message, both do: a message
        cut anywhere stays valid, since each value is defined by the first record
        that uses it, and the records after a cut may refer to what came before.
        ``between`` is called after the connection IPs are numbered (the flusher
        lets go of the GIL there when the batch is slow going).
        """
        ips = self.conn_ips.number(conn_ips)
        if between is not None:
            between()
        sends = self.senders.number(senders)
        count = len(senders)
        if not ips.cuts and not sends.cuts and count <= protocol.MAX_PAIRS_PER_MESSAGE:
            return [(0, count, *_whole(ips), *_whole(sends))]
        most = protocol.MAX_PAIRS_PER_MESSAGE
        cuts = sorted({*ips.cuts, *sends.cuts, *range(most, count, most)})
        bounds = [0, *cuts, count]
        ip_at, sender_at = ips.definition_positions(), sends.definition_positions()
        return [
            (start, end, *_piece(ips, ip_at, start, end), *_piece(sends, sender_at, start, end))
            for start, end in itertools.pairwise(bounds)
        ]


def _whole(numbered: _Numbered) -> tuple[int, list[str], array.array[int]]:
    return (numbered.ids[0] if numbered.ids else 0), numbered.texts, numbered.refs


def _piece(
    numbered: _Numbered, positions: list[int], start: int, end: int
) -> tuple[int, list[str], array.array[int]]:
    low, high = bisect.bisect_left(positions, start), bisect.bisect_left(positions, end)
    first = numbered.ids[low] if high > low else 0
    return first, numbered.texts[low:high], numbered.refs[start:end]
