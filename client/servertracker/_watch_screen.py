"""trackerctl watch's screen: since boot, the growth rate, each sliding window and a
sparkline of the recent rate per category, in 80 columns.

Windows that do not fit in 80 columns beside the rest are left out (the status
shows them all); the sparkline keeps the last SPARK_POINTS rates of each row.
"""

from __future__ import annotations

import time
from collections import deque

from servertracker._format import COUNTS, format_time
from servertracker.status import Status

WIDTH = 80
SPARK_POINTS = 16
_BARS = "▁▂▃▄▅▆▇█"
_ASCII_BARS = "_.:-=+*#"
_LABEL, _BOOT, _RATE, _WINDOW = 16, 12, 11, 10


class WatchScreen:
    """Renders refresh after refresh; remembers the recent rates for the sparklines."""

    def __init__(self, *, unicode: bool = True) -> None:
        self._bars = _BARS if unicode else _ASCII_BARS
        self._history: dict[str, deque[float]] = {}

    def render(
        self,
        status: Status,
        rates: dict[str, float] | None,
        uptime: str,
        source_note: str | None = None,
        leave_hint: bool = True,
    ) -> str:
        """``uptime``: as `status` says it; ``source_note``: why the counts come from the
        file (on a line of its own, so that the header fits in 80 columns)."""
        now = time.time()
        rows = (*COUNTS, ("Records", "records"))
        if rates is not None:
            for _, field in rows:
                self._history.setdefault(field, deque(maxlen=SPARK_POINTS)).append(
                    max(0.0, rates.get(field, 0.0))
                )
        fixed = 2 + _LABEL + _BOOT + _RATE
        room = WIDTH - fixed - (SPARK_POINTS + 2)
        windows = status.windows[: max(0, room // _WINDOW)]
        header = f"  {'':<{_LABEL}}{'since boot':>{_BOOT}}{'per second':>{_RATE}}"
        header += "".join(f"{'last ' + w.window:>{_WINDOW}}" for w in windows)
        header += f"  {'recent rate':<{SPARK_POINTS}}"
        live = "(live)" if source_note is None else "(from the status file)"
        lines = [f"trackerd  {format_time(now)}  {uptime}  {live}"]
        if source_note is not None:
            lines.append(source_note)
        lines += ["", header.rstrip()]
        estimated = False
        for label, field in rows:
            mark = "~" if field in status.estimated else ""
            estimated = estimated or bool(mark)
            rate = "-" if rates is None else f"{rates.get(field, 0.0):,.1f}"
            line = f"  {label:<{_LABEL}}{mark + format(getattr(status, field), ','):>{_BOOT}}"
            line += f"{rate:>{_RATE}}"
            for counts in windows:
                value = getattr(counts, field, None)
                cell = "" if value is None else f"{mark}{value:,}"
                line += f"{cell:>{_WINDOW}}"
            line += "  " + self._sparkline(field)
            lines.append(line.rstrip())
        lines.append("")
        if estimated:
            lines.append("~ estimate (HyperLogLog, about 0.4% standard error).")
        if len(windows) < len(status.windows):
            lines.append("More windows in `trackerctl status`.")
        if leave_hint:
            lines.append("Ctrl-C to leave.")
        return "\n".join(lines).rstrip("\n")

    def _sparkline(self, field: str) -> str:
        points = self._history.get(field)
        if not points:
            return ""
        top = max(points)
        if top <= 0:
            return self._bars[0] * len(points)
        last = len(self._bars) - 1
        return "".join(self._bars[round(p / top * last)] for p in points)


def window_lines(status: Status) -> list[str]:
    """The status command's lines for the sliding windows (none if there are none)."""
    if not status.windows:
        return []
    windows = status.windows[: (WIDTH - 2 - _LABEL) // _WINDOW]
    lines = ["Over sliding windows (last seen within):"]
    lines.append(f"  {'':<{_LABEL}}" + "".join(f"{'last ' + w.window:>{_WINDOW}}" for w in windows))
    for label, field in COUNTS:
        mark = "~" if field in status.estimated else ""
        cells = "".join(f"{mark + format(getattr(w, field), ','):>{_WINDOW}}" for w in windows)
        lines.append(f"  {label + ':':<{_LABEL}}{cells}")
    return lines
