"""The fleet sketches: per category, the current epoch's HyperLogLog in Redis's layout.

Redis merges HyperLogLogs with PFMERGE and counts them with PFCOUNT, but it
hashes elements itself, with MurmurHash64A and a public seed. Here the 64-bit
hash is instead a BLAKE2b keyed with the fleet's epoch key, so the same value
gives the same register on every host of the fleet and nobody without the key
can test a guess. From the hash, the register index and rank are taken exactly
as Redis's hyperloglog.c (hllPatLen) takes them from its own: index = the low 14
bits, rank = 1 + the number of 0-bits after them before the first 1 (at most 51).
So Redis's estimates over these registers are as good as over its own.

Only registers ever leave: ``dense()`` gives Redis's dense string (the "HYLL"
header, encoding 0, the cached cardinality marked invalid, 16,384 six-bit
registers packed little-endian), ready for SET and PFMERGE.

At an epoch boundary the key steps forward (servertracker.fleet_key.next_key),
the old key is dropped, and the registers start empty; the last epoch's
registers (never its key) are kept until the next boundary so that a push just
after midnight still delivers the end of yesterday. Pure, no I/O.
"""

from __future__ import annotations

import hashlib
from typing import Final

import numpy as np
import numpy.typing as npt

from servertracker.fleet_key import FleetKey, epoch_at, value_hasher
from trackerd.core.normalise import Category

#: Redis's HLL_P, HLL_Q, HLL_REGISTERS, HLL_BITS.
HLL_P: Final = 14
HLL_Q: Final = 64 - HLL_P
HLL_REGISTERS: Final = 1 << HLL_P
HLL_BITS: Final = 6
_HEADER: Final = b"HYLL" + bytes([0, 0, 0, 0]) + bytes(7) + bytes([0x80])
#: The size of a dense Redis HyperLogLog string: header + 12,288 bytes.
DENSE_SIZE: Final = len(_HEADER) + HLL_REGISTERS * HLL_BITS // 8

_INDEX_MASK: Final = HLL_REGISTERS - 1
_STOP_BIT: Final = 1 << HLL_Q
#: A register packed in one int (next_register): index << RANK_BITS | rank; rank >= 1.
RANK_BITS: Final = 6


def index_and_rank(hash64: int) -> tuple[int, int]:
    """Register index and rank of a 64-bit hash, as hyperloglog.c's hllPatLen."""
    rest = (hash64 >> HLL_P) | _STOP_BIT  # the stop bit bounds the rank at Q + 1
    return hash64 & _INDEX_MASK, (rest & -rest).bit_length()


def dense(registers: bytes | bytearray) -> bytes:
    """Redis's dense encoding of 16,384 register values (each at most 63)."""
    values = np.frombuffer(bytes(registers), dtype=np.uint8).astype(np.uint32).reshape(-1, 4)
    # Four 6-bit registers fill three bytes, the first register in the lowest bits.
    packed = values[:, 0] | values[:, 1] << 6 | values[:, 2] << 12 | values[:, 3] << 18
    out = np.empty((packed.size, 3), dtype=np.uint8)
    out[:, 0] = packed & 0xFF
    out[:, 1] = (packed >> 8) & 0xFF
    out[:, 2] = packed >> 16
    return _HEADER + out.tobytes()


def registers_of(dense_string: bytes) -> bytes:
    """The register values of a dense string (the inverse of ``dense()``)."""
    if len(dense_string) != DENSE_SIZE or dense_string[:5] != _HEADER[:5]:
        raise ValueError("not a dense Redis HyperLogLog")
    raw = np.frombuffer(dense_string[len(_HEADER) :], dtype=np.uint8).reshape(-1, 3)
    packed = raw[:, 0].astype(np.uint32) | raw[:, 1].astype(np.uint32) << 8
    packed |= raw[:, 2].astype(np.uint32) << 16
    shifts = np.array([0, 6, 12, 18], dtype=np.uint32)
    return ((packed[:, None] >> shifts) & 0x3F).astype(np.uint8).tobytes()


class FleetSketch:
    """One epoch's registers per category, and the key that feeds them."""

    def __init__(self, key: FleetKey) -> None:
        self.epoch_seconds = key.epoch_seconds
        #: (epoch, registers per category) of the epoch before, kept one epoch.
        self.previous: tuple[int, tuple[bytearray, ...]] | None = None
        self._start(key)

    def _start(self, key: FleetKey) -> None:
        self._key = key  # the only key held: the one of the current epoch
        self.epoch = key.epoch
        self._hashers = tuple(value_hasher(key.key, category) for category in Category)
        # The next epoch's, made at the first next_register(): derivable from the
        # current key by anyone holding it, so holding it gives away nothing more.
        self._next_hashers: tuple[hashlib.blake2b, ...] | None = None
        self.registers = tuple(bytearray(HLL_REGISTERS) for _ in Category)

    def add(self, category: int, canonical: bytes) -> None:
        """Register one canonical value (a cache miss of the tracker).

        index_and_rank() written out: this runs once per new value, and the call
        cost as much as the arithmetic.
        """
        hasher = self._hashers[category].copy()
        hasher.update(canonical)
        hash64 = int.from_bytes(hasher.digest(), "little")
        rest = (hash64 >> HLL_P) | _STOP_BIT
        rank = (rest & -rest).bit_length()
        index = hash64 & _INDEX_MASK
        registers = self.registers[category]
        if registers[index] < rank:
            registers[index] = rank

    def next_register(self, category: int, canonical: bytes) -> int:
        """The register a canonical value takes in the NEXT epoch, packed
        (index << RANK_BITS | rank, never 0): what an interned table keeps so that a
        value only referenced after the boundary still reaches the new sketch."""
        if self._next_hashers is None:
            key = self._key.advanced(self.epoch + 1).key
            self._next_hashers = tuple(value_hasher(key, each) for each in Category)
        hasher = self._next_hashers[category].copy()
        hasher.update(canonical)
        index, rank = index_and_rank(int.from_bytes(hasher.digest(), "little"))
        return index << RANK_BITS | rank

    def add_registers(self, category: int, packed: npt.NDArray[np.uint32]) -> None:
        """Raise the current epoch's registers to packed ones (next_register() of the
        epoch before); no value needed."""
        registers = np.frombuffer(self.registers[category], dtype=np.uint8)
        ranks = (packed & ((1 << RANK_BITS) - 1)).astype(np.uint8)
        np.maximum.at(registers, (packed >> RANK_BITS).astype(np.intp), ranks)

    def epoch_at(self, now: float) -> int:
        return epoch_at(now, self.epoch_seconds)

    def advance_to(self, epoch: int) -> bool:
        """Step the key forward to ``epoch`` and start empty registers; False if
        ``epoch`` is not later than the current one."""
        if epoch <= self.epoch:
            return False
        key = self._key.advanced(epoch)
        self.previous = (self.epoch, self.registers) if epoch == self.epoch + 1 else None
        self._start(key)
        return True

    def snapshot(self) -> list[tuple[int, tuple[bytes, ...]]]:
        """(epoch, dense string per category) for the current epoch, then the previous."""
        epochs = [(self.epoch, tuple(dense(r) for r in self.registers))]
        if self.previous is not None:
            epoch, registers = self.previous
            epochs.append((epoch, tuple(dense(r) for r in registers)))
        return epochs
