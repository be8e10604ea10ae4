"""What the fuzzers feed: the sans-IO decoder, and a live daemon's socket."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from servertracker import protocol
from servertracker.errors import ProtocolError


def decode_everything(
    data: bytes, chunk: int = 7, sent_by: protocol.Peer = protocol.Peer.CLIENT
) -> list[object]:
    """Feed data to a decoder in chunks; return the messages. Raises only ProtocolError."""
    decoder = protocol.MessageDecoder(sent_by=sent_by)
    messages: list[object] = []
    for start in range(0, len(data), chunk):
        decoder.receive_data(data[start : start + chunk])
        while (message := decoder.next_message()) is not protocol.NEED_DATA:
            messages.append(message)
    decoder.receive_data(b"")
    while (message := decoder.next_message()) not in (protocol.NEED_DATA, protocol.CLOSED):
        messages.append(message)
    return messages


def carries_records(data: bytes) -> bool:
    """Would the daemon count anything from these bytes? (Then they may change counts.)"""
    decoder = protocol.MessageDecoder()
    decoder.receive_data(data)
    try:
        while (message := decoder.next_message()) is not protocol.NEED_DATA:
            if isinstance(message, protocol.Record) and message.pairs:
                return True
            if message is protocol.CLOSED:
                break
    except ProtocolError:
        pass
    return False


@dataclass
class DaemonTarget:
    """Sends each input on a fresh connection, half-closes, reads until the daemon closes."""

    socket_path: Path
    timeout: float = 5.0
    sent: int = 0
    skipped: int = 0
    errors_seen: dict[str, int] = field(default_factory=dict)

    def send(self, data: bytes) -> None:
        if carries_records(data):
            self.skipped += 1  # would change the counts legitimately
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            sock.connect(os.fspath(self.socket_path))
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the daemon closed first, having seen enough
            reply = bytearray()
            try:
                while chunk := sock.recv(65536):
                    reply += chunk
            except ConnectionResetError:
                pass
        self.sent += 1
        try:
            for message in decode_everything(bytes(reply), sent_by=protocol.Peer.DAEMON):
                if isinstance(message, protocol.Error):
                    self.errors_seen[message.code] = self.errors_seen.get(message.code, 0) + 1
        except ProtocolError as exc:
            raise AssertionError(f"the daemon sent an invalid reply: {exc}") from None
