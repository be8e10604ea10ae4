"""One connection's interned value tables (docs/protocol.md, "interned"). Pure, no I/O.

A client of the `interned` message numbers its values: its first use of a value
carries the text (a definition), every later one a 4-byte id (a reference). The
daemon normalises each definition as any value and keeps, per id, only what it
came to: an outcome code (counted in which category, rejected, ignored, or not
defined), the 8-byte keyed digest the counters hold, the period in which the
digest was last queued for the counters (windows: a reference in a later period
queues it again), and in fleet mode the epoch of the definition with the fleet
register (index and rank) the value takes in the next epoch. Never the text.

Each array is an anonymous private mapping of its own (_untouched_zeros), whose
pages the kernel maps when an id is first written, so a large grant costs memory
only for the ids a client defines (docs/threat-model.md: at most BYTES_PER_ENTRY a
granted entry). np.zeros did not promise that: glibc's calloc serves an array
below its (dynamic, up to 32 MiB) mmap threshold from the heap and memsets the
part that was free heap, so idle grants moved RSS by megabytes.

Everything here is arrays: checking and resolving N references is a few numpy
operations, no Python statement per reference.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from servertracker import protocol
from trackerd.core.digest_table import sorted_distinct

Ids = npt.NDArray[np.intp]
Refs = npt.NDArray[np.uint32]
Codes = npt.NDArray[np.int8]
Digests = npt.NDArray[np.uint64]

#: An id's outcome code: 0 until defined; counted values are COUNTED + category.
UNDEFINED: Final = 0
REJECTED: Final = 1
IGNORED: Final = 2
COUNTED: Final = 3

#: Bytes an entry can cost at most (a grant of n ids is 2n entries): the code (1),
#: the digest (8), the period (4, with windows) and, in fleet mode, the epoch (4)
#: and the next epoch's register (4).
BYTES_PER_ENTRY: Final = 1 + 8 + 4 + 4 + 4

#: Entries granted to all connections together by default (--max-interned-entries):
#: 32 workers' two tables of 131,072 ids: at most 104 MiB with windows (168 MiB in
#: fleet mode) if every id is defined; RSS grows only with the ids defined.
DEFAULT_MAX_INTERNED_ENTRIES: Final = 8_388_608

_NIL: Final = np.uint32(protocol.INTERNED_NIL)


def refs_of(data: bytes) -> Refs:
    """The references of a message as an array (one np.frombuffer, no copy)."""
    return np.frombuffer(data, dtype="<u4")


@dataclass(frozen=True, slots=True)
class Definitions:
    """What a run of new values came to: per value a code, a digest (0 unless
    counted) and, in fleet mode, the next epoch's fleet register (0 if none)."""

    codes: Codes
    digests: Digests
    fleet_next: npt.NDArray[np.uint32] | None


def _untouched_zeros(size: int, dtype: type[Any]) -> npt.NDArray[Any]:
    """size zeros that take no memory until written: a mapping of their own (the
    kernel's zero pages), unmapped when the array goes. No page is written here."""
    nbytes = size * np.dtype(dtype).itemsize
    if not nbytes:
        return np.zeros(0, dtype=dtype)
    pages = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return np.frombuffer(pages, dtype=dtype)


class ValueTable:
    """The ids of one column (connection IPs or senders) of one connection."""

    def __init__(self, size: int, *, windowed: bool = False, fleet: bool = False) -> None:
        self.size = size
        self.codes: Codes = _untouched_zeros(size, np.int8)
        self.digests: Digests = _untouched_zeros(size, np.uint64)
        #: The tracker's period + 1 in which each digest was last queued (0: never).
        self.periods = _untouched_zeros(size, np.int32) if windowed else None
        #: The fleet epoch of each definition, and its register in the epoch after
        #: (index << 6 | rank; 0 once fed or if none).
        self.fleet_epochs: npt.NDArray[np.uint32] | None = (
            _untouched_zeros(size, np.uint32) if fleet else None
        )
        self.fleet_next: npt.NDArray[np.uint32] | None = (
            _untouched_zeros(size, np.uint32) if fleet else None
        )

    def violation(self, first: int, new: int, refs: Refs) -> str | None:
        """The fixed text of the first thing wrong with a message's column, or None.

        In docs/protocol.md's order: the definitions beyond the grant, a reference
        beyond it, a reference to an id not defined (after this message's own
        definitions), a definition not referenced.
        """
        if first + new > self.size:
            return protocol.TEXT_INTERNED_RANGE
        ids = refs
        top = int(refs.max()) if refs.size else 0
        if top == _NIL:  # nil references are left out (none, as usual: no copy)
            ids = refs[refs != _NIL]
            top = int(ids.max()) if ids.size else 0
        if top >= self.size:
            return protocol.TEXT_INTERNED_RANGE
        if not new:
            return None if np.all(self.codes[ids]) else protocol.TEXT_INTERNED_UNDEFINED
        # Each reference's offset from first, in uint32: one below first wraps round
        # to far above new, so one comparison tells a definition of this message.
        offsets = ids - np.uint32(first)
        here = offsets < new
        earlier = ids[~here]
        if earlier.size and not np.all(self.codes[earlier]):
            return protocol.TEXT_INTERNED_UNDEFINED
        referenced = np.zeros(new, dtype=bool)
        referenced[offsets[here]] = True
        if not referenced.all():
            return protocol.TEXT_INTERNED_UNREFERENCED
        return None

    def define(self, first: int, found: Definitions, period: int, fleet_epoch: int | None) -> None:
        """Store what ids first, first + 1, ... came to (replacing earlier values)."""
        end = first + found.codes.size
        self.codes[first:end] = found.codes
        self.digests[first:end] = found.digests
        if self.periods is not None:
            self.periods[first:end] = period
        if self.fleet_epochs is not None and fleet_epoch is not None:
            self.fleet_epochs[first:end] = fleet_epoch
            assert self.fleet_next is not None and found.fleet_next is not None
            self.fleet_next[first:end] = found.fleet_next

    def resolve(self, refs: Refs) -> tuple[Ids, Codes]:
        """The ids referenced (nil left out) and their codes, in order."""
        ids = refs[refs != _NIL].astype(np.intp)
        return ids, self.codes[ids]

    def due_for_period(self, ids: Ids, codes: Codes, period: int) -> Ids:
        """The counted ids among ids whose digest was not queued in period, each
        once; they are marked queued in it."""
        assert self.periods is not None
        due: Ids = ids[(codes >= COUNTED) & (self.periods[ids] != period)]
        if due.size:
            due = sorted_distinct(due)
            self.periods[due] = period
        return due

    def due_for_epoch(self, ids: Ids, codes: Codes, epoch: int) -> Ids:
        """The counted ids among ids defined in the epoch before epoch whose register
        for epoch is not fed yet (the caller feeds them and zeroes it), each once."""
        assert self.fleet_epochs is not None and self.fleet_next is not None
        due: Ids = ids[(codes >= COUNTED) & (self.fleet_epochs[ids] == epoch - 1)]
        if due.size:
            due = sorted_distinct(due[self.fleet_next[due] != 0])
        return due

    @property
    def nbytes(self) -> int:
        """Bytes of address space the arrays take (RSS grows only with ids defined)."""
        arrays = (self.codes, self.digests, self.periods, self.fleet_epochs, self.fleet_next)
        return sum(a.nbytes for a in arrays if a is not None)


class ValueTables:
    """A connection's two tables, of ``granted`` ids each."""

    def __init__(self, granted: int, *, windowed: bool = False, fleet: bool = False) -> None:
        self.granted = granted
        self.ips = ValueTable(granted, windowed=windowed, fleet=fleet)
        self.senders = ValueTable(granted, windowed=windowed, fleet=fleet)

    def violation(self, message: protocol.RecordInterned) -> tuple[str | None, Refs, Refs]:
        """The first violation of the message (a fixed text) or None, and its refs."""
        ip_refs, sender_refs = refs_of(message.ip_refs), refs_of(message.sender_refs)
        text = self.ips.violation(message.ip_first, len(message.ip_new), ip_refs)
        if text is None:
            text = self.senders.violation(
                message.sender_first, len(message.sender_new), sender_refs
            )
        return text, ip_refs, sender_refs
