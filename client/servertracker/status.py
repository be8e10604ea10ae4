"""The Status record and the status file's name and format: the public contract.

The first four fields are the Go original's, with its JSON names and meanings,
so existing readers of server_tracker.json keep working. The rest are additions:
every count keeps its since-boot meaning, and sliding windows come as a list
of WindowCounts (``windows``).
"""

from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import asdict, dataclass, fields
from dataclasses import field as _field
from pathlib import Path
from typing import Any, Final, get_type_hints

from servertracker.error_codes import PROTOCOL_ERROR_CODES, REFUSAL_REASONS
from servertracker.errors import StatusFileError

STATUS_FILE_NAME: Final = "server_tracker.json"
#: A status file larger than this is not ours; refuse to read it whole.
MAX_STATUS_FILE_SIZE: Final = 64 * 1024
#: StatusFileError.reason when this user may not read the file (trackerctl then says
#: how its runtime directory was chosen).
FILE_PERMISSION_DENIED: Final = "permission denied"


def _is_count(value: object) -> bool:
    """A count in a status: an int (not a bool, a float or a string of one), never negative."""
    return type(value) is int and value >= 0


@dataclass(frozen=True, slots=True)
class WindowCounts:
    """Distinct counts over a sliding window: values last seen at most ``seconds`` ago
    (to the second). Estimates where the category is listed in Status.estimated."""

    #: The window's name as trackerd was told it (``1h``, ``24h``, ``90s``).
    window: str
    seconds: int
    unique_conn_ips: int
    unique_domains: int
    unique_ip_servers: int

    @classmethod
    def from_dict(cls, data: object) -> WindowCounts:
        if not isinstance(data, dict):
            raise ValueError("field 'windows' must list objects")
        name = data.get("window")
        if type(name) is not str or not 0 < len(name) <= MAX_WINDOW_NAME:
            raise ValueError(f"a window's name must be 1 to {MAX_WINDOW_NAME} characters")
        values: dict[str, Any] = {"window": name}
        for field in ("seconds", *_COUNT_FIELDS):
            value = data.get(field)
            if not _is_count(value):
                raise ValueError(f"a window's {field!r} must be a non-negative int")
            values[field] = value
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Health:
    """What the daemon knows of its own work since it started (every listener summed).

    Keys of the maps come from fixed sets (REFUSAL_REASONS, PROTOCOL_ERROR_CODES),
    never from a peer.
    """

    connections_accepted: int = 0
    #: By reason: "forbidden" (allow-lists), "busy" (limits, buffers, no descriptors).
    connections_refused: dict[str, int] = _field(default_factory=dict)
    connection_timeouts: int = 0
    #: By code.
    protocol_errors: dict[str, int] = _field(default_factory=dict)
    status_writes: int = 0
    status_write_failures: int = 0
    #: `interned` messages counted (docs/protocol.md): whether workers use value tables.
    interned_messages: int = 0

    @classmethod
    def from_dict(cls, data: object) -> Health:
        if not isinstance(data, dict):
            raise ValueError("field 'health' must be an object")
        values: dict[str, Any] = {}
        for name, known in (
            ("connections_refused", REFUSAL_REASONS),
            ("protocol_errors", PROTOCOL_ERROR_CODES),
        ):
            counts = data.get(name, {})
            if not isinstance(counts, dict) or not all(_is_count(v) for v in counts.values()):
                raise ValueError(f"health's {name!r} must map names to non-negative ints")
            # Names from a newer daemon are left out: only fixed sets become labels.
            values[name] = {k: v for k, v in counts.items() if k in known}
        for name in ("connections_accepted", "connection_timeouts", "status_writes",
                     "status_write_failures", "interned_messages"):  # fmt: skip
            value = data.get(name, 0)
            if not _is_count(value):
                raise ValueError(f"health's {name!r} must be a non-negative int")
            values[name] = value
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Status:
    """Counts since the daemon started. Never contains a recorded value."""

    #: Unix seconds when the daemon started (the original's boot_time).
    boot_time: int
    #: Distinct connecting IP addresses.
    unique_conn_ips: int
    #: Distinct sender domains (user@example.com).
    unique_domains: int
    #: Distinct senders that use an IP literal (user@[1.2.3.4]).
    unique_ip_servers: int
    #: Unix seconds (fractional) when this snapshot was taken.
    updated_time: float = 0.0
    #: (conn_ip, sender) pairs received, counted or not.
    records: int = 0
    #: Connection IPs that were not an IP address.
    rejected_conn_ips: int = 0
    #: Senders that were malformed (no domain, garbage).
    rejected_senders: int = 0
    #: Names of the count fields above that are estimates (HyperLogLog) rather than
    #: exact: a category switches past a bound on its memory. The counts stay integers.
    estimated: tuple[str, ...] = ()
    #: The same three counts over each sliding window (trackerd --windows), shortest first.
    windows: tuple[WindowCounts, ...] = ()
    #: The daemon's own health counters (for metrics); None where not known.
    health: Health | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[Any, Any]) -> Status:
        """Build a Status from decoded JSON or msgpack; ValueError names the bad field.

        Unknown keys are ignored (a newer daemon may add fields); the original's
        four fields are required, the additions default to zero.
        """
        values: dict[str, Any] = {}
        for field in fields(cls):
            if field.name not in data:
                if field.name in _REQUIRED:
                    raise ValueError(f"missing field {field.name!r}")
                continue
            value = data[field.name]
            if field.name == "estimated":
                if type(value) not in (list, tuple) or not all(v in _COUNT_FIELDS for v in value):
                    raise ValueError(
                        f"field 'estimated' must list some of {', '.join(_COUNT_FIELDS)}"
                    )
                values[field.name] = tuple(value)
                continue
            if field.name == "health":
                values[field.name] = None if value is None else Health.from_dict(value)
                continue
            if field.name == "windows":
                if type(value) not in (list, tuple) or len(value) > MAX_WINDOWS:
                    raise ValueError(f"field 'windows' must list at most {MAX_WINDOWS} windows")
                values[field.name] = tuple(WindowCounts.from_dict(v) for v in value)
                continue
            kind = _field_types()[field.name]
            if kind is float:
                ok = type(value) in (int, float) and value == value and value >= 0
            else:
                ok = _is_count(value)
            if not ok:
                raise ValueError(f"field {field.name!r} must be a non-negative {kind.__name__}")
            values[field.name] = value
        return cls(**values)


_COUNT_FIELDS: Final = ("unique_conn_ips", "unique_domains", "unique_ip_servers")
_REQUIRED: Final = ("boot_time", *_COUNT_FIELDS)
#: Bounds on what a status reply or file may hold in ``windows`` (trackerd's own
#: limits are tighter: see trackerd/core/windows.py).
MAX_WINDOWS: Final = 16
MAX_WINDOW_NAME: Final = 16
_TYPES: dict[str, type] = {}


def _field_types() -> dict[str, type]:
    """Status's field types as classes (the annotations are strings in this module)."""
    if not _TYPES:
        _TYPES.update(get_type_hints(Status))
    return _TYPES


def status_file_path(runtime_dir: str | os.PathLike[str]) -> Path:
    return Path(runtime_dir) / STATUS_FILE_NAME


def encode_status_file(status: Status) -> bytes:
    """The status file's bytes: one JSON object and a newline."""
    return (json.dumps(status.to_dict(), indent=2) + "\n").encode()


def read_status_file(runtime_dir: str | os.PathLike[str]) -> Status:
    """Read the status the daemon last wrote (the original's ReadStatusFile).

    Raises StatusFileError, naming the path, when the file is missing, unreadable,
    too large, not JSON, or not a status record.
    """
    path = status_file_path(runtime_dir)
    try:
        # O_NONBLOCK: opening a FIFO put there must not wait for a writer forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StatusFileError(path, "not a regular file; not a status file")
            raw = file.read(MAX_STATUS_FILE_SIZE + 1)
    except FileNotFoundError:
        raise StatusFileError(
            path, "no such file (has trackerd run with this runtime directory?)"
        ) from None
    except PermissionError:
        raise StatusFileError(path, FILE_PERMISSION_DENIED) from None
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        if exc.errno == errno.ENOTDIR:
            reason = "a component of the path is not a directory"
        raise StatusFileError(path, reason) from None
    if len(raw) > MAX_STATUS_FILE_SIZE:
        raise StatusFileError(path, f"larger than {MAX_STATUS_FILE_SIZE} bytes; not a status file")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise StatusFileError(path, f"not valid JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise StatusFileError(path, "not a JSON object")
    try:
        return Status.from_dict(data)
    except ValueError as exc:
        raise StatusFileError(path, f"not a status record: {exc}") from None
