"""How a worker cuts a long value before queueing it, keeping the daemon's verdict.

The daemon strips a value (str.strip(), no argument: trackerd/core/normalise.py's
classify_conn_ip() and sender_split.split_sender()), then rejects it if more than
MAX_VALUE_LENGTH characters are left. cut() strips with the very same str
methods (so the same whitespace set: str.isspace()), and so sends a value
that the daemon judges as it would judge the whole: its stripped text when
that fits, else MAX_VALUE_LENGTH + 1 characters with no whitespace at either
end, which the daemon rejects. Cutting before stripping (as the recorder did)
turned "<spaces>a@b.com" into "<spaces>a@b", counted as another domain.
Pure, no I/O.
"""

from __future__ import annotations

import codecs
from typing import Any, Final

from servertracker.protocol import MAX_VALUE_LENGTH

#: Values are cut to at most this many characters (one more than the daemon
#: takes, so that one it rejects is still rejected).
SEND_VALUE_LIMIT: Final = MAX_VALUE_LENGTH + 1
#: cut() looks at this many characters at each end of a long value first; only a
#: run of whitespace longer than this costs a pass over the whole value (a copy,
#: no more than making the value cost).
_PROBE: Final = 4096
#: Of a bytes value, at most this many bytes are decoded: a 20 MB value took
#: 51-66 ms to decode whole. They hold at least 2,047 characters (UTF-8 takes at
#: most 4 bytes a character, and "replace" makes one character of at most 3 bad
#: bytes), so a longer value is judged by them as the daemon judges the whole
#: unless those characters hold more than 1,534 (2,047 - 513) whitespace ones:
#: only then can what follows them decide (README.md, "What the library guarantees").
BYTES_DECODED: Final = 8192


def cut(text: str) -> str:
    """``text``, or a form of it at most SEND_VALUE_LIMIT long that the daemon
    judges alike: counted as the same value, rejected, or ignored."""
    if len(text) <= SEND_VALUE_LIMIT:
        return text
    probe = text[:_PROBE]
    rest = probe.lstrip()
    lead = len(probe) - len(rest) if rest else len(text) - len(text.lstrip())
    if lead == len(text):
        return ""  # whitespace only: ignored
    tail_at = max(lead, len(text) - _PROBE)
    tail = text[tail_at:].rstrip()
    last = tail_at + len(tail) if tail else len(text.rstrip())
    if last - lead <= MAX_VALUE_LENGTH:
        return text[lead:last]  # text.strip(): what the daemon judges
    # Too long: rejected. Its first characters and its last one, no whitespace at
    # either end, so the daemon strips nothing and rejects it too.
    return text[lead : lead + MAX_VALUE_LENGTH] + text[last - 1]


def clean(value: Any) -> str | None:
    """A value the protocol accepts (str or None, cut), whatever the caller passed."""
    if value is None:
        return None
    if type(value) is str:
        text = value
    elif isinstance(value, bytes | bytearray):
        text = _decode(value)
    else:
        try:
            text = str(value)
        except Exception:
            return None
        if type(text) is not str:  # a str subclass: its own methods could differ
            text = str.__str__(text)
    text = cut(text)
    # Lone surrogates (from surrogateescape decoding) cannot travel as UTF-8.
    return text.encode("utf-8", "replace").decode("utf-8")


def _decode(value: bytes | bytearray) -> str:
    """The text of a bytes value, at most its first BYTES_DECODED bytes' (a
    character cut at the end left out)."""
    if len(value) <= BYTES_DECODED:
        return bytes(value).decode("utf-8", "replace")
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    return decoder.decode(bytes(value[:BYTES_DECODED]), final=False)
