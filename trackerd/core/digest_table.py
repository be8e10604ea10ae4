"""A compact set of 64-bit digests: an open-addressing hash table in one numpy array.

A Python set of 8-byte digests costs about 75 bytes an entry; this table costs
8 bytes a slot at a load factor of at most 0.7 (9 to 23 bytes an entry, 13.4 at
ten million). Digests are keyed hashes, uniformly distributed, so their top
bits serve as the slot index directly. Inserts are batched and vectorised:
Python-level work is per batch, not per digest. Pure, no I/O.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import numpy.typing as npt

Digests = npt.NDArray[np.uint64]
_Int = TypeVar("_Int", bound=np.integer)

MAX_LOAD = 0.7
MIN_CAPACITY = 1 << 12
#: Slots after the last home slot, so that probing never wraps around.
OVERFLOW_SLOTS = 4096
_EMPTY = np.uint64(0)


class DigestTable:
    """A set of uint64 digests. The digest 0 marks an empty slot, so it is stored as 1
    (one chance in 2**64 of merging two values)."""

    def __init__(self, capacity: int = MIN_CAPACITY) -> None:
        self._allocate(_round_up_pow2(capacity))
        self._count = 0

    def _allocate(self, capacity: int) -> None:
        self._capacity = capacity
        # The home slot is the digest's top bits, so sorting a batch sorts it by slot:
        # accesses run forward through memory and rivals for a slot sit side by side.
        self._shift = np.uint64(64 - capacity.bit_length() + 1)
        # Probes run past the end instead of wrapping, so a batch stays sorted by slot.
        self._table: Digests = np.zeros(capacity + OVERFLOW_SLOTS, dtype=np.uint64)

    def __len__(self) -> int:
        return self._count

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def nbytes(self) -> int:
        return int(self._table.nbytes)

    def values(self) -> Digests:
        """Every stored digest (a copy), in no particular order."""
        stored: Digests = self._table[self._table != _EMPTY]
        return stored

    def add_many(self, digests: Digests) -> int:
        """Add digests (duplicates allowed); returns how many were new."""
        if digests.size == 0:
            return 0
        return self._add_sorted(sorted_unique(digests))

    def _add_sorted(self, keys: Digests, slots: npt.NDArray[np.intp] | None = None) -> int:
        """add_many() of keys already sorted, unique and non-zero (sorted_unique());
        with slots, each key's slot is written there (one probe pass, no look-up)."""
        capacity = self._capacity
        while self._count + keys.size > MAX_LOAD * capacity:
            capacity *= 2
        if capacity != self._capacity:
            self._rehash(capacity)
        while True:
            try:
                added = _insert(self._table, self._shift, keys, slots)
                break
            except _Overflow as overflow:  # a cluster reached the end: astronomically rare
                self._count += overflow.added
                self._rehash(self._capacity * 2)
        self._count += added
        return added

    def slots_of(self, digests: Digests) -> npt.NDArray[np.intp]:
        """The slots of these digests (sorted, unique, non-zero), -1 for absent ones."""
        return find_slots(self._table, self._shift, digests)

    def _rehash(self, capacity: int) -> None:
        old = self.values()
        old.sort()
        self._refill(capacity, old)

    def _refill(
        self, capacity: int, keys: Digests, slots: npt.NDArray[np.intp] | None = None
    ) -> None:
        """A new, empty table of capacity slots, holding keys (sorted, unique, non-zero)."""
        # Let the old table go before the new one exists: the peak is the new table
        # plus the live digests, not two tables.
        self._table = np.empty(0, dtype=np.uint64)
        self._allocate(capacity)
        _insert(self._table, self._shift, keys, slots)


class _Overflow(Exception):
    def __init__(self, added: int) -> None:
        self.added = added


def sorted_unique(values: Digests) -> Digests:
    """Sorted, without duplicates, and 0 stored as 1 (as the table stores it)."""
    keys = sorted_distinct(values)
    if keys.size and keys[0] == _EMPTY:
        keys[0] = 1
        keys = sorted_distinct(keys)
    return keys


def sorted_distinct(values: npt.NDArray[_Int]) -> npt.NDArray[_Int]:
    """np.unique(values) of a 1-d integer array: np.unique is ten to twenty times
    slower than a sort for 64-bit integers here (numpy 2.x: it hashes)."""
    ordered = np.sort(values)
    if not ordered.size:
        return ordered
    first = np.empty(ordered.size, dtype=bool)
    first[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    return ordered[first]


def _round_up_pow2(n: int) -> int:
    return max(MIN_CAPACITY, 1 << (max(n, 1) - 1).bit_length())


def _insert(
    table: Digests, shift: np.uint64, keys: Digests, slots_out: npt.NDArray[np.intp] | None = None
) -> int:
    """Linear probing, one probe step for all pending keys at a time.

    ``keys`` must be sorted, unique and non-zero. A key is present iff it sits
    before the first empty slot of its probe sequence; nothing is ever deleted,
    so inserting at that first empty slot keeps the invariant, also for keys of
    one batch that compete for a slot: the first of each run of equal slots
    wins, the others probe on. Slots only ever grow by one for all pending keys,
    so they stay sorted and rivals stay adjacent. With ``slots_out``, each key's
    slot (where it was found or put) is written there.
    """
    pending = keys
    slots = (keys >> shift).astype(np.intp)
    index = np.arange(keys.size) if slots_out is not None else None
    end = table.size
    added = 0
    while pending.size:
        if slots[-1] >= end:
            raise _Overflow(added)
        current = table[slots]
        settled = current == pending  # already present
        empty = np.flatnonzero(current == _EMPTY)
        if empty.size:
            empty_slots = slots[empty]
            first = np.empty(empty.size, dtype=bool)
            first[0] = True
            np.not_equal(empty_slots[1:], empty_slots[:-1], out=first[1:])
            winners = empty[first]
            table[slots[winners]] = pending[winners]
            added += winners.size
            settled[winners] = True
        keep = ~settled
        if slots_out is not None and index is not None:
            slots_out[index[settled]] = slots[settled]
            index = index[keep]
        pending = pending[keep]
        slots = slots[keep] + 1
    return added


def find_slots(table: Digests, shift: np.uint64, keys: Digests) -> npt.NDArray[np.intp]:
    """The slot of each key (sorted, unique, non-zero), or -1 where a key is absent.

    The same probe sequence as _insert, reading only: a key is present iff it
    sits before the first empty slot of its probe sequence.
    """
    found = np.full(keys.size, -1, dtype=np.intp)
    pending = np.arange(keys.size, dtype=np.intp)
    slots = (keys >> shift).astype(np.intp)
    end = table.size
    while pending.size:
        inside = slots < end
        pending, slots = pending[inside], slots[inside]
        current = table[slots]
        hit = current == keys[pending]
        found[pending[hit]] = slots[hit]
        more = ~hit & (current != _EMPTY)
        pending = pending[more]
        slots = slots[more] + 1
    return found
