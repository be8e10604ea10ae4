"""servertracker: what SMTP worker processes import to feed trackerd.

Importing it loads only the standard library and msgpack, so it stays cheap
in every worker.
"""

from servertracker.errors import (
    DaemonUnavailable,
    LocalProtocolError,
    ProtocolError,
    StatusFileError,
    TrackerError,
)
from servertracker.paths import resolve_runtime_dir, resolve_socket_path
from servertracker.status import STATUS_FILE_NAME, Status, read_status_file

__all__ = [
    "STATUS_FILE_NAME",
    "DaemonUnavailable",
    "LocalProtocolError",
    "ProtocolError",
    "Status",
    "StatusFileError",
    "TrackerError",
    "read_status_file",
    "resolve_runtime_dir",
    "resolve_socket_path",
]
