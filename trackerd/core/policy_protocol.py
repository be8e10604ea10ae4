"""Postfix's policy delegation protocol, sans-IO: requests in, responses out.

A request is ``name=value`` lines ending with an empty line; the answer is
``action=...`` and an empty line, and the connection stays open for the next
request (Postfix's SMTPD_POLICY_README). Attribute order is free. Only the
attributes trackerd uses are kept; every other one (recipient, SASL, TLS, ...)
is checked for form and dropped as it is parsed, never decoded or stored. Lines
and requests are bounded; anything malformed is a PolicyProtocolError, after
which the connection must be closed without a reply. Pure, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from servertracker.protocol import append_received, emptied_buffer
from trackerd.errors import PolicyProtocolError

__all__ = ["DUNNO_RESPONSE", "NEED_DATA", "PolicyDecoder", "PolicyProtocolError"]

#: Longest request line, and most lines and bytes in one request. Postfix's own
#: requests are a few dozen short lines.
MAX_LINE: Final = 4096
MAX_ATTRIBUTES: Final = 256
MAX_REQUEST: Final = 64 * 1024

#: The attributes trackerd reads (docs/postfix.md): what it records, and the id of
#: the message, so that a message with several recipients is recorded once.
CLIENT_ADDRESS: Final = "client_address"
SENDER: Final = "sender"
INSTANCE: Final = "instance"
USED_ATTRIBUTES: Final = frozenset({CLIENT_ADDRESS, SENDER, INSTANCE})

#: What trackerd always answers: no opinion, so Postfix goes on with its rules.
DUNNO_RESPONSE: Final = b"action=DUNNO\n\n"


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


class PolicyDecoder:
    """Incremental parser for one connection's requests; keeps only the ``keep`` attributes."""

    def __init__(self, keep: Iterable[str] = USED_ATTRIBUTES) -> None:
        self._keep = frozenset(name.encode("ascii") for name in keep)
        # Received bytes not yet parsed are _buffer[_start:_end]; the rest is zeros:
        # each line is overwritten once parsed (docs/threat-model.md).
        self._buffer = bytearray()
        self._start = 0
        self._end = 0
        self._attributes: dict[str, str] = {}
        self._request_bytes = 0
        self._lines = 0
        self._eof = False
        #: Requests returned so far; with in_progress, tells when a new one began.
        self.requests = 0

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Copy data in (the caller may overwrite it afterwards); b"" means the
        peer closed the connection."""
        if not data:
            self._eof = True
            return
        self._buffer, self._start, self._end = append_received(
            self._buffer, self._start, self._end, data, MAX_REQUEST
        )

    @property
    def in_progress(self) -> bool:
        """True while part of a request has arrived and its end has not."""
        return self._end > self._start or self._lines > 0

    @property
    def closed_cleanly(self) -> bool:
        """True once the peer has closed between two requests."""
        return self._eof and self._end == self._start and not self._lines

    def next_request(self) -> dict[str, str] | _NeedData:
        """The next complete request's attributes, or NEED_DATA."""
        while True:
            start = self._start
            newline = self._buffer.find(b"\n", start, self._end)
            if newline < 0:
                if self._end - start > MAX_LINE:
                    raise PolicyProtocolError("request line too long")
                if self._eof and (self._end > start or self._lines):
                    raise PolicyProtocolError("connection closed inside a request")
                return NEED_DATA
            if newline - start > MAX_LINE:
                raise PolicyProtocolError("request line too long")
            try:
                request = self._line(start, newline)
            finally:
                # Parsed (or refused): overwritten, so no line outlives its request.
                self._buffer[start : newline + 1] = bytes(newline + 1 - start)
                self._start = newline + 1
                if self._start == self._end:
                    self._buffer, self._start, self._end = emptied_buffer(self._buffer)
            if request is not None:
                return request

    def _line(self, start: int, stop: int) -> dict[str, str] | None:
        """Parse the line _buffer[start:stop]: the request if it was the empty line
        that ends one, else None. Only kept values are copied out of the buffer."""
        buffer = self._buffer
        self._request_bytes += stop - start + 1
        if stop > start and buffer[stop - 1] == 0x0D:  # \r
            stop -= 1
        if stop == start:
            if not self._lines:
                raise PolicyProtocolError("empty request")
            request, self._attributes = self._attributes, {}
            self._lines = self._request_bytes = 0
            self.requests += 1
            return request
        self._lines += 1
        if self._lines > MAX_ATTRIBUTES or self._request_bytes > MAX_REQUEST:
            raise PolicyProtocolError("request too large")
        equals = buffer.find(b"=", start, stop)
        if equals <= start:
            raise PolicyProtocolError("request line without name=value")
        view = memoryview(buffer)
        name = bytes(view[start:equals])
        if name in self._keep:
            # Values may carry SMTPUTF8 addresses; undecodable bytes become U+FFFD,
            # which no valid address contains, so such a sender counts as rejected.
            self._attributes[name.decode("ascii")] = str(
                view[equals + 1 : stop], "utf-8", "replace"
            )
        return None
