"""Sliding windows: their names and lengths, and last-seen times beside the exact table.

Time is kept in whole seconds since the tracker started. Sightings are noted
once per period (1/60 of the shortest window, from 1 s to 60 s: a minute for
the default 1h) and stamped with the period's end, so a stamp is never 0 (0
means never seen). A value then counts in a window of W seconds from the end of the
period it was last seen in until at least W and at most W + period + 1 seconds
after that sighting. Exact counts come from
LastSeenTable, a DigestTable with one uint32 stamp per slot (4 bytes a slot
beside the digest's 8); estimates from sliding_hyperloglog.py. Nothing here
holds more than the keyed digests and times. Pure, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from trackerd.core.digest_table import Digests, DigestTable, sorted_unique

Stamps = npt.NDArray[np.uint32]

DEFAULT_WINDOWS = "1h,24h"
#: Longest window: a year (stamps are uint32 seconds, so far more would fit).
MAX_WINDOW_SECONDS = 366 * 86400
#: Windows per daemon: each costs a pass over every table at status time.
MAX_WINDOWS = 8
#: The since-boot count's name where windows are listed (e.g. a metric label).
BOOT = "boot"

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SPEC = re.compile(r"([0-9]{1,9})([smhd])")


@dataclass(frozen=True, slots=True)
class Window:
    """A sliding window: its name as the operator wrote it (``24h``) and its seconds."""

    name: str
    seconds: int


def parse_windows(text: str) -> tuple[Window, ...]:
    """``"1h,24h"`` -> windows, shortest first; ``""`` or ``"none"`` -> none.

    Raises ValueError with a message fit for a command line.
    """
    text = text.strip()
    if text in ("", "none"):
        return ()
    windows: dict[int, Window] = {}
    for item in text.split(","):
        match = _SPEC.fullmatch(item.strip())
        if match is None:
            raise ValueError(
                f"window {item.strip()[:20]!r} is not a number and a unit (s, m, h or d), "
                "such as 90s, 15m, 1h, 7d"
            )
        seconds = int(match[1]) * _UNITS[match[2]]
        if not 1 <= seconds <= MAX_WINDOW_SECONDS:
            raise ValueError(f"window {item.strip()!r} must be from 1s to 366d")
        if seconds in windows:
            raise ValueError(f"windows {windows[seconds].name!r} and {item.strip()!r} are equal")
        windows[seconds] = Window(f"{int(match[1])}{match[2]}", seconds)
    if len(windows) > MAX_WINDOWS:
        raise ValueError(f"at most {MAX_WINDOWS} windows")
    return tuple(sorted(windows.values(), key=lambda w: w.seconds))


#: Bounds of a period: values repeated within one cost the counters nothing more.
MIN_PERIOD = 1
MAX_PERIOD = 60


def period_of(windows: Sequence[Window]) -> int:
    """Seconds over which sightings are gathered before they are stamped."""
    if not windows:
        return MAX_PERIOD
    return min(MAX_PERIOD, max(MIN_PERIOD, min(w.seconds for w in windows) // 60))


def cutoff_stamp(elapsed: int, window: Window) -> int:
    """The least stamp that still counts in the window, ``elapsed`` whole seconds
    after start."""
    return max(1, elapsed - window.seconds)


class LastSeenTable(DigestTable):
    """A DigestTable that also keeps, per slot, the stamp of the digest's last sighting."""

    last_seen: Stamps

    def _allocate(self, capacity: int) -> None:
        super()._allocate(capacity)
        self.last_seen = np.zeros(self._table.size, dtype=np.uint32)

    def _rehash(self, capacity: int) -> None:
        keys, stamps = self.stamped_values()
        order = np.argsort(keys)
        keys, stamps = keys[order], stamps[order]
        slots = np.empty(keys.size, dtype=np.intp)
        self._refill(capacity, keys, slots)  # allocates a new, zeroed last_seen
        self.last_seen[slots] = stamps

    def stamped_values(self) -> tuple[Digests, Stamps]:
        """Every stored digest and the stamp of its last sighting."""
        occupied = self._table != 0
        return self._table[occupied], self.last_seen[occupied]

    def add_stamped(self, digests: Digests, stamp: int) -> None:
        """Add digests (duplicates and known ones allowed), all seen at ``stamp``;
        stamps never go back."""
        if digests.size == 0:
            return
        keys = sorted_unique(digests)
        slots = np.empty(keys.size, dtype=np.intp)
        self._add_sorted(keys, slots)
        self.last_seen[slots] = stamp

    def count_since(self, stamp: int) -> int:
        """Stored digests last seen at ``stamp`` or later."""
        return int(np.count_nonzero(self.last_seen >= stamp))
