"""Where a status comes from: the live daemon, else its status file, and why.

trackerctl asks the daemon; when that fails it reads server_tracker.json and
keeps the daemon's failure, so it can say plainly where the numbers come from.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from servertracker.connection import DaemonConnection
from servertracker.error_codes import REFUSAL_REASONS
from servertracker.errors import DaemonUnavailable, ProtocolError, StatusFileError, TrackerError
from servertracker.status import Status, read_status_file, status_file_path

#: Version of trackerctl's --json output; bumped only on incompatible changes.
JSON_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class StatusReport:
    status: Status
    source: Literal["live", "file"]
    socket_path: Path
    #: None when no status file belongs to this socket (given on its own).
    status_file: Path | None
    #: Seconds since the status file was written (file source only).
    file_age: float | None = None
    #: Why the daemon did not answer (file source only).
    daemon_error: DaemonUnavailable | ProtocolError | None = None
    now: float = 0.0

    @property
    def uptime(self) -> float:
        """Seconds the daemon has run: until now if live, until the file's last write if not."""
        until = self.now if self.source == "live" else self.now - (self.file_age or 0.0)
        return max(0.0, until - self.status.boot_time)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"schema": JSON_SCHEMA_VERSION, "source": self.source}
        data.update(self.status.to_dict())
        data["uptime_seconds"] = round(self.uptime, 3)
        data["file_age_seconds"] = None if self.file_age is None else round(self.file_age, 3)
        data["daemon_error"] = None if self.daemon_error is None else error_json(self.daemon_error)
        data["socket"] = str(self.socket_path)
        data["status_file"] = None if self.status_file is None else str(self.status_file)
        return data


class NoStatusAvailable(TrackerError):
    """Neither the daemon nor the status file could give a status."""

    def __init__(
        self, daemon_error: TrackerError, file_error: StatusFileError, note: str = ""
    ) -> None:
        more = f"; {note}" if note else ""
        super().__init__(f"trackerd: {daemon_error}; status file: {file_error}{more}")
        self.daemon_error = daemon_error
        self.file_error = file_error
        #: What explains both failures (how the runtime directory was chosen), or "".
        self.note = note


def error_json(error: TrackerError) -> dict[str, str]:
    """A stable JSON description of an error: a reason token and a message."""
    if isinstance(error, DaemonUnavailable):
        return {"reason": error.reason, "message": error.detail}
    if isinstance(error, ProtocolError):
        # The allow-lists' refusal is no protocol fault: say so ("forbidden").
        reason = error.code if error.code in REFUSAL_REASONS else "protocol-error"
        return {"reason": reason, "message": str(error)}
    if isinstance(error, StatusFileError):
        return {"reason": "status-file", "message": str(error)}
    return {"reason": "error", "message": str(error)}


#: Why no status file is read for a socket given on its own.
OTHER_DAEMONS_FILE = (
    "not read: the socket was given without its runtime directory, whose status file "
    "could be another daemon's (give --runtime-dir too)"
)


def fetch_status(socket_path: Path, runtime_dir: Path | None, timeout: float) -> StatusReport:
    """The live status, else the status file's; raises NoStatusAvailable.

    ``runtime_dir`` None: no file to fall back on (it would be another daemon's).
    """
    file_path = status_file_path(runtime_dir) if runtime_dir is not None else None
    try:
        with DaemonConnection(socket_path, timeout=timeout) as conn:
            status = conn.status()
        return StatusReport(status, "live", socket_path, file_path, now=time.time())
    except (DaemonUnavailable, ProtocolError) as exc:
        daemon_error = exc
    if runtime_dir is None or file_path is None:
        raise NoStatusAvailable(daemon_error, StatusFileError("status file", OTHER_DAEMONS_FILE))
    try:
        status = read_status_file(runtime_dir)
        modified = os.stat(file_path).st_mtime
    except StatusFileError as exc:
        raise NoStatusAvailable(daemon_error, exc) from None
    except OSError as exc:  # the file vanished between the read and the stat
        raise NoStatusAvailable(daemon_error, StatusFileError(file_path, str(exc))) from None
    now = time.time()
    return StatusReport(
        status, "file", socket_path, file_path, max(0.0, now - modified), daemon_error, now
    )
