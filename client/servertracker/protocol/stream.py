"""The incremental decoder of a byte stream (MessageDecoder), its NEED_DATA and
CLOSED signals, and the received-bytes buffer helpers the policy decoder shares
(append_received, emptied_buffer, KEEP_BUFFER). Sans-IO.
"""

from __future__ import annotations

from typing import Final, cast

from servertracker.error_codes import ERR_EMPTY_FRAME, ERR_TOO_LARGE, ERR_TRUNCATED
from servertracker.errors import LocalProtocolError, ProtocolError
from servertracker.protocol.decoding import Peer, decode_body
from servertracker.protocol.error_texts import (
    TEXT_EMPTY_FRAME,
    TEXT_TOO_LARGE,
    TEXT_TRUNCATED,
    TEXT_TRUNCATED_HEADER,
)
from servertracker.protocol.messages import _HEADER, HEADER_SIZE, MAX_MESSAGE_SIZE, Message


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: ``next_message()`` needs more bytes before it can return a message.
NEED_DATA: Final = _Sentinel("NEED_DATA")
#: The peer closed the connection cleanly, on a frame boundary.
CLOSED: Final = _Sentinel("CLOSED")


class MessageDecoder:
    """Incremental decoder for one direction of one connection.

    Feed bytes with ``receive_data()`` (``b""`` means the peer closed), then call
    ``next_message()`` until it returns NEED_DATA. Once it has raised
    ProtocolError the decoder stays broken: the connection must be closed.
    Memory is bounded by max_message_size plus one read. No received byte is
    left behind in memory the decoder lets go: a frame's bytes are overwritten as
    soon as it is decoded, and so is the buffer's old storage when it grows
    (docs/threat-model.md).
    """

    def __init__(
        self, max_message_size: int = MAX_MESSAGE_SIZE, *, sent_by: Peer = Peer.CLIENT
    ) -> None:
        self._max = max_message_size
        self._sent_by = sent_by
        self._buffer = bytearray()
        # Received bytes not yet decoded are _buffer[_offset:_end]; the rest is zeros.
        self._offset = 0
        self._end = 0
        self._eof = False
        self._error: ProtocolError | None = None
        #: Frames taken from the stream so far, whole (decoded or refused).
        self.frames = 0

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as messages: a frame is in progress."""
        return self._end - self._offset

    @property
    def next_frame_size(self) -> int:
        """The body size of the next frame if it has arrived whole, else 0: a server
        may wait for its turn before it decodes a large one."""
        available = self._end - self._offset - HEADER_SIZE
        if self._error is not None or available < 0:
            return 0
        (size,) = _HEADER.unpack_from(self._buffer, self._offset)
        return size if size <= min(available, self._max) else 0

    def next_body_starts_with(self, prefix: bytes) -> bool:
        """Whether the next frame has arrived whole (next_frame_size) with a body that
        starts with prefix: a server may look before it takes a frame (trackerd
        counts consecutive columns messages together)."""
        size = self.next_frame_size
        start = self._offset + HEADER_SIZE
        return 0 < size >= len(prefix) and self._buffer.startswith(prefix, start)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Copy data in (the caller may overwrite it afterwards)."""
        if self._eof:
            if data:
                raise LocalProtocolError("receive_data() after end of stream")
            return
        if not data:
            self._eof = True
            return
        self._buffer, self._offset, self._end = append_received(
            self._buffer, self._offset, self._end, data, self._max + HEADER_SIZE
        )

    def next_message(self) -> Message | _Sentinel:
        body = self.next_body()
        if type(body) is not bytearray:
            return cast(_Sentinel, body)
        return self.decode(body)

    def next_body(self) -> bytearray | _Sentinel:
        """The body of the next frame, taken whole from the buffer (its bytes there are
        overwritten), or NEED_DATA or CLOSED; the header's errors raise as in
        next_message(). For a caller that reads some bodies itself (trackerd's C
        path): it must overwrite the body once done with it, and hand any body it
        does not read to decode()."""
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except ProtocolError as exc:
            self._error = exc
            raise

    def decode(self, body: bytearray) -> Message:
        """decode_body() of a body next_body() gave; the body is overwritten after."""
        try:
            return decode_body(body, self._sent_by)
        except ProtocolError as exc:
            self._error = exc
            raise
        finally:
            body[:] = bytes(len(body))  # the decoded values are all that is left

    def _next(self) -> bytearray | _Sentinel:
        available = self._end - self._offset
        if available < HEADER_SIZE:
            if self._eof:
                if available:
                    raise ProtocolError(ERR_TRUNCATED, TEXT_TRUNCATED_HEADER)
                return CLOSED
            return NEED_DATA
        (size,) = _HEADER.unpack_from(self._buffer, self._offset)
        if size > self._max:
            # The size is not echoed: four bytes a peer chose could be an IPv4 address.
            raise ProtocolError(ERR_TOO_LARGE, TEXT_TOO_LARGE)
        if size == 0:
            raise ProtocolError(ERR_EMPTY_FRAME, TEXT_EMPTY_FRAME)
        end = self._offset + HEADER_SIZE + size
        if self._end < end:
            if self._eof:
                raise ProtocolError(ERR_TRUNCATED, TEXT_TRUNCATED)
            return NEED_DATA
        return self._take_frame(end)

    def _take_frame(self, end: int) -> bytearray:
        """A copy of the body of the frame ending at end; its bytes in the buffer are
        overwritten."""
        start = self._offset
        body = bytearray(memoryview(self._buffer)[start + HEADER_SIZE : end])
        # Cleartext lives no longer than its message (docs/threat-model.md): the
        # buffer may keep these bytes until the connection closes otherwise.
        self._buffer[start:end] = bytes(end - start)
        self._offset = end
        if self._offset == self._end:
            self._buffer, self._offset, self._end = emptied_buffer(self._buffer)
        self.frames += 1
        return body


#: A buffer emptied of received bytes is kept for the next ones up to this size.
KEEP_BUFFER = 4096


def append_received(
    buffer: bytearray, start: int, end: int, data: bytes | bytearray | memoryview, bound: int
) -> tuple[bytearray, int, int]:
    """buffer[start:end] followed by data, as (buffer, start, end).

    Room is made by moving the live bytes to a new buffer and overwriting the old
    one: a bytearray grown in place (+=) may be moved by realloc(), and the freed
    copy would keep what a peer sent. Shared by the policy decoder. Pure.
    """
    count = len(data)
    if end + count > len(buffer):
        live = end - start
        size = max(live + count, min(2 * (live + count), bound))
        grown = bytearray(size)
        grown[:live] = memoryview(buffer)[start:end]
        buffer[start:end] = bytes(live)
        buffer, start, end = grown, 0, live
    buffer[end : end + count] = data
    return buffer, start, end + count


def emptied_buffer(buffer: bytearray) -> tuple[bytearray, int, int]:
    """A buffer whose bytes were all consumed (and overwritten), ready to refill."""
    return (buffer if len(buffer) <= KEEP_BUFFER else bytearray()), 0, 0
