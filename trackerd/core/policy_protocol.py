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
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, cast

from servertracker import accel
from servertracker.protocol import append_received, emptied_buffer
from trackerd.errors import PolicyProtocolError

if TYPE_CHECKING:
    from trackerd.core._cpolicy import Parser

__all__ = ["DUNNO_RESPONSE", "NEED_DATA", "PolicyDecoder", "PolicyProtocolError", "Request"]

#: Longest request line, and most lines and bytes in one request. Postfix's own
#: requests are a few dozen short lines.
MAX_LINE: Final = 4096
MAX_ATTRIBUTES: Final = 256
MAX_REQUEST: Final = 64 * 1024

#: The attributes trackerd reads (docs/postfix.md): what it records, and the id of
#: the message, so that a message with several recipients is recorded once. In
#: this order next_request() gives their values.
CLIENT_ADDRESS: Final = "client_address"
SENDER: Final = "sender"
INSTANCE: Final = "instance"
USED_ATTRIBUTES: Final = (CLIENT_ADDRESS, SENDER, INSTANCE)

#: A request's kept values, in the order of the decoder's ``keep``; None: absent.
Request = tuple[str | None, ...]

#: What trackerd always answers: no opinion, so Postfix goes on with its rules.
DUNNO_RESPONSE: Final = b"action=DUNNO\n\n"


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


#: A line that is not name=value, after the newline before it: one that begins
#: with "=", or has no "=" at all (possessive: no backtracking).
_BAD_LINE: Final = re.compile(rb"\n(?:=|[^=\n]*+\n)")
#: A line that begins with "=" (unless it is the first), in a request checked
#: whole: sre finds a literal faster than bytearray.find() does.
_LINE_BEGINS_WITH_EQUALS: Final = re.compile(rb"\n=")
#: A line longer than MAX_LINE, at the start of one.
_LONG_LINE: Final = re.compile(rb"^[^\n]{%d}" % (MAX_LINE + 1), re.MULTILINE)
#: Overwrites a request (its lines, "\r\n" and all): sliced, never copied.
_ZEROS: Final = memoryview(bytes(MAX_REQUEST + 2))
#: Every byte but newline and "=": deleted, what is left of a request is its shape,
#: which holds nothing a peer said.
_NOT_SHAPE: Final = bytes(byte for byte in range(256) if byte not in b"\n=")
#: The longest shape whose lines are surely few enough: each line of a request's
#: shape is at least "=\n", and the empty line that ends it "\n".
_MAX_SHAPE: Final = 2 * MAX_ATTRIBUTES + 1

#: The C twin of the short way (trackerd/core/_cpolicy.c: PolicyDecoder._whole in
#: one pass), or None: the pure-Python code below runs, with the same results.
EXTENSION: Final = "trackerd.core._cpolicy"
_cpolicy = accel.load(EXTENSION)

#: Parser.parse for the default names (USED_ATTRIBUTES), or None: see EXTENSION.
_c_parse: Callable[[bytes | bytearray | memoryview], Request | None] | None = (
    None
    if _cpolicy is None
    else cast(
        "Parser",
        _cpolicy.Parser(
            tuple(name.encode("ascii") for name in USED_ATTRIBUTES), MAX_LINE, MAX_ATTRIBUTES
        ),
    ).parse
)


class PolicyDecoder:
    """Incremental parser for one connection's requests; keeps only the ``keep`` attributes.

    The lines of a request stay in the decoder's own buffer until its empty line
    arrives; then the whole request is checked and its kept values found with a
    few bytearray methods, in C: no Python code runs per line. A read that is one
    whole request, as smtpd sends them, takes the short way: the read gets a
    buffer of its own size (receive_data), checked in three scans (next_request;
    receive_request does both in one call).
    Other reads (a request in pieces, several at once) take the general way
    (_next_request). Then the request's bytes are overwritten; after a malformed
    one, all the decoder holds, and it parses nothing more.
    """

    def __init__(self, keep: Sequence[str] = USED_ATTRIBUTES) -> None:
        #: (b"\nname=", its length, b"name=") of each attribute kept, in the order
        #: of the values.
        self._keep = tuple(
            (f"\n{name}=".encode("ascii"), len(name) + 2, f"{name}=".encode("ascii"))
            for name in keep
        )
        # The C short way takes the default names only (one Parser for all decoders).
        self._c = tuple(keep) == USED_ATTRIBUTES
        # Received bytes not yet parsed are _buffer[_start:_end]; the rest is zeros:
        # each request is overwritten once parsed (docs/threat-model.md).
        self._buffer = bytearray()
        self._start = 0
        self._end = 0
        # The lines of the request in progress before this offset were checked
        # already, so a request that trickles in is checked once, not at every read.
        self._checked = 0
        self._lines = 0
        # The buffer is one read, held alone, that the short way has not looked at.
        self._fresh = False
        self._eof = False
        # A malformed request was found: the connection is done.
        self._failed = False
        #: Requests returned so far; with in_progress, tells when a new one began.
        self.requests = 0

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Copy data in (the caller may overwrite it afterwards); b"" means the
        peer closed the connection."""
        if not data:
            self._eof = True
            return
        if self._start == self._end:
            if self._failed:
                return  # never parsed, so never kept
            # Nothing held (the buffer is zeros): a buffer of the read's own size, so
            # that checking a whole request scans nothing else.
            self._buffer = buffer = bytearray(data)
            self._start = self._checked = 0
            self._end = len(buffer)
            self._fresh = True
            return
        self._fresh = False
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
        return self._eof and self._end == self._start and not self._failed

    def clear(self) -> None:
        """Overwrite what is left of an unfinished request (the connection is closing)."""
        self._buffer[self._start : self._end] = _ZEROS[: self._end - self._start]
        self._buffer, self._start, self._end = emptied_buffer(self._buffer)
        self._checked = self._lines = 0
        self._fresh = False

    def receive_request(self, data: bytes | bytearray | memoryview) -> Request | None:
        """receive_data(data); and when data is one whole request and the decoder
        held nothing before, as smtpd sends them, its kept values at once (the
        short way of next_request()), and the decoder holds nothing after. None:
        call next_request() as usual. (One call where a read is one request.)"""
        if not data or self._start != self._end or self._failed:
            self.receive_data(data)
            return None
        if _c_parse is not None and self._c:
            # In C, on the caller's data: nothing is copied but the values.
            request = _c_parse(data)
            if request is None:
                self.receive_data(data)
                self._fresh = False  # looked at: next_request() goes the general way
            else:
                self.requests += 1
            return request
        self._buffer = buffer = bytearray(data)
        self._start = self._checked = 0
        self._end = end = len(buffer)
        return self._whole(buffer, end)  # looked at: next_request() goes the general way

    def next_request(self) -> Request | _NeedData:
        """The next complete request's kept values (None for one it lacks), or
        NEED_DATA. After a PolicyProtocolError, NEED_DATA for good."""
        buffer, end = self._buffer, self._end
        if self._start == end:
            return NEED_DATA  # nothing received since the last request (or closed cleanly)
        if self._fresh:  # once a read at most: time stays linear in the bytes
            self._fresh = False
            request = self._whole(buffer, end)
            if request is not None:
                return request
        try:
            return self._next_request()
        except PolicyProtocolError:
            self._failed = True
            self.clear()  # the rest, from a peer that sent garbage, is never parsed
            raise

    def _whole(self, buffer: bytearray, end: int) -> Request | None:
        """The short way: the values of buffer, a read not looked at yet, if it is
        one whole request of at most MAX_LINE bytes, checked in three scans (then
        the buffer is overwritten and the decoder holds nothing); else None, and
        the general way will look."""
        if _c_parse is not None and self._c:  # the same in C (buffer is the read: end == len)
            request = _c_parse(buffer)
            if request is None:
                return None
            buffer[:] = _ZEROS[:end]
            self._end = 0
            self.requests += 1
            return request
        # At most MAX_LINE bytes (so neither a line nor the request is too long),
        # ending with "\n\n" or "\n\r\n". (Indexing costs less than a call.)
        if (
            3 < end <= MAX_LINE
            and buffer[-1] == 0x0A
            and (buffer[-2] == 0x0A or (buffer[-2] == 0x0D and buffer[-3] == 0x0A))
        ):
            # Deleting all else leaves "=...=\n" of a line with an "=" in it, "\n" of
            # one without: only the last, the empty line that ends the request, may
            # have none (and, that being so, the read is one request). Each line before
            # it adds 2 bytes at least, so a short shape has few enough lines.
            shape = buffer.translate(None, _NOT_SHAPE)
            size = len(shape)
            if (
                shape[0] == 0x3D  # "="
                and size <= _MAX_SHAPE
                and shape.find(b"\n\n") == size - 2
                and buffer[0] != 0x3D
                and _LINE_BEGINS_WITH_EQUALS.search(buffer) is None
            ):
                try:
                    request = self._values(0, end)
                finally:
                    buffer[:] = _ZEROS[:end]  # parsed: overwritten; the next read replaces it
                    self._end = 0
                self.requests += 1
                return request
        return None

    def _next_request(self) -> Request | _NeedData:
        """next_request() the general way: check what arrived since the last call."""
        buffer, start, end, checked = self._buffer, self._start, self._end, self._checked
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
            request = self._values(start, lines_end)
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

    def _values(self, start: int, stop: int) -> Request:
        """The kept values of the checked lines buffer[start:stop]; a name given
        twice keeps its last value. Only these values are copied out."""
        buffer = self._buffer
        values: list[str | None] = []
        append = values.append
        for line_prefix, skip, prefix in self._keep:
            at = buffer.rfind(line_prefix, start, stop)
            if at >= 0:
                at += skip
            elif buffer.startswith(prefix, start):
                at = start + skip - 1
            else:
                append(None)
                continue
            value_end = buffer.find(b"\n", at, stop)
            if buffer[value_end - 1] == 0x0D and value_end > at:  # "\r"
                value_end -= 1
            # Values may carry SMTPUTF8 addresses; undecodable bytes become U+FFFD,
            # which no valid address contains, so such a sender counts as rejected.
            # (A slice decodes in a third of a memoryview's time; the copy is of a
            # value kept, and freed at once.)
            append(buffer[at:value_end].decode("utf-8", "replace"))
        return tuple(values)
