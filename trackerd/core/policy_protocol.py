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

import re
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


#: A line that is not name=value, after the newline before it: one that begins
#: with "=", or has no "=" at all (possessive: no backtracking).
_BAD_LINE: Final = re.compile(rb"\n(?:=|[^=\n]*+\n)")
#: A line longer than MAX_LINE, at the start of one.
_LONG_LINE: Final = re.compile(rb"^[^\n]{%d}" % (MAX_LINE + 1), re.MULTILINE)
_ZEROS: Final = bytes(MAX_REQUEST + 2)
#: Every byte but newline and "=": deleted, what is left of a request is its shape,
#: which holds nothing a peer said.
_NOT_SHAPE: Final = bytes(byte for byte in range(256) if byte not in b"\n=")


class PolicyDecoder:
    """Incremental parser for one connection's requests; keeps only the ``keep`` attributes.

    The lines of a request stay in the decoder's own buffer until its empty line
    arrives; then the whole request is checked and its kept attributes found with
    bytearray searches and a regular expression, in C: no Python code runs per
    line (at a few dozen lines a request, that was most of a request's cost).
    Then the request's bytes are overwritten.
    """

    def __init__(self, keep: Iterable[str] = USED_ATTRIBUTES) -> None:
        #: (name, b"name=", b"\nname=") of each attribute kept.
        self._keep = tuple(
            (name, f"{name}=".encode("ascii"), f"\n{name}=".encode("ascii")) for name in keep
        )
        # Received bytes not yet parsed are _buffer[_start:_end]; the rest is zeros:
        # each request is overwritten once parsed (docs/threat-model.md).
        self._buffer = bytearray()
        self._start = 0
        self._end = 0
        # The lines of the request in progress before this offset were checked
        # already, so a request that trickles in is checked once, not at every read.
        self._checked = 0
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
        start = self._start
        self._buffer, self._start, self._end = append_received(
            self._buffer, start, self._end, data, MAX_REQUEST
        )
        self._checked += self._start - start  # the buffer may have moved

    @property
    def in_progress(self) -> bool:
        """True while part of a request has arrived and its end has not."""
        return self._end > self._start

    @property
    def closed_cleanly(self) -> bool:
        """True once the peer has closed between two requests."""
        return self._eof and self._end == self._start

    def clear(self) -> None:
        """Overwrite what is left of an unfinished request (the connection is closing)."""
        self._buffer[self._start : self._end] = bytes(self._end - self._start)
        self._buffer, self._start, self._end = emptied_buffer(self._buffer)
        self._checked = self._lines = 0

    def next_request(self) -> dict[str, str] | _NeedData:
        """The next complete request's attributes, or NEED_DATA."""
        buffer, start, end, checked = self._buffer, self._start, self._end, self._checked
        if start == end:
            return NEED_DATA  # nothing received since the last request (or closed cleanly)
        if checked == start and self._whole_request_fine():
            request_end = end
            lines_end = end - (2 if buffer[end - 2] == 0x0D else 1)
        else:
            # The first empty line ends the request: "\n\n", or "\n\r\n" (CRLF is
            # tolerated). The search begins at the newline that ends the last line checked.
            search_from = checked - 1 if checked > start else start
            empty = buffer.find(b"\n\n", search_from, end)
            crlf = buffer.find(b"\n\r\n", search_from, end if empty < 0 else empty + 2)
            if crlf >= 0:
                empty, request_end = crlf, crlf + 3
            else:
                request_end = empty + 2
            lines_end = self._check(empty)
            if lines_end < 0:
                return NEED_DATA
        try:
            request = self._attributes(start, lines_end)
        finally:
            # Parsed: overwritten, so no request outlives its answer.
            buffer[start:request_end] = _ZEROS[: request_end - start]
        self.requests += 1
        self._lines = 0
        if request_end == end:
            self._buffer, self._start, self._end = emptied_buffer(buffer)
            self._checked = 0
        else:
            self._start = self._checked = request_end
        return request

    def _whole_request_fine(self) -> bool:
        """The usual case, checked at a fraction of the cost: the buffer holds one
        whole request of at most MAX_LINE bytes and nothing else (bytes beyond it
        are zeros), none of it checked yet. True when that is so and its lines are
        all name=value and few enough; False says nothing (_check tells what is
        wrong, if anything)."""
        buffer, start, end = self._buffer, self._start, self._end
        # Within MAX_LINE bytes no line is too long, nor the request.
        if end - start > MAX_LINE or not buffer.endswith((b"\n\n", b"\n\r\n"), start, end):
            return False
        # Deleting all else leaves "=...=\n" of a line with an "=" in it, "\n" of one
        # without: only the last, the empty line that ends the request, may have none
        # (and, that being so, no request ends before it).
        shape = buffer.translate(None, _NOT_SHAPE)
        return (
            shape[0] == 0x3D  # "="
            and shape.find(b"\n\n") == len(shape) - 2
            and shape.count(b"\n") <= MAX_ATTRIBUTES + 1
            and buffer[start] != 0x3D
            and buffer.find(b"\n=", start, end) < 0  # no line begins with "="
        )

    def _check(self, empty: int) -> int:
        """Check the lines that arrived since the last check, whatever they are, and
        raise PolicyProtocolError for what is wrong (one fault of several is named).
        Return where the request's attribute lines end, given the offset of the
        newline before its empty line, or -1 without one (the request goes on)."""
        buffer, start, end, checked = self._buffer, self._start, self._end, self._checked
        lines_end = empty + 1 if empty >= 0 else buffer.rfind(b"\n", checked, end) + 1
        if lines_end > checked:
            if checked == start:
                if buffer[start] == 0x0A or buffer.startswith(b"\r\n", start):
                    raise PolicyProtocolError("empty request")
                first = buffer.find(b"=", start, buffer.find(b"\n", start))
                if first <= start:
                    raise PolicyProtocolError("request line without name=value")
            self._check_lines(checked - 1 if checked > start else start, lines_end)
        if empty >= 0:
            return lines_end
        self._checked = checked = max(lines_end, checked)
        if end - checked > MAX_LINE:
            raise PolicyProtocolError("request line too long")
        if self._eof and end > start:
            raise PolicyProtocolError("connection closed inside a request")
        return -1

    def _check_lines(self, search_from: int, lines_end: int) -> None:
        """Check the complete attribute lines up to lines_end not checked yet (after
        the newline at search_from, or the request's first line, checked by the
        caller, at its start): their form, their length, their number, their bytes."""
        buffer, checked = self._buffer, self._checked
        self._lines += buffer.count(b"\n", checked, lines_end)
        if self._lines > MAX_ATTRIBUTES or lines_end - self._start > MAX_REQUEST:
            raise PolicyProtocolError("request too large")
        if lines_end - checked > MAX_LINE:
            with memoryview(buffer) as view, view[checked:lines_end] as lines:
                if _LONG_LINE.search(lines):
                    raise PolicyProtocolError("request line too long")
        if _BAD_LINE.search(buffer, search_from, lines_end):
            raise PolicyProtocolError("request line without name=value")

    def _attributes(self, start: int, stop: int) -> dict[str, str]:
        """The kept attributes of the checked lines buffer[start:stop]; a name given
        twice keeps its last value. Only their values are copied out."""
        buffer = self._buffer
        attributes: dict[str, str] = {}
        with memoryview(buffer) as view:
            for name, prefix, line_prefix in self._keep:
                at = buffer.rfind(line_prefix, start, stop)
                if at >= 0:
                    at += 1
                elif buffer.startswith(prefix, start):
                    at = start
                else:
                    continue
                value_start = at + len(prefix)
                value_end = buffer.find(b"\n", value_start, stop)
                if value_end > value_start and buffer[value_end - 1] == 0x0D:  # \r
                    value_end -= 1
                # Values may carry SMTPUTF8 addresses; undecodable bytes become U+FFFD,
                # which no valid address contains, so such a sender counts as rejected.
                attributes[name] = str(view[value_start:value_end], "utf-8", "replace")
        return attributes
