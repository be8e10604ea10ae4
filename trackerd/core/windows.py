"""Sliding windows: their names and lengths, and last-seen times beside the exact table.

A value counts in a window of W seconds if it was last seen at most W seconds
ago, to the second: time is kept in whole seconds since the tracker started,
as a "stamp" (seconds + 1, so that 0 means never seen). Exact counts come from
LastSeenTable, a DigestTable with one uint32 stamp per slot (4 bytes a slot
beside the digest's 8); estimates from sliding_hyperloglog.py. Nothing here
holds more than the keyed digests and times. Pure, no I/O.
"""

from __future__ import annotations

import re
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


def cutoff_stamp(now_stamp: int, window: Window) -> int:
    """The least stamp that still counts in the window at ``now_stamp``."""
    return max(1, now_stamp - window.seconds)


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
        super()._rehash(capacity)  # allocates a new, zeroed last_seen
        self.last_seen[self.slots_of(keys)] = stamps

    def stamped_values(self) -> tuple[Digests, Stamps]:
        """Every stored digest and its stamp (0: stored but not seen yet)."""
        occupied = self._table != 0
        return self._table[occupied], self.last_seen[occupied]

    def touch(self, digests: Digests, stamp: int) -> None:
        """Mark these stored digests as seen at ``stamp`` (stamps never go back)."""
        if digests.size == 0:
            return
        slots = self.slots_of(sorted_unique(digests))
        self.last_seen[slots[slots >= 0]] = stamp

    def count_since(self, stamp: int) -> int:
        """Stored digests last seen at ``stamp`` or later."""
        return int(np.count_nonzero(self.last_seen >= stamp))
