"""trackerctl record: records from the command line or, kept out of `ps`, from standard input.

Values are never echoed: not in errors, not in output. Bytes that are not UTF-8
are replaced (U+FFFD), as the worker library does, so the daemon classifies the
value as it would from any worker (a malformed sender is counted as rejected).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Annotated, BinaryIO

import typer

from servertracker import protocol
from servertracker.cli_common import (
    JsonOption,
    RuntimeDirOption,
    SocketOption,
    TimeoutOption,
    echo,
    fail,
    print_json,
    target,
    usage_error,
)
from servertracker.conn_ip import conn_ip_rejected
from servertracker.connection import DaemonConnection
from servertracker.errors import DaemonUnavailable, ProtocolError

#: The daemon rejects longer values; cutting one keeps it rejected and the frame small.
_VALUE_LIMIT = protocol.MAX_VALUE_LENGTH + 1
#: A line of standard input longer than this is cut (its values are then rejected).
_LINE_LIMIT = 4 * _VALUE_LIMIT
#: Records sent per frame from standard input.
_BATCH = 512


def _text(value: str) -> str:
    """A value the protocol can carry: argv's undecodable bytes become U+FFFD."""
    raw = value.encode("utf-8", "surrogateescape")
    return raw.decode("utf-8", "replace")[:_VALUE_LIMIT]


#: Lines named on stderr (extra fields, a CONN_IP that is no IP), one warning
#: each, at most this many of each kind.
_WARNINGS = 10
_EXTRA_FIELDS = "more than two fields (CONN_IP SENDER); its sender is rejected"
_NOT_AN_IP = "CONN_IP is not an IP address; the record is counted as rejected"
_MORE = {
    _EXTRA_FIELDS: "more lines have more than two fields; their senders are rejected",
    _NOT_AN_IP: "more lines have a CONN_IP that is not an IP address; counted as rejected",
}


def _warn(text: str, as_json: bool) -> None:
    """One warning on stderr; never with a value's content."""
    line = json.dumps({"warning": text}) if as_json else f"warning: {text}"
    echo(line, err=True)


class _LineWarnings:
    """Names lines with a problem by number, at most _WARNINGS of each kind, then says
    once that there are more."""

    def __init__(self, as_json: bool) -> None:
        self._as_json = as_json
        self._counts: dict[str, int] = {}

    def __call__(self, number: int, problem: str) -> None:
        count = self._counts[problem] = self._counts.get(problem, 0) + 1
        if count <= _WARNINGS:
            _warn(f"line {number}: {problem}", self._as_json)
        elif count == _WARNINGS + 1:
            _warn(_MORE[problem], self._as_json)


def _lines(stream: BinaryIO, as_json: bool = False) -> Iterator[protocol.Pair]:
    """Pairs from standard input; each line bounded in size. A line with more than
    two fields is sent as it is (its sender, with a space, is rejected) and named;
    so is one whose CONN_IP the daemon will reject."""
    warn = _LineWarnings(as_json)
    number = 0
    while True:
        number += 1
        line = stream.readline(_LINE_LIMIT)
        if not line:
            return
        if not line.endswith(b"\n") and len(line) == _LINE_LIMIT:
            while (rest := stream.readline(_LINE_LIMIT)) and not rest.endswith(b"\n"):
                pass  # the rest of an overlong line: dropped
        text = line.decode("utf-8", "replace").strip()
        if not text or text.startswith("#"):
            continue  # blank lines and comments, as in any line-oriented input
        conn_ip, *sender = text.split(None, 1)
        if conn_ip_rejected(conn_ip):
            warn(number, _NOT_AN_IP)
        if sender and len(sender[0].split()) > 1:
            warn(number, _EXTRA_FIELDS)
        yield conn_ip[:_VALUE_LIMIT], (sender[0] if sender else "")[:_VALUE_LIMIT]


def _send(conn: DaemonConnection, pairs: Iterator[protocol.Pair]) -> int:
    sent = 0
    batch: list[protocol.Pair] = []
    for pair in pairs:
        batch.append(pair)
        if len(batch) == _BATCH:
            conn.record(batch)
            sent += len(batch)
            batch = []
    if batch:
        conn.record(batch)
        sent += len(batch)
    conn.ping()  # the reply comes after every record before it is applied
    return sent


def record(
    ctx: typer.Context,
    conn_ip: Annotated[
        str | None,
        typer.Argument(help="The SMTP client's IP address.", show_default=False),
    ] = None,
    sender: Annotated[
        str | None,
        typer.Argument(
            help='The MAIL FROM address or its domain ("" or "<>" for the null sender).',
            show_default=False,
        ),
    ] = None,
    socket: SocketOption = None,
    runtime_dir: RuntimeDirOption = None,
    as_json: JsonOption = False,
    timeout: TimeoutOption = None,
) -> None:
    """Record connections (for shell scripts and MTA hooks). Silent on success.

    Give CONN_IP and SENDER as arguments, or no arguments to read records from
    standard input, one per line: CONN_IP, white space, SENDER ("<>" or nothing for
    the null sender); blank lines and lines starting with "#" are skipped; a line
    with more than two fields gets a warning naming its number (its sender is
    counted as rejected), and so does a CONN_IP that is not an IP address (the
    record is counted as rejected; as an argument, the warning has no number).
    Standard input keeps the values out of `ps`, where arguments are visible to
    every user.

    The command exits 0 once the daemon has applied every record. After a timeout,
    some records may have been applied already: a retry may then count them twice
    in "records", but never in the distinct counts (the same value is the same hash).
    """
    where = target(ctx, socket, runtime_dir, as_json, timeout)
    pairs: Iterator[protocol.Pair]
    if conn_ip is not None and sender is not None:
        pairs = iter([(_text(conn_ip), _text(sender))])
        if conn_ip_rejected(_text(conn_ip)):
            _warn(_NOT_AN_IP, where.as_json)
    elif conn_ip is not None:
        usage_error("give both CONN_IP and SENDER, or neither (standard input)", where.as_json)
    elif sys.stdin is None or sys.stdin.isatty():
        usage_error("give CONN_IP and SENDER, or records on standard input", where.as_json)
    else:
        pairs = _lines(sys.stdin.buffer, where.as_json)
    try:
        with DaemonConnection(where.socket_path, timeout=where.timeout) as conn:
            count = _send(conn, pairs)
    except (DaemonUnavailable, ProtocolError) as exc:
        fail(where.explain(exc), where.as_json)
    if where.as_json:
        print_json({"ok": True, "records": count})
