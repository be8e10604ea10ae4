"""The library's exceptions: one flat, short hierarchy under TrackerError.

OS-level errors are turned into these at the transport edge, in one place each,
so callers catch servertracker's own types instead of a zoo of OSError subclasses.
"""

from __future__ import annotations

import errno


class TrackerError(Exception):
    """Base class of every error servertracker raises on purpose."""


class ProtocolError(TrackerError):
    """The peer sent bytes that are not a valid message.

    ``code`` is a short stable token (see docs/protocol.md) that goes into the
    error reply; the message is for humans and never contains a recorded value.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class LocalProtocolError(TrackerError, ValueError):
    """This side misused the protocol API (for example, encoding a bad value)."""


class StatusFileError(TrackerError):
    """The status file is missing, unreadable or not a valid status record."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


#: Why a connect() to trackerd's socket failed, by errno: DaemonUnavailable's reason
#: (trackerctl), and the cause a worker's warning names (reachability.py).
CONNECT_REASONS = {
    errno.ENOENT: "no-socket",
    errno.ENOTDIR: "no-socket",
    errno.ECONNREFUSED: "refused",
    errno.EACCES: "permission-denied",
    errno.EPERM: "permission-denied",
}


class DaemonUnavailable(TrackerError):
    """trackerd could not be reached or did not answer in time.

    ``reason`` is one of: "no-socket", "refused", "permission-denied" (from
    CONNECT_REASONS), "timeout", "closed", "error".
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
