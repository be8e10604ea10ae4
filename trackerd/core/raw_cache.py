"""What a raw value, as a worker sent it, came to: the tracker's first look-up. Pure, no I/O.

Most values the daemon receives were seen moments ago (the same servers, the same
senders), so each is looked up before it is normalised. The key is Python's hash()
of the raw text, SipHash keyed with the interpreter's random secret: no cleartext is
kept (tracker.py turns the cache off when that secret is fixed). An entry says only
what the value came to: counted (its digest was queued when the entry was made, so
a hit needs nothing more), rejected (tallied again at every sighting) or ignored.

The table is one numpy array of rows of WAYS 64-bit slots, set-associative like a
CPU cache: a key lives in the row its low bits name, and a full row forgets one of
its keys to take a new one. A batch is looked up with a few array operations
whatever its length, one memory access a value; a dict look-up takes three (its
index, its entry, the key object), and a dict entry costs about 100 bytes against
8 here. Forgetting is safe: a forgotten value is a miss, normalised and queued
again, and the counters keep each digest once. The size is fixed at creation.

CRawCache is the same cache in C (_ccolumns.c), used when the extension is built
and not turned off (servertracker/accel.py; new_raw_cache() picks): a column is
hashed and looked up in one C loop, with no Python object a value. Its key is
SipHash under a key drawn here per cache (never Python's hash secret), so it is
secret whatever PYTHONHASHSEED says, and the key never leaves the C table. The
raw senders' table (split=True) keys each usual sender by its domain part
(every address of a domain one entry); any other value by its whole text. The
two give the same codes for the same values; tests hold them to it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, cast

import numpy as np
import numpy.typing as npt

from servertracker import accel

if TYPE_CHECKING:
    from trackerd.core._ccolumns import Columns, Table

#: The C extension module, or None: the pure-Python RawCache runs.
EXTENSION: Final = "trackerd.core._ccolumns"
_ccolumns = accel.load(EXTENSION)
#: The type of what scan_columns() gives (None without the extension): a server
#: tells a message read in place from a decoded one by it.
ColumnsType: Final[type | None] = None if _ccolumns is None else _ccolumns.Columns

Keys = npt.NDArray[np.int64]
Codes = npt.NDArray[np.int8]

#: remember() enters this many keys or fewer one at a time (fewer array operations).
FEW: Final = 4

#: What look_up() says of each value.
MISS: Final = 0
COUNTED: Final = 1
REJECTED: Final = 2
IGNORED: Final = 3

#: Slots per row: a row holds up to this many keys whose low bits agree (four:
#: a row's booleans are then one 32-bit word, see look_up()).
WAYS: Final = 4

# A slot holds the key itself for a counted value, else the key XOR a mark; the
# marks are fixed, and a key is a secret-keyed hash no one can aim at them.
_REJECTED_MARK: Final = 0x2545F4914F6CDD1D
_IGNORED_MARK: Final = 0x5851F42D4C957F2D
_MARKS: Final = np.array([0, 0, _REJECTED_MARK, _IGNORED_MARK], dtype=np.int64)


class RawCache:
    """A fixed-size map from hash() of a raw value to its outcome code."""

    def __init__(self, slots: int) -> None:
        """``slots`` is rounded up to a power of two, at least WAYS."""
        rows = max(1, -(-slots // WAYS))
        rows = 1 << (rows - 1).bit_length()
        self._mask = np.int64(rows - 1)
        self._row_mask = rows - 1
        # Empty slots hold a random value, so that no key (not even hash("") == 0)
        # can be taken for one; the chance that a value hashes to it is 2**-64.
        self._empty = np.int64(secrets.randbits(64) - (1 << 63))
        self._table: npt.NDArray[np.int64] = np.full((rows, WAYS), self._empty, dtype=np.int64)

    @property
    def slots(self) -> int:
        return int(self._table.size)

    @property
    def nbytes(self) -> int:
        return int(self._table.nbytes)

    def __len__(self) -> int:
        """Keys held (a full pass over the table: for tests and reports)."""
        return int(np.count_nonzero(self._table != self._empty))

    def __contains__(self, key: int) -> bool:
        """Whether hash(value) == key has an entry, whatever its outcome."""
        row = self._table[key & int(self._mask)]
        return bool(np.isin(row, np.int64(key) ^ _MARKS[1:]).any())

    def key(self, value: str | None) -> int:
        """The key look_up() gives a value."""
        return hash(value)

    def code(self, key: int) -> int:
        """look_up() for one key, without arrays: cheaper for a few values."""
        row = self._table[key & self._row_mask].tolist()
        if key in row:
            return COUNTED
        if key ^ _REJECTED_MARK in row:
            return REJECTED
        return IGNORED if key ^ _IGNORED_MARK in row else MISS

    def put(self, key: int, code: int) -> None:
        """remember() for one key not held yet, without arrays."""
        index = key & self._row_mask
        row = self._table[index].tolist()
        stored = key ^ int(_MARKS[code])
        if stored in row:
            return  # given twice
        empty = int(self._empty)
        way = row.index(empty) if empty in row else (key >> 32) & (WAYS - 1)
        self._table[index, way] = stored

    def clear(self) -> None:
        self._table.fill(self._empty)

    def look_up(self, values: Sequence[str | None]) -> tuple[Keys, Codes]:
        """Each value's key (hash()) and code: MISS, COUNTED, REJECTED or IGNORED."""
        keys: Keys = np.array(list(map(hash, values)), dtype=np.int64)
        found = self._table.take(keys & self._mask, axis=0)
        # Whether a row holds the key: its WAYS booleans read as one 32-bit word,
        # three times cheaper than numpy's any(axis=1) on rows this short.
        hit = (found == keys[:, None]).view(np.int32).ravel() != 0
        codes: Codes = hit.view(np.int8)  # COUNTED is 1, MISS 0
        others = np.flatnonzero(codes == MISS)
        if others.size:
            found, other_keys = found[others], keys[others]
            for code in (REJECTED, IGNORED):
                marked = (other_keys ^ _MARKS[code])[:, None]
                codes[others[(found == marked).any(axis=1)]] = code
        return keys, codes

    def remember(self, keys: Keys | Sequence[int], codes: Codes | Sequence[int]) -> None:
        """Enter keys (none of them held yet, some maybe twice) with their codes (not
        MISS). A full row forgets one of its keys.

        Arrays at a time: new keys that share a row take its free slots in up to
        WAYS rounds; past that, of two that chose one slot, one is forgotten at
        once, which costs one more miss later."""
        if len(keys) <= FEW:
            for key, code in zip(keys, codes, strict=True):
                self.put(int(key), int(code))
            return
        all_keys = np.asarray(keys, dtype=np.int64)
        stored = all_keys ^ _MARKS[np.asarray(codes, dtype=np.intp)]
        flat = self._table.ravel()  # a view: flat slots index faster than (row, way)
        for _ in range(WAYS):
            rows = all_keys & self._mask
            # take(): several times faster than indexing with [rows] (numpy 2.x).
            free = self._table.take(rows, axis=0) == self._empty
            room = free.view(np.int32).ravel() != 0
            # A free slot if the row has one, else one chosen by the key's upper bits.
            chosen = (all_keys >> 32) & (WAYS - 1)
            slots = rows * WAYS + np.where(room, free.argmax(axis=1), chosen)
            flat[slots] = stored
            # Where two keys took one free slot, the other tries the row's next one.
            lost = (flat[slots] != stored) & room
            if not lost.any():
                return
            all_keys, stored = all_keys[lost], stored[lost]


class CRawCache:
    """RawCache's interface on the C table (_ccolumns.Table): same codes, its own keys."""

    def __init__(self, slots: int, *, split: bool = False) -> None:
        """``split``: key the usual senders by their domain part (the raw senders' cache)."""
        assert _ccolumns is not None, "built only when the extension loaded (new_raw_cache)"
        # Two SipHash keys (whole values, domain parts) and the empty slots' mark.
        key, empty = secrets.token_bytes(32), secrets.randbits(64)
        table = cast("Table", _ccolumns.Table(slots, key, empty, split))
        del key
        self._table = table
        self.key: Callable[[str | None], int] = table.key
        self.code: Callable[[int], int] = table.code
        self.put: Callable[[int, int], None] = table.put
        self.clear: Callable[[], None] = table.clear

    @property
    def slots(self) -> int:
        return self._table.slots

    @property
    def nbytes(self) -> int:
        return self._table.slots * 8

    def __len__(self) -> int:
        return self._table.held()

    def __contains__(self, key: int) -> bool:
        return self._table.code(key) != MISS

    def look_up(self, values: Sequence[str | None]) -> tuple[Keys, Codes]:
        """Each value's key and code, as RawCache.look_up(); the codes are writable."""
        keys, codes = self._table.look_up(values)
        return np.frombuffer(keys, dtype=np.int64), np.frombuffer(codes, dtype=np.int8)

    def look_up_columns(
        self, columns: Columns, column: int, start: int, stop: int
    ) -> tuple[Keys, Codes, list[str | None]]:
        """look_up() of the values start to stop of a column of a message read in place
        (scan_columns()), and those values: the misses' as str, None for the others."""
        keys, codes, values = self._table.look_up_columns(columns, column, start, stop)
        return np.frombuffer(keys, dtype=np.int64), np.frombuffer(codes, dtype=np.int8), values

    def remember(self, keys: Keys | Sequence[int], codes: Codes | Sequence[int]) -> None:
        """As RawCache.remember(): keys not held yet, with their codes (not MISS)."""
        # Copies of the misses only: a few bytes each.
        self._table.remember(
            np.asarray(keys, dtype=np.int64).tobytes(), np.asarray(codes, dtype=np.int8).tobytes()
        )


def new_raw_cache(slots: int, *, split: bool = False) -> RawCache | CRawCache:
    """The C cache if the extension runs (accel.py), else the Python one."""
    return CRawCache(slots, split=split) if _ccolumns is not None else RawCache(slots)


#: How every body scan_columns() reads in place begins (msgpack: an array of 4, the
#: version 1, the fixstr "columns"): a server looks for it before it takes a frame.
COLUMNS_HEAD: Final = b"\x94\x01\xa7columns"


def scan_columns(body: bytearray) -> Columns | None:
    """A columns message's body read in place by the C extension, or None: the body is
    no plain columns message (decode_body() decides what it is), or the extension is
    not running. The Columns keeps the body until its release(), which overwrites it."""
    if _ccolumns is None:
        return None
    return cast("Columns | None", _ccolumns.scan_columns(body))


def join_columns(parts: list[Columns]) -> Columns:
    """One Columns of the pairs of parts (scan_columns()'s, none released) in order,
    their values copied: the twin of concatenating their columns (the decoded path
    counts each message's values as they come; the counts are alike, tests hold them
    to it). The caller releases the parts, and the joined one once counted."""
    assert _ccolumns is not None, "only where scan_columns() reads in place"
    return cast("Columns", _ccolumns.join_columns(parts))
