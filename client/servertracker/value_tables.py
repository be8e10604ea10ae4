"""A worker's numbering of the values it sends (the "interned" message).

ValueTables numbers a connection's two columns (docs/protocol.md, "Interned
values"): a value new to the connection takes the next id, first in, first out,
and its text goes in the message that first uses it; a value known goes as its id.
Keys are hash() of a value, never the value, and only where hash_keys.py's
hash_is_secret() allows. Imported only for a connection that sends interned
(batch_encoder.py): it loads numpy.
Pure, no I/O.
"""

from __future__ import annotations

import array
import bisect
import itertools
import secrets
from collections.abc import Callable
from operator import itemgetter
from typing import Final, TypeAlias, cast

import numpy as np
import numpy.typing as npt

from servertracker import protocol
from servertracker.errors import LocalProtocolError

# --- a worker's numbering of the values it sends (the "interned" message) ------

#: The reference "not known" (a None value).
NIL: Final = protocol.INTERNED_NIL
#: A message's size, bounded before it is encoded: each new string counts as 4
#: bytes a character (UTF-8's most) plus a header, each reference 4 bytes; each
#: column gets half of a frame, less room for the rest of the message.
_COLUMN_BYTES: Final = (protocol.MAX_MESSAGE_SIZE - 64) // 2
_STRING_HEADER: Final = 5
_REF_SIZE: Final = protocol.INTERNED_REF_SIZE
_NONE_KEY: Final = np.int64(hash(None))
#: Slots per row of a table's map: eight 64-bit keys, one cache line.
WAYS: Final = 8
#: Slots of a table's map per id (see ValueTable): 12 bytes a slot (key, id).
SLOTS_PER_ID: Final = 4
Keys: TypeAlias = npt.NDArray[np.int64]
#: What ValueTable._look_up() finds of a piece of a batch that can go as one.
_Piece: TypeAlias = tuple[int, list[str], int, Keys, npt.NDArray[np.intp], Keys]


def _no_pause() -> None:
    """The default ``between``: go straight on."""


#: Records of a batch's senders split at a time (ValueTables.messages), where
#: ``between`` may pause. sent_senders() costs a fixed ~50 numpy calls a call and
#: ~0.2 µs a sender: 1,024 a step took 0.22-0.31 ms (mixed forms, load 2.7 on this
#: project's 2 cores), the same a sender as 2,048; 256 a step took 0.09-0.12 ms but
#: 1.7x the CPU a sender (docs/performance-history.md, "The worker's side of
#: `interned`").
SPLIT_STEP: Final = 1024
#: A message defining at most this many values in a column fits its half of a
#: frame whatever their length (values are cut to one over the protocol's limit).
_FEW_TEXTS: Final = (_COLUMN_BYTES - _REF_SIZE * protocol.MAX_PAIRS_PER_MESSAGE) // (
    _STRING_HEADER + 4 * (protocol.MAX_VALUE_LENGTH + 1)
)


class _Numbered:
    """One column of a batch, numbered: its references and the ids it defines.

    The definitions are ``texts[i]`` for id ``ids[i]``, made by the record at
    ``positions[i]`` (increasing). ``cuts`` are the records before which a
    message must end. The ids and positions are kept as runs (a first id and
    the definitions' records as an array) and made lists only where a batch
    goes as several messages: a batch of new values made 2 ints a value.
    """

    __slots__ = ("_runs", "cuts", "refs", "texts")

    def __init__(self, refs: array.array[int]) -> None:
        self.refs = refs
        self.texts: list[str] = []
        self.cuts: list[int] = []
        self._runs: list[tuple[int, npt.NDArray[np.intp]]] = []

    def define(self, first: int, texts: list[str], positions: npt.NDArray[np.intp]) -> None:
        """Ids from ``first`` on for ``texts``, defined by the records at ``positions``."""
        self._runs.append((first, positions))
        self.texts += texts

    def first_id(self) -> int:
        """The first id defined (0 when none is)."""
        return self._runs[0][0] if self._runs else 0

    @property
    def ids(self) -> list[int]:
        return [i for first, at in self._runs for i in range(first, first + len(at))]

    def definition_positions(self) -> list[int]:
        return [p for _, at in self._runs for p in at.tolist()]


class ValueTable:
    """One column's table: hash() of a value -> id, id -> hash, ids reused FIFO.

    Never the value: only the first message that uses a value carries its text.
    Two values whose 64-bit hashes collide count as one (docs/protocol.md); so
    does a str whose hash equals None's, which counts as "not known".

    The map is fixed-size numpy arrays, set-associative like the daemon's raw
    cache (trackerd/core/raw_cache.py): a key lives in the row its low bits name,
    in one of WAYS slots, its id in the same slot of a second array. A batch is
    looked up and entered with a few dozen array operations whatever its length:
    no Python statement per value, and nothing ever resizes (a dict of 100,000
    keys took 250 ns a known value in cache misses, 800 a new one, and held the
    GIL for milliseconds when it grew). A full row forgets one of its keys to take
    a new one: the value forgotten is defined again when next sent, which costs
    only its text, but also sends the batches it is in the long way (a few dozen
    array operations more). Slots are four times the ids (SLOTS_PER_ID): a full
    table's rows then hold two keys on average and one row in 4,000 overflows;
    at twice, one in 200 did, and most batches of 512 met a forgotten value.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        rows = max(1, -(-SLOTS_PER_ID * size // WAYS))
        rows = 1 << (rows - 1).bit_length()
        self._mask = np.int64(rows - 1)
        # A slot holds key ^ _blind, so that 0 is an empty slot: it is the key
        # _blind, which a value hashes to with chance 2**-64. The map is written
        # whole here (np.full), where numpy faults its ~1,500 pages in mostly
        # without the interpreter lock; left to calloc, the first batch of a
        # connection faulted them in at random, holding the lock (5-14 ms).
        self._blind = np.int64(secrets.randbits(64) - (1 << 63))
        self._keys: npt.NDArray[np.int64] = np.full((rows, WAYS), 0, dtype=np.int64)
        self._slot_ids: npt.NDArray[np.uint32] = np.full((rows, WAYS), 0, dtype=np.uint32)
        # id -> its value's key (blinded), to find its slot when the id is reused.
        self._id_keys: npt.NDArray[np.int64] = np.zeros(size, dtype=np.int64)
        self._next = 0  # the id the next new value takes
        self._full = False  # every id defined: a new value evicts the oldest

    def number(
        self, values: list[str | None], between: Callable[[], object] = _no_pause
    ) -> _Numbered:
        """Number a batch's values, defining ids for the new ones.

        The batch goes as one piece when it can: its new values take the next ids
        in one run, none of them an id the batch references, within a message's
        size. Otherwise it is numbered in pieces (halved until each can, or cut
        where the ids wrap), and a message ends before a piece where it must:
        before a new value takes an id the message references, where the ids do
        not follow on, and where the message would grow too large.

        ``between`` is called between the steps of numbering new values (each a
        few array operations over the batch), where the caller may let go of
        the interpreter lock (flusher.py: docs/performance.md).
        """
        count = len(values)
        keys = np.fromiter(map(hash, values), np.int64, count) ^ self._blind
        between()
        rows = keys & self._mask
        same = self._keys.take(rows, axis=0) == keys[:, None]
        if np.count_nonzero(same) == count:  # every value held: the usual batch
            held = self._slot_ids.take(rows, axis=0)[same]
            return _Numbered(array.array("I", held.tobytes()))
        between()
        refs = np.empty(count, dtype=np.uint32)
        numbered = _Numbered(array.array("I"))
        pieces = [(0, count)]
        message = 0  # where the current message begins
        last = -1  # the last id it defined
        size_used = 0  # its bytes so far
        found: tuple[Keys, npt.NDArray[np.bool_]] | None = (rows, same)  # the whole batch's
        while pieces:
            low, high = pieces.pop()
            between()
            piece = self._look_up(values, keys[low:high], low, between, found)
            found = None
            if isinstance(piece, int):  # cannot go as one piece: cut it at ``piece``
                pieces += [(piece, high), (low, piece)]
                continue
            first, texts, cost = piece[:3]
            end = first + len(texts)
            earlier = refs[message:low]
            if low > message and (
                size_used + cost > _COLUMN_BYTES
                or (texts and last >= 0 and first != last + 1)
                or (texts and bool(((earlier >= first) & (earlier < end)).any()))
            ):
                numbered.cuts.append(low)
                message, last, size_used = low, -1, 0
            between()
            refs[low:high] = self._enter(piece, low, numbered, between)
            size_used += cost
            if texts:
                last = end - 1
        numbered.refs.frombytes(refs.tobytes())
        return numbered

    def _look_up(
        self,
        values: list[str | None],
        keys: Keys,
        low: int,
        between: Callable[[], object],
        rows_same: tuple[Keys, npt.NDArray[np.bool_]] | None = None,
    ) -> _Piece | int:
        """How the piece of a batch at ``low`` would be numbered: the first id it
        defines, their texts, its bytes in a message, each value's id (where held),
        the new values' records (first uses) and each new one's index among them;
        or, if it cannot go as one piece, where to cut it. ``rows_same``: the
        piece's rows and their slots holding its keys, if number() has them."""
        if rows_same is None:
            rows = keys & self._mask
            same = self._keys.take(rows, axis=0) == keys[:, None]
        else:
            rows, same = rows_same
        # A row's WAYS booleans read as one 64-bit word: cheaper than any(axis=1).
        hit = same.view(np.int64).ravel() != 0
        found = self._slot_ids[rows, same.argmax(axis=1)].astype(np.int64)
        found[keys == _NONE_KEY ^ self._blind] = NIL
        hit |= found == NIL
        new_at = np.flatnonzero(~hit)
        if not new_at.size:
            return self._next, [], _REF_SIZE * len(keys), found, new_at, new_at
        between()
        new_keys = keys[new_at]
        ordered = np.sort(new_keys)
        if bool((ordered[1:] != ordered[:-1]).all()):
            # Each new value once (the usual batch): ids in the order of the records.
            first_at, rank, unique = new_at, None, new_keys
        else:
            unique, first_at, inverse = np.unique(new_keys, return_index=True, return_inverse=True)
            between()
            # Ids in the order of first use: the rank of each unique key's first use.
            order = np.argsort(first_at)
            rank = np.empty_like(order)
            rank[order] = np.arange(len(order))
            rank = rank[inverse.ravel()]
            first_at, unique = new_at[first_at[order]], unique[order]
        first = self._next
        end = first + len(first_at)
        if end > self.size:  # where the ids wrap
            return low + int(first_at[self.size - first])
        at = (first_at + low).tolist()
        texts = cast("list[str]", [values[at[0]]] if len(at) == 1 else [*itemgetter(*at)(values)])
        cost = _REF_SIZE * len(keys) + 4 * sum(map(len, texts)) + _STRING_HEADER * len(texts)
        if cost > _COLUMN_BYTES or (
            self._full and bool(((found >= first) & (found < end) & hit).any())
        ):
            if len(keys) == 1:
                # A new value too long for any message (a piece of one value is
                # otherwise always taken): halving it again would loop for ever.
                # The recorder cuts values (value_cut.py), and mends a batch that
                # raises this.
                raise LocalProtocolError("a value too long for an interned message")
            return low + len(keys) // 2
        found[new_at] = np.arange(first, end) if rank is None else rank + first
        return first, texts, cost, found, first_at, unique

    def _enter(
        self, piece: _Piece, low: int, numbered: _Numbered, between: Callable[[], object]
    ) -> Keys:
        """Define the ids of a piece as _look_up() found it; its references."""
        first, texts, _, found, first_at, new_keys = piece
        if texts:
            end = first + len(texts)
            ids = np.arange(first, end)
            if self._full:
                self._forget(ids, between)
                between()
            self._id_keys[first:end] = new_keys
            self._put(new_keys, ids, between)
            between()
            self._next = end % self.size
            self._full |= end == self.size
            numbered.define(first, texts, first_at + low)
        return found

    def _forget(self, ids: npt.NDArray[np.int64], between: Callable[[], object]) -> None:
        """Take the keys of ``ids`` out of the map (those a full row forgot are gone)."""
        keys = self._id_keys[ids]
        rows = keys & self._mask
        # Two gathers of whole rows: each a cache miss a key, so a pause between.
        gone = self._keys[rows] == keys[:, None]
        between()
        gone &= self._slot_ids[rows] == ids[:, None]
        where, way = np.nonzero(gone)
        between()
        self._keys[rows[where], way] = 0  # empty: see __init__
        self._slot_ids[rows[where], way] = 0

    def _put(self, keys: Keys, ids: npt.NDArray[np.int64], between: Callable[[], object]) -> None:
        """Enter keys (none held, each once) with their ids. New keys that share a
        row take its free slots in up to WAYS rounds; a full row loses the key in
        the slot the new key's upper bits choose (as does one of two new keys that
        chose one slot): that value is defined again when next sent."""
        for _ in range(WAYS):
            rows = keys & self._mask
            free = self._keys[rows] == 0
            has_free = free.view(np.int64).ravel() != 0
            way = np.where(has_free, free.argmax(axis=1), (keys >> 32) & (WAYS - 1))
            self._keys[rows, way] = keys
            self._slot_ids[rows, way] = ids
            lost = (self._keys[rows, way] != keys) & has_free
            if not lost.any():
                return
            keys, ids = keys[lost], ids[lost]
            between()


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
        between: Callable[[], object] = _no_pause,
        split: Callable[[list[str | None]], list[str | None]] | None = None,
    ) -> list[Message]:
        """The interned messages that carry a batch, in the order they must be sent.

        Usually one. Where either column must end a message, both do: a message
        cut anywhere stays valid, since each value is defined by the first record
        that uses it, and the records after a cut may refer to what came before.
        ``between`` is called between steps (numbering each column, and within
        it; splitting the senders SPLIT_STEP at a time), where the flusher lets
        go of the interpreter lock when it has held it long; ``split``, if
        given, maps the senders (sender_split.sent_senders: a mixed batch's split
        costs as much as numbering a column).
        """
        ips = self.conn_ips.number(conn_ips, between)
        between()
        if split is not None:
            senders = _split_in_steps(split, senders, between)
        sends = self.senders.number(senders, between)
        between()  # the encoding comes next (batch_encoder.py): ~0.1-0.3 ms of msgpack
        count = len(senders)
        if not ips.cuts and not sends.cuts and count <= protocol.MAX_PAIRS_PER_MESSAGE:
            return [(0, count, *_whole(ips), *_whole(sends))]
        most = protocol.MAX_PAIRS_PER_MESSAGE
        cuts = sorted({*ips.cuts, *sends.cuts, *range(most, count, most)})
        bounds = [0, *cuts, count]
        ip_at, sender_at = ips.definition_positions(), sends.definition_positions()
        ip_ids, sender_ids = ips.ids, sends.ids
        return [
            (
                start,
                end,
                *_piece(ips, ip_ids, ip_at, start, end),
                *_piece(sends, sender_ids, sender_at, start, end),
            )
            for start, end in itertools.pairwise(bounds)
        ]


def _split_in_steps(
    split: Callable[[list[str | None]], list[str | None]],
    senders: list[str | None],
    between: Callable[[], object],
) -> list[str | None]:
    """``split(senders)``, SPLIT_STEP senders at a time, with ``between`` after each."""
    if len(senders) <= SPLIT_STEP:
        result = split(senders)
    else:
        result = []
        for start in range(0, len(senders), SPLIT_STEP):
            result += split(senders[start : start + SPLIT_STEP])
            between()
    between()
    return result


def _whole(numbered: _Numbered) -> tuple[int, list[str], array.array[int]]:
    return numbered.first_id(), numbered.texts, numbered.refs


def _piece(
    numbered: _Numbered, ids: list[int], positions: list[int], start: int, end: int
) -> tuple[int, list[str], array.array[int]]:
    low, high = bisect.bisect_left(positions, start), bisect.bisect_left(positions, end)
    first = ids[low] if high > low else 0
    return first, numbered.texts[low:high], numbered.refs[start:end]
