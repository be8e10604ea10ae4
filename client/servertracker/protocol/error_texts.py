"""The fixed texts a decoder (or the daemon's check of an interned message) puts in a
ProtocolError, and ERROR_TEXTS, the set of them all. Sans-IO.
"""

from __future__ import annotations

from typing import Final

from servertracker.protocol.messages import (
    MAX_FEATURES,
    MAX_INTERN_ENTRIES,
    MAX_PAIRS_PER_MESSAGE,
    PROTOCOL_VERSION,
)

# Every text a decoder can put in a ProtocolError: fixed, so that none can echo
# what a peer sent (a length, a version number, a type name could each carry a
# value). ERROR_TEXTS holds them all; the tests check that nothing else appears.
TEXT_TOO_LARGE: Final = "the frame header announces more than the size limit"
TEXT_EMPTY_FRAME: Final = "empty frame"
TEXT_TRUNCATED_HEADER: Final = "connection closed inside a frame header"
TEXT_TRUNCATED: Final = "connection closed inside a frame"
TEXT_BAD_MSGPACK: Final = "the body is not exactly one well-formed msgpack value"
TEXT_BAD_UTF8: Final = "a string is not valid UTF-8"
TEXT_NOT_AN_ARRAY: Final = "a message must be an array [version, type, ...]"
TEXT_BAD_VERSION: Final = "the version must be an integer"
TEXT_UNSUPPORTED_VERSION: Final = (
    f"protocol version not supported (this side speaks {PROTOCOL_VERSION})"
)
TEXT_BAD_TYPE: Final = "the message type must be a string"
TEXT_UNKNOWN_TYPE: Final = "unknown message type"
TEXT_NO_PAIRS: Final = "record needs its pairs"
TEXT_PAIRS_NOT_ARRAY: Final = "record pairs must be an array"
TEXT_TOO_MANY_PAIRS: Final = f"more than {MAX_PAIRS_PER_MESSAGE} pairs in one message"
TEXT_BAD_PAIR: Final = "each pair must be an array of two elements, each a string or nil"
TEXT_UNEXPECTED: Final = "this side may not receive this message"
TEXT_NO_STATUS: Final = "a status reply needs its fields"
TEXT_BAD_STATUS: Final = "invalid status fields"
TEXT_BAD_ERROR: Final = "error needs a code and a message, both strings"
TEXT_BAD_FLEET: Final = "invalid fleet reply"
TEXT_FLEET_OFF: Final = "fleet mode is off (trackerd has no --fleet-key-file)"
TEXT_BAD_COLUMNS: Final = (
    f"columns needs two arrays of equal length, 1 to {MAX_PAIRS_PER_MESSAGE} strings or nil"
)
TEXT_BAD_FEATURES: Final = (
    f"features needs an array of at most {MAX_FEATURES} strings of {MAX_FEATURES} characters"
)
TEXT_BAD_INTERN: Final = f"intern needs a table size, an integer from 1 to {MAX_INTERN_ENTRIES}"
TEXT_BAD_INTERN_REPLY: Final = (
    f"an intern reply needs the size granted, an integer from 0 to {MAX_INTERN_ENTRIES}"
)
TEXT_BAD_INTERNED: Final = (
    "interned needs, for each column, a first id, an array of new strings and a bin of"
    f" 4-byte references; both bins of 1 to {MAX_PAIRS_PER_MESSAGE} references, equally long"
)
# The daemon's own checks of an interned message against the connection's tables
# (trackerd/core/value_table.py): sent as bad-message, fixed texts as all others.
TEXT_SECOND_INTERN: Final = "intern may be asked only once per connection"
TEXT_INTERNED_NO_GRANT: Final = "interned sent on a connection that was granted no table"
TEXT_INTERNED_RANGE: Final = "an interned id is beyond the table granted"
TEXT_INTERNED_UNDEFINED: Final = "an interned reference names an id not defined on this connection"
TEXT_INTERNED_UNREFERENCED: Final = "an interned definition is not referenced by its message"
ERROR_TEXTS: Final = frozenset(
    value for name, value in list(globals().items()) if name.startswith("TEXT_")
)
