"""servertracker: what SMTP worker processes import to feed trackerd.

Importing it loads only the standard library and msgpack, so it stays cheap in
every worker. Names are loaded on first use (PEP 562), so that trackerctl,
which needs none of the recorder, starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_EXPORTS = {
    "Client": "servertracker.recorder",
    "ClientStats": "servertracker.recorder",
    "default_client": "servertracker.recorder",
    "record_server": "servertracker.recorder",
    "DaemonUnavailable": "servertracker.errors",
    "LocalProtocolError": "servertracker.errors",
    "ProtocolError": "servertracker.errors",
    "StatusFileError": "servertracker.errors",
    "TrackerError": "servertracker.errors",
    "resolve_runtime_dir": "servertracker.paths",
    "resolve_socket_path": "servertracker.paths",
    "STATUS_FILE_NAME": "servertracker.status",
    "Status": "servertracker.status",
    "read_status_file": "servertracker.status",
}

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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'servertracker' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
