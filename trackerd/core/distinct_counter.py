"""Distinct digests of one category: exact up to a bound, then a HyperLogLog estimate.

Anyone can send MAIL FROM with a new domain each time, so an exact set could be
grown without bound. Past ``max_exact`` entries the category switches, once and
for good, to a HyperLogLog sketch fed from the same keyed digests (64 KiB).
Digests are buffered and added in batches, because the table's cost is per batch.
A count never goes down within one boot: an estimate below the exact count
reached at the switch, or below a count already reported, reports that instead
(an estimate may fall a few below the truth; readers take a since-boot count
that drops for a bug). A windowed counter also keeps when each digest was last
seen (windows.py), and past the bound a sliding sketch (sliding_hyperloglog.py),
so that it can count over recent windows as well as since boot; window counts
do go down, as values age out. Pure, no I/O.
"""

from __future__ import annotations

import logging

import numpy as np

from trackerd.core.digest_table import DigestTable
from trackerd.core.hyperloglog import HyperLogLog
from trackerd.core.sliding_hyperloglog import SlidingHyperLogLog
from trackerd.core.windows import LastSeenTable

log = logging.getLogger(__name__)

#: Digests are added to the table this many at a time (or when a count is read):
#: the bound on the digests one flush_if_full() adds (issue: a flush of millions
#: held the event loop for seconds).
FLUSH_AT = 16384
#: Per category: just under 0.7 x 2**22, so a full table is 2**22 slots (32 MiB).
#: With windows, 16 MiB of last-seen times beside it. Worst case (README.md,
#: "Memory, worst case"): three full tables, the raw-value caches (~25 MiB), the
#: interpreter (~40 MiB) and the 64 MiB budget for unfinished frames: about 275 MiB.
DEFAULT_MAX_EXACT = 2_900_000
#: Digests moved into the sketches at a time when a category switches.
SWITCH_CHUNK = 1 << 19


class DistinctCounter:
    def __init__(
        self, name: str, max_exact: int = DEFAULT_MAX_EXACT, *, windowed: bool = False
    ) -> None:
        self.name = name
        self.max_exact = max_exact
        self.windowed = windowed
        #: 8-byte digests not yet added; appended to directly by the tracker's hot loop,
        #: one digest an item. Many digests in one item only through queue_chunk().
        self.pending: list[bytes] = []
        #: Digests in pending beyond one an item (the chunks' extra digests), so that
        #: pending_digests counts digests, not items.
        self._extra = 0
        self._table: DigestTable | None = LastSeenTable() if windowed else DigestTable()
        self._sketch: HyperLogLog | None = None
        self._sliding: SlidingHyperLogLog | None = None
        #: Windowed: the stamp (windows.py) that flushed digests are marked with;
        #: the tracker moves it on at each period, after a flush.
        self.stamp = 1
        #: The highest count reported, or reached exactly: no count is ever below it.
        self._floor = 0

    @property
    def estimated(self) -> bool:
        return self._sketch is not None

    @property
    def nbytes(self) -> int:
        """Bytes of the exact table or the sketch (not counting the pending buffer)."""
        if self._table is not None:
            extra = self._table.last_seen.nbytes if isinstance(self._table, LastSeenTable) else 0
            return self._table.nbytes + extra
        assert self._sketch is not None
        return self._sketch.nbytes + (self._sliding.nbytes if self._sliding else 0)

    @property
    def pending_digests(self) -> int:
        """Digests queued and not yet added."""
        return len(self.pending) + self._extra

    def queue_chunk(self, digests: bytes) -> None:
        """Queue many 8-byte digests (little-endian, joined), FLUSH_AT at a time: a
        flush past each FLUSH_AT, so pending never holds much more than FLUSH_AT
        digests and no flush adds more than about twice FLUSH_AT."""
        step = FLUSH_AT * 8
        for start in range(0, len(digests), step):
            piece = digests[start : start + step]
            self.pending.append(piece)
            self._extra += len(piece) // 8 - 1
            self.flush_if_full()

    def flush_if_full(self) -> None:
        if len(self.pending) + self._extra >= FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        digests = np.frombuffer(b"".join(self.pending), dtype="<u8")
        self.pending.clear()
        self._extra = 0
        if self._table is not None:
            if isinstance(self._table, LastSeenTable):
                self._table.add_stamped(digests, self.stamp)
            else:
                self._table.add_many(digests)
            if len(self._table) > self.max_exact:
                self._switch_to_estimate()
        else:
            assert self._sketch is not None
            self._sketch.add_many(digests)
            if self._sliding is not None:
                self._sliding.add_many(digests, self.stamp)

    def _switch_to_estimate(self) -> None:
        assert self._table is not None
        sketch = HyperLogLog()
        if isinstance(self._table, LastSeenTable):
            digests, stamps = self._table.stamped_values()
            self._sliding = SlidingHyperLogLog()
        else:
            digests, stamps = self._table.values(), None
        self._floor = max(self._floor, len(self._table))
        self._table = None  # frees the table's memory before the sketches' temporaries
        # A chunk at a time: the sketches' temporaries are ~25 bytes a digest.
        for start in range(0, digests.size, SWITCH_CHUNK):
            chunk = digests[start : start + SWITCH_CHUNK]
            sketch.add_many(chunk)
            if self._sliding is not None and stamps is not None:
                self._sliding.add_stamped(chunk, stamps[start : start + SWITCH_CHUNK])
        self._sketch = sketch
        log.warning(
            "%s: more than %d distinct values; counting from now on with an estimate "
            "(HyperLogLog, about 0.4%% standard error) to bound memory",
            self.name,
            self.max_exact,
        )

    def count(self) -> int:
        self.flush()
        if self._table is not None:
            count = len(self._table)
        else:
            assert self._sketch is not None
            count = round(self._sketch.estimate())
        self._floor = max(self._floor, count)
        return self._floor

    def count_since(self, stamp: int) -> int:
        """Distinct digests last seen at ``stamp`` or later (windows.py); never more
        than the since-boot count."""
        self.flush()
        if isinstance(self._table, LastSeenTable):
            return self._table.count_since(stamp)
        if self._sliding is not None:
            return min(round(self._sliding.estimate_since(stamp)), self.count())
        return 0
