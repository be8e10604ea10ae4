"""The wire protocol's messages: their dataclasses, the Pair and Refs types, the
protocol version, the limits and the feature names. Sans-IO.
"""

from __future__ import annotations

import array
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

from servertracker.status import Status

PROTOCOL_VERSION: Final = 1

#: Largest frame body accepted, in bytes. Bounds the decoder's memory per connection.
MAX_MESSAGE_SIZE: Final = 1024 * 1024
#: Most (conn_ip, sender) pairs in one record message.
MAX_PAIRS_PER_MESSAGE: Final = 65536
#: Longer record values are malformed (counted as rejected, never as a server).
#: An RFC 5321 path is at most 256 octets; this leaves room for sloppy senders.
MAX_VALUE_LENGTH: Final = 512
#: Longest error message text sent or accepted, in characters.
MAX_ERROR_TEXT: Final = 512

#: Most entries a client may ask for in EACH of its two interned tables (connection
#: IPs, senders); ids run from 0 to granted - 1.
MAX_INTERN_ENTRIES: Final = 1 << 20
#: The reference meaning "not known" in an interned message (as nil in columns).
INTERNED_NIL: Final = 0xFFFFFFFF
#: Bytes per reference in an interned message: a little-endian uint32.
INTERNED_REF_SIZE: Final = 4

_HEADER = struct.Struct(">I")
HEADER_SIZE: Final = _HEADER.size


#: Size of one fleet sketch: a dense Redis HyperLogLog string (16-byte header and
#: 16,384 six-bit registers), as trackerd/core/fleet_sketch.py makes it.
FLEET_SKETCH_SIZE: Final = 12304
#: The fleet reply carries at most the current and the previous epoch.
MAX_FLEET_EPOCHS: Final = 2
#: At most this many sketches (categories) in one epoch of a fleet reply.
MAX_FLEET_SKETCHES: Final = 8

#: A pair as it comes off the wire: a two-element list of str or None.
Pair: TypeAlias = Sequence[str | None]


@dataclass(frozen=True, slots=True)
class Record:
    """One or many (conn_ip, sender) pairs. No reply."""

    pairs: Sequence[Pair]


@dataclass(frozen=True, slots=True)
class RecordColumns:
    """Many pairs as two columns: (conn_ips[i], senders[i]) is pair i. No reply.

    Means exactly what Record of those pairs means; it costs the daemon less (no
    array per pair, and the columns are what its hot loop takes). Sent only to a
    daemon whose Features list FEATURE_COLUMNS.
    """

    conn_ips: Sequence[str | None]
    senders: Sequence[str | None]


@dataclass(frozen=True, slots=True)
class InternRequest:
    """Ask, once per connection, for two value tables of entries ids each (connection
    IPs, senders). Reply: InternReply. Sent only to a daemon listing FEATURE_INTERNED."""

    entries: int


@dataclass(frozen=True, slots=True)
class InternReply:
    """The ids granted in each table, 0 to the entries asked: 0 means send columns."""

    granted: int


#: References as they travel: N little-endian uint32 (INTERNED_NIL or an id). The
#: encoder also takes array('I'); the decoder returns bytes, never one int per ref.
Refs: TypeAlias = "bytes | bytearray | memoryview | array.array[int]"


@dataclass(frozen=True, slots=True)
class RecordInterned:
    """Many pairs as references into the connection's two value tables. No reply.

    ip_new[i] defines id ip_first + i of the connection-IP table (sender_* likewise),
    applied before the references are resolved; pair i is (the value of ip_refs[i],
    the value of sender_refs[i]). The decoder checks shapes only: what the ids name
    is the daemon's to check against its tables (docs/protocol.md, "interned").
    """

    ip_first: int
    ip_new: Sequence[str]
    ip_refs: bytes
    sender_first: int
    sender_new: Sequence[str]
    sender_refs: bytes

    @property
    def count(self) -> int:
        """The number of pairs (N)."""
        return len(self.ip_refs) // INTERNED_REF_SIZE


@dataclass(frozen=True, slots=True)
class FeaturesRequest:
    """Ask which additions to version 1 the daemon understands. Reply: Features."""


@dataclass(frozen=True, slots=True)
class Features:
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StatusRequest:
    """Ask for the current Status. Reply: StatusReply."""


@dataclass(frozen=True, slots=True)
class Ping:
    """Liveness check. Reply: Pong."""


@dataclass(frozen=True, slots=True)
class StatusReply:
    status: Status


@dataclass(frozen=True, slots=True)
class Pong:
    pass


@dataclass(frozen=True, slots=True)
class FleetRequest:
    """Ask for the fleet sketches (docs/fleet.md). Reply: FleetReply."""


@dataclass(frozen=True, slots=True)
class FleetEpoch:
    """One epoch's sketches: status field name -> dense Redis HyperLogLog string."""

    epoch: int
    sketches: dict[str, bytes]


@dataclass(frozen=True, slots=True)
class FleetReply:
    """The current epoch's sketches first, then the previous epoch's if kept."""

    epoch_seconds: int
    epochs: tuple[FleetEpoch, ...]


@dataclass(frozen=True, slots=True)
class Error:
    """Sent by the daemon just before it closes a connection that sent garbage."""

    code: str
    message: str


Message: TypeAlias = (
    Record
    | RecordColumns
    | RecordInterned
    | InternRequest
    | InternReply
    | FeaturesRequest
    | Features
    | StatusRequest
    | Ping
    | StatusReply
    | Pong
    | Error
    | FleetRequest
    | FleetReply
)

#: The "columns" message (RecordColumns) is understood.
FEATURE_COLUMNS: Final = "columns"
#: The "intern" request and the "interned" message (RecordInterned) are understood
#: (the daemon may still grant 0 ids). Listed only when the daemon's
#: --max-interned-entries lets it grant ids.
FEATURE_INTERNED: Final = "interned"
#: Fleet mode is on: a FleetRequest gets a FleetReply, not the error "fleet-off".
#: Listed only then, as SMTP's EHLO lists only the extensions configured.
FEATURE_FLEET: Final = "fleet"
#: What a daemon lists by default beyond the messages every version-1 daemon knows
#: (it drops FEATURE_INTERNED when it can grant no ids, adds FEATURE_FLEET in fleet mode).
FEATURES: Final = (FEATURE_COLUMNS, FEATURE_INTERNED)
#: Most feature names in a Features reply, and the longest name.
MAX_FEATURES: Final = 64
