"""A blocking request/reply connection to trackerd, for admin tools and scripts.

This is the transport edge: every OSError from connecting, sending or receiving
becomes a DaemonUnavailable with a stable ``reason`` here, in one place. (SMTP
workers use the non-blocking recorder instead; it never waits for a reply.)
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Sequence
from types import TracebackType

from servertracker import protocol
from servertracker.errors import CONNECT_REASONS, DaemonUnavailable, ProtocolError
from servertracker.paths import closed_directory, not_a_socket
from servertracker.status import Status

DEFAULT_TIMEOUT = 2.0


class _BacklogFull(TimeoutError):
    """connect() kept failing with EAGAIN until the deadline."""


def _unavailable(exc: OSError, socket_path: object) -> DaemonUnavailable:
    if isinstance(exc, TimeoutError):
        if isinstance(exc, _BacklogFull):
            return DaemonUnavailable(
                "timeout",
                f"trackerd at {socket_path} did not accept in time (its listen backlog is "
                "full: the daemon is overloaded or stopped)",
            )
        return DaemonUnavailable("timeout", f"trackerd at {socket_path} did not answer in time")
    reason = CONNECT_REASONS.get(exc.errno or 0, "error")
    kind = None
    if reason in ("refused", "permission-denied") and isinstance(socket_path, (str, os.PathLike)):
        kind = not_a_socket(socket_path)
    if kind is not None:
        return DaemonUnavailable(
            "no-socket", f"{socket_path} is {kind}, not a socket (is the socket path right?)"
        )
    closed = None
    if reason == "permission-denied" and isinstance(socket_path, (str, os.PathLike)):
        closed = closed_directory(socket_path)
    if closed is not None:
        return DaemonUnavailable(
            reason,
            f"permission denied on {socket_path}: this user may not enter {closed} "
            "(run as a user who may, or give trackerd a --runtime-dir this user may enter)",
        )
    text = {
        "no-socket": f"no socket at {socket_path} (is trackerd running?)",
        "refused": f"connection to {socket_path} refused (trackerd is not listening)",
        "permission-denied": f"permission denied on {socket_path} (are you in trackerd's group?)",
    }.get(reason, f"{socket_path}: {exc.strerror or exc}")
    return DaemonUnavailable(reason, text)


class DaemonConnection:
    """One connection to trackerd; requests wait for their reply up to ``timeout`` seconds."""

    def __init__(
        self, socket_path: str | os.PathLike[str], timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.socket_path = os.fspath(socket_path)
        self._timeout = timeout
        self._decoder = protocol.MessageDecoder(sent_by=protocol.Peer.DAEMON)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._connect(time.monotonic() + timeout)
        except OSError as exc:
            self._sock.close()
            raise _unavailable(exc, self.socket_path) from None
        except BaseException:
            self._sock.close()
            raise

    def _connect(self, deadline: float) -> None:
        # A full listen backlog (a busy or stopped daemon) fails a Unix socket's connect
        # at once with EAGAIN instead of waiting: try again until the deadline.
        delay = 0.001
        while True:
            try:
                self._sock.connect(self.socket_path)
                return
            except BlockingIOError:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _BacklogFull(errno.ETIMEDOUT, "listen backlog full") from None
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, 0.05)

    def __enter__(self) -> DaemonConnection:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def _send(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as exc:
            # The daemon may have said why before it closed (say, "forbidden"): read it.
            self._raise_error_reply()
            raise _unavailable(exc, self.socket_path) from None
        except OSError as exc:
            raise _unavailable(exc, self.socket_path) from None

    def _raise_error_reply(self) -> None:
        try:
            reply = self._receive_message()
        except (DaemonUnavailable, ProtocolError) as exc:
            if isinstance(exc, ProtocolError) and exc.code != protocol.ERR_TRUNCATED:
                raise
            return
        raise ProtocolError(protocol.ERR_UNEXPECTED, f"unexpected {type(reply).__name__}")

    def _receive_message(self) -> protocol.Message:
        deadline = time.monotonic() + self._timeout
        while True:
            message = self._decoder.next_message()
            if message is protocol.CLOSED:
                raise DaemonUnavailable(
                    "closed", f"trackerd at {self.socket_path} closed the connection"
                )
            if message is not protocol.NEED_DATA:
                assert not isinstance(message, protocol._Sentinel)
                if isinstance(message, protocol.Error):
                    raise ProtocolError(
                        message.code, f"trackerd refused the request: {message.message}"
                    )
                return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DaemonUnavailable(
                    "timeout", f"trackerd at {self.socket_path} did not answer in time"
                )
            self._sock.settimeout(remaining)
            try:
                data = self._sock.recv(65536)
            except OSError as exc:
                raise _unavailable(exc, self.socket_path) from None
            self._decoder.receive_data(data)

    def _request(
        self, request: protocol.Message, reply_type: type[protocol.Message]
    ) -> protocol.Message:
        self._send(protocol.encode(request))
        reply = self._receive_message()
        if not isinstance(reply, reply_type):
            raise ProtocolError(
                protocol.ERR_UNEXPECTED,
                f"expected {reply_type.__name__}, got {type(reply).__name__}",
            )
        return reply

    def ping(self) -> float:
        """Round-trip time of a ping, in seconds."""
        start = time.perf_counter()
        self._request(protocol.Ping(), protocol.Pong)
        return time.perf_counter() - start

    def features(self) -> tuple[str, ...]:
        """What the daemon understands beyond version 1 (docs/protocol.md), such as
        "columns", and "fleet" in fleet mode; ProtocolError "unknown-type" from a
        daemon older than the features request."""
        reply = self._request(protocol.FeaturesRequest(), protocol.Features)
        assert isinstance(reply, protocol.Features)
        return reply.names

    def status(self) -> Status:
        reply = self._request(protocol.StatusRequest(), protocol.StatusReply)
        assert isinstance(reply, protocol.StatusReply)
        return reply.status

    def fleet(self) -> protocol.FleetReply:
        """The fleet sketches (registers only); ProtocolError "fleet-off" without fleet mode."""
        reply = self._request(protocol.FleetRequest(), protocol.FleetReply)
        assert isinstance(reply, protocol.FleetReply)
        return reply

    def record(self, pairs: Sequence[protocol.Pair]) -> None:
        """Send records; they are applied before any later request on this connection."""
        for frame in protocol.encode_records_split(pairs):
            self._send(frame)
