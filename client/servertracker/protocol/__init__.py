"""The trackerd wire protocol, sans-IO: messages, encoding, an incremental decoder, limits.

Nothing here touches a socket. Bytes go into ``MessageDecoder.receive_data()``,
messages come out of ``next_message()``; ``encode(message)`` returns bytes to send.
The daemon and every client drive this one package, so they cannot disagree.
docs/protocol.md is the normative description for implementations in other languages.

A frame is a 4-byte big-endian length N followed by N bytes of one msgpack array:
``[version, type, *fields]``.

The modules, each sans-IO: messages (the message types, limits, feature names),
encoding, error_texts (every fixed text of a ProtocolError), decoding (one frame
body), stream (MessageDecoder and its buffer). This package re-exports what the
daemon, the client, the tests and the benchmarks use, as ``protocol.X``.
"""

from __future__ import annotations

# The error codes of Error messages, as protocol.ERR_*: written in error_codes.py, which
# status.py imports (it cannot import this package, which imports it).
from servertracker.error_codes import ERR_BAD_MESSAGE as ERR_BAD_MESSAGE
from servertracker.error_codes import ERR_BAD_MSGPACK as ERR_BAD_MSGPACK
from servertracker.error_codes import ERR_BUSY as ERR_BUSY
from servertracker.error_codes import ERR_EMPTY_FRAME as ERR_EMPTY_FRAME
from servertracker.error_codes import ERR_FLEET_OFF as ERR_FLEET_OFF
from servertracker.error_codes import ERR_FORBIDDEN as ERR_FORBIDDEN
from servertracker.error_codes import ERR_TOO_LARGE as ERR_TOO_LARGE
from servertracker.error_codes import ERR_TRUNCATED as ERR_TRUNCATED
from servertracker.error_codes import ERR_UNEXPECTED as ERR_UNEXPECTED
from servertracker.error_codes import ERR_UNKNOWN_TYPE as ERR_UNKNOWN_TYPE
from servertracker.error_codes import ERR_UNSUPPORTED_VERSION as ERR_UNSUPPORTED_VERSION
from servertracker.protocol.decoding import Peer as Peer
from servertracker.protocol.decoding import decode_body as decode_body
from servertracker.protocol.encoding import encode as encode
from servertracker.protocol.encoding import encode_columns as encode_columns
from servertracker.protocol.encoding import encode_columns_split as encode_columns_split
from servertracker.protocol.encoding import encode_interned as encode_interned
from servertracker.protocol.encoding import encode_records as encode_records
from servertracker.protocol.encoding import encode_records_split as encode_records_split
from servertracker.protocol.error_texts import ERROR_TEXTS as ERROR_TEXTS
from servertracker.protocol.error_texts import TEXT_FLEET_OFF as TEXT_FLEET_OFF
from servertracker.protocol.error_texts import TEXT_INTERNED_NO_GRANT as TEXT_INTERNED_NO_GRANT
from servertracker.protocol.error_texts import TEXT_INTERNED_RANGE as TEXT_INTERNED_RANGE
from servertracker.protocol.error_texts import TEXT_INTERNED_UNDEFINED as TEXT_INTERNED_UNDEFINED
from servertracker.protocol.error_texts import (
    TEXT_INTERNED_UNREFERENCED as TEXT_INTERNED_UNREFERENCED,
)
from servertracker.protocol.error_texts import TEXT_SECOND_INTERN as TEXT_SECOND_INTERN
from servertracker.protocol.error_texts import TEXT_UNEXPECTED as TEXT_UNEXPECTED
from servertracker.protocol.messages import FEATURE_COLUMNS as FEATURE_COLUMNS
from servertracker.protocol.messages import FEATURE_FLEET as FEATURE_FLEET
from servertracker.protocol.messages import FEATURE_INTERNED as FEATURE_INTERNED
from servertracker.protocol.messages import FEATURES as FEATURES
from servertracker.protocol.messages import FLEET_SKETCH_SIZE as FLEET_SKETCH_SIZE
from servertracker.protocol.messages import HEADER_SIZE as HEADER_SIZE
from servertracker.protocol.messages import INTERNED_NIL as INTERNED_NIL
from servertracker.protocol.messages import INTERNED_REF_SIZE as INTERNED_REF_SIZE
from servertracker.protocol.messages import MAX_ERROR_TEXT as MAX_ERROR_TEXT
from servertracker.protocol.messages import MAX_INTERN_ENTRIES as MAX_INTERN_ENTRIES
from servertracker.protocol.messages import MAX_MESSAGE_SIZE as MAX_MESSAGE_SIZE
from servertracker.protocol.messages import MAX_PAIRS_PER_MESSAGE as MAX_PAIRS_PER_MESSAGE
from servertracker.protocol.messages import MAX_VALUE_LENGTH as MAX_VALUE_LENGTH
from servertracker.protocol.messages import Error as Error
from servertracker.protocol.messages import Features as Features
from servertracker.protocol.messages import FeaturesRequest as FeaturesRequest
from servertracker.protocol.messages import FleetEpoch as FleetEpoch
from servertracker.protocol.messages import FleetReply as FleetReply
from servertracker.protocol.messages import FleetRequest as FleetRequest
from servertracker.protocol.messages import InternReply as InternReply
from servertracker.protocol.messages import InternRequest as InternRequest
from servertracker.protocol.messages import Message as Message
from servertracker.protocol.messages import Pair as Pair
from servertracker.protocol.messages import Ping as Ping
from servertracker.protocol.messages import Pong as Pong
from servertracker.protocol.messages import Record as Record
from servertracker.protocol.messages import RecordColumns as RecordColumns
from servertracker.protocol.messages import RecordInterned as RecordInterned
from servertracker.protocol.messages import StatusReply as StatusReply
from servertracker.protocol.messages import StatusRequest as StatusRequest
from servertracker.protocol.stream import CLOSED as CLOSED
from servertracker.protocol.stream import NEED_DATA as NEED_DATA
from servertracker.protocol.stream import MessageDecoder as MessageDecoder
from servertracker.protocol.stream import _Sentinel as _Sentinel
from servertracker.protocol.stream import append_received as append_received
from servertracker.protocol.stream import emptied_buffer as emptied_buffer
