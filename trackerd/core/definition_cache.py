"""What a raw value defined in an interned table came to, by its hash(). Pure, no I/O.

Each worker defines its own values on its own connection, so a value that eight
workers see is defined eight times. This cache makes the seven later ones cost a
look-up: keyed, as raw_cache.py's, by Python's hash() of the raw text (SipHash
with the interpreter's random secret), it holds per key the outcome code, the
8-byte keyed digest and, in fleet mode, the next epoch's fleet register: what a
value table stores (value_table.py). No cleartext. It is cleared with the raw-value
caches, at each period and fleet epoch, so a hit means the digest was queued and
the fleet fed in the current ones.

As RawCache, it is set-associative: rows of WAYS slots in numpy arrays, a batch
looked up with a few array operations, a full row forgetting one key. A forgotten
key is one more normalisation later, never a wrong count.
"""

from __future__ import annotations

import secrets
from typing import Final

import numpy as np
import numpy.typing as npt

Keys = npt.NDArray[np.int64]
Hits = npt.NDArray[np.bool_]

#: Slots per row: eight keys of 8 bytes, one 64-byte cache line; a row's booleans
#: are then one 64-bit word. Rows overflow far less often than with four ways: at
#: 100,000 keys in 2^18 slots, 0.2% of the keys are forgotten against 1.8%.
WAYS: Final = 8
#: Slots per column by default: 8 + 8 + 1 bytes each (+ 4 in fleet mode), 4.25 MiB,
#: so that the 100,000 connection IPs of bench.compare's workers stay cached.
DEFINITION_CACHE_SLOTS: Final = 1 << 18


class DefinitionCache:
    """hash(raw value) -> (code, digest, fleet register), fixed size."""

    def __init__(self, slots: int = DEFINITION_CACHE_SLOTS, *, fleet: bool = False) -> None:
        rows = 1 << (max(1, slots // WAYS) - 1).bit_length()
        self._mask = np.int64(rows - 1)
        # A random empty mark: no key (not even hash("") == 0) is taken for one.
        self._empty = np.int64(secrets.randbits(64) - (1 << 63))
        self._keys: Keys = np.full((rows, WAYS), self._empty, dtype=np.int64)
        self.codes = np.zeros((rows, WAYS), dtype=np.int8)
        self.digests = np.zeros((rows, WAYS), dtype=np.uint64)
        self.registers = np.zeros((rows, WAYS), dtype=np.uint32) if fleet else None

    @property
    def nbytes(self) -> int:
        arrays = (self._keys, self.codes, self.digests, self.registers)
        return sum(a.nbytes for a in arrays if a is not None)

    def __len__(self) -> int:
        return int(np.count_nonzero(self._keys != self._empty))

    def clear(self) -> None:
        self._keys.fill(self._empty)

    def look_up(self, keys: Keys) -> tuple[Hits, npt.NDArray[np.intp]]:
        """Whether each key is held, and its slot in the payload arrays (flat: take
        with it from .codes.ravel(), say); garbage where there is no hit."""
        rows = (keys & self._mask).astype(np.intp)
        match = self._keys.take(rows, axis=0) == keys[:, None]
        hits: Hits = match.view(np.int64).ravel() != 0  # a row's WAYS booleans as one word
        return hits, rows * WAYS + match.argmax(axis=1)

    def remember(
        self,
        keys: Keys,
        codes: npt.NDArray[np.int8],
        digests: npt.NDArray[np.uint64],
        registers: npt.NDArray[np.uint32] | None,
    ) -> None:
        """Enter keys not held (a key given twice must come with one payload); a full
        row forgets one key. Of keys that would take one slot, one takes it and, if
        the row had a free slot, the others try again (WAYS rounds): a slot's key
        and payload are written from one value (the key is read back first)."""
        if registers is None and self.registers is not None:
            registers = np.zeros(keys.size, dtype=np.uint32)
        flat_keys = self._keys.ravel()  # views: the arrays are contiguous
        flat_codes, flat_digests = self.codes.ravel(), self.digests.ravel()
        flat_registers = self.registers.ravel() if self.registers is not None else None
        for _ in range(WAYS):
            if not keys.size:
                return
            rows = (keys & self._mask).astype(np.intp)
            free = self._keys.take(rows, axis=0) == self._empty  # take: 5x faster than [rows]
            room = free.view(np.int64).ravel() != 0  # a row's WAYS booleans as one word
            chosen = ((keys >> 32) & (WAYS - 1)).astype(np.intp)
            slots = rows * WAYS + np.where(room, free.argmax(axis=1), chosen)
            flat_keys[slots] = keys  # of keys given one slot, one is written
            won = flat_keys[slots] == keys
            if won.all():
                flat_codes[slots] = codes
                flat_digests[slots] = digests
                if flat_registers is not None and registers is not None:
                    flat_registers[slots] = registers
                return
            flat_codes[slots[won]] = codes[won]
            flat_digests[slots[won]] = digests[won]
            if flat_registers is not None and registers is not None:
                flat_registers[slots[won]] = registers[won]
            # Keys that lost a free slot to another try the row's next free one.
            again = room & ~won
            keys, codes, digests = keys[again], codes[again], digests[again]
            if registers is not None:
                registers = registers[again]
