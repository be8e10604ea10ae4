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
from servertracker.recorder import Client, ClientStats, default_client, record_server
from servertracker.status import STATUS_FILE_NAME, Status, read_status_file

__all__ = [
    "STATUS_FILE_NAME",
    "Client",
    "ClientStats",
    "DaemonUnavailable",
    "LocalProtocolError",
    "ProtocolError",
    "Status",
    "StatusFileError",
    "TrackerError",
    "default_client",
    "read_status_file",
    "record_server",
    "resolve_runtime_dir",
    "resolve_socket_path",
]
