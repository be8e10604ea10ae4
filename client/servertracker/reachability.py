"""When a worker cannot reach trackerd's socket, or drops records: one WARNING a minute.

The recorder's flusher thread reports each failed connect here (an OSError from
connect(), or trackerd's refusal on a new connection) and each success, and asks
whether the records dropped so far deserve a warning. A worker outside
trackerd's group would otherwise count nothing while only DEBUG lines say why.
The hot path (record_server) never comes here: it only counts a drop, since a
log call does I/O under its handler's lock. The text names the socket path and
the likely cause, never a recorded value; a drop warning names the bound that
was hit (the queue's, or the long-value budget's), not the daemon, which may be
fine. Pure, no I/O: the caller passes the clock and does the logging.
"""

from __future__ import annotations

from servertracker.error_codes import ERR_BUSY, ERR_FORBIDDEN
from servertracker.errors import CONNECT_REASONS

#: A socket unreachable for less than this is a daemon restarting: no warning yet.
GRACE_SECONDS = 3.0
#: Least time between two warnings while the socket stays unreachable.
WARNING_INTERVAL = 60.0
#: Least time between two warnings of dropped records.
DROP_WARNING_INTERVAL = 60.0

#: By errors.CONNECT_REASONS' reason.
_CAUSES = {
    "permission-denied": "permission denied (is this user in trackerd's group?)",
    "no-socket": "no socket there (is trackerd running? is the socket path right?)",
    "refused": (
        "connection refused: a stale socket file that no trackerd listens on "
        "(trackerd crashed or is starting)"
    ),
}


#: The daemon's own refusals (its "error" reply on connect), by code.
_REFUSALS = {
    ERR_FORBIDDEN: "refused: this user or group is not in trackerd's allow-lists",
    ERR_BUSY: "refused: trackerd is at its connection limit (busy)",
}


class Refused(OSError):
    """trackerd accepted the connection, then refused it with an error code."""

    def __init__(self, code: str) -> None:
        super().__init__(f"trackerd refused the connection ({code})")
        self.code = code


def cause(
    exc: OSError, not_a_socket: str | None = None, closed_directory: str | None = None
) -> str:
    """The likely cause of a failed connect, for an operator; ``not_a_socket`` is
    what the path is when it is no socket (paths.not_a_socket), ``closed_directory``
    the directory above it this user may not enter (paths.closed_directory), both
    found by the caller."""
    if not_a_socket is not None and not isinstance(exc, Refused):
        return f"the path is {not_a_socket}, not a socket (is the socket path right?)"
    if closed_directory is not None and isinstance(exc, PermissionError):
        return (
            f"permission denied: this user may not enter {closed_directory} (run as a "
            "user who may, or give trackerd a --runtime-dir this user may enter)"
        )
    if isinstance(exc, Refused):
        return _REFUSALS.get(exc.code, str(exc))
    known = _CAUSES.get(CONNECT_REASONS.get(exc.errno or 0, ""))
    if known is not None:
        return known
    if isinstance(exc, TimeoutError):
        return "timed out (trackerd is overloaded or stopped)"
    return exc.strerror or type(exc).__name__


class UnreachableWarning:
    """Decides when a failed connect deserves a WARNING; at most one per interval."""

    def __init__(self, grace: float | None = None, interval: float | None = None) -> None:
        # None: read the module's values when used, so a test can set them in a real worker.
        self._grace = grace
        self._interval = interval
        self._failing_since: float | None = None
        self._last_warning: float | None = None
        self.warned = False  # a warning was logged since the last success

    def failed(
        self,
        exc: OSError,
        socket_path: str,
        now: float,
        not_a_socket: str | None = None,
        closed_directory: str | None = None,
    ) -> str | None:
        """The warning text to log for this failed connect, or None to stay quiet."""
        grace = GRACE_SECONDS if self._grace is None else self._grace
        interval = WARNING_INTERVAL if self._interval is None else self._interval
        if self._failing_since is None:
            self._failing_since = now
        if now - self._failing_since < grace:
            return None
        if self._last_warning is not None and now - self._last_warning < interval:
            return None
        self._last_warning = now
        self.warned = True
        return (
            f"cannot reach trackerd at {socket_path} for "
            f"{now - self._failing_since:.0f} s: {cause(exc, not_a_socket, closed_directory)}; "
            "records are queued, then dropped when the queue is full"
        )

    def succeeded(self) -> bool:
        """Note a connect; True if a warning was logged since the last one."""
        warned = self.warned
        self._failing_since = None
        self.warned = False
        return warned


class DropWarning:
    """Decides when dropped records deserve a WARNING: at most one per interval."""

    def __init__(self, interval: float = DROP_WARNING_INTERVAL) -> None:
        self._interval = interval
        self._last_warning: float | None = None
        self._reported = 0  # the drop count that the last warning gave

    def due(self, dropped: int, now: float) -> bool:
        """True when a warning with this count so far should be logged now."""
        if dropped <= self._reported:
            return False
        if self._last_warning is not None and now - self._last_warning < self._interval:
            return False
        self._last_warning = now
        self._reported = dropped
        return True


def drop_text(
    dropped: int,
    *,
    queue_full: int,
    over_budget: int,
    max_buffered: int,
    long_value: int,
    max_long_chars: int,
    socket_path: str,
) -> str:
    """The drop warning: how many so far, and which bound dropped them (never a value).

    ``queue_full`` records were dropped because the queue held ``max_buffered``,
    ``over_budget`` because a value over ``long_value`` characters would have
    overrun the long-value budget; ``dropped`` counts them all.
    """
    full = (
        f"the queue of {max_buffered} was full (this process records faster than "
        f"its sender thread sends, or trackerd at {socket_path} is slow or down)"
    )
    long = (
        f"values over {long_value} characters exceeded the long-value budget "
        f"(max_long_chars={max_long_chars})"
    )
    if queue_full and over_budget:
        reasons = f"{full} for {queue_full}; {long} for {over_budget}"
    elif over_budget:
        reasons = long
    else:
        reasons = full
    return f"{dropped} records dropped so far: {reasons}"
