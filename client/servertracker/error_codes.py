"""The error codes of the wire protocol and of the daemon's counters: the one place
they are written.

The protocol package (the Error message, re-exported there as ERR_*), status.py (the
health map's fixed keys), exposition.py (metric labels) and trackerd (its
replies and counters) all take them from here; docs/protocol.md lists them.
A module of its own, standard library only, because status.py needs the codes
and protocol/messages.py imports status.py.
"""

from __future__ import annotations

from typing import Final

# Sent in Error messages, then the connection closes (docs/protocol.md, "Errors").
ERR_TOO_LARGE: Final = "too-large"
ERR_EMPTY_FRAME: Final = "empty-frame"
ERR_BAD_MSGPACK: Final = "bad-msgpack"
ERR_BAD_MESSAGE: Final = "bad-message"
ERR_UNSUPPORTED_VERSION: Final = "unsupported-version"
ERR_UNKNOWN_TYPE: Final = "unknown-type"
ERR_TRUNCATED: Final = "truncated"
ERR_UNEXPECTED: Final = "unexpected-message"
ERR_FLEET_OFF: Final = "fleet-off"
# The daemon's refusals of a connection, sent on connect.
ERR_FORBIDDEN: Final = "forbidden"
ERR_BUSY: Final = "busy"
#: Counted only: a malformed Postfix policy request (that protocol has no error reply).
POLICY_ERROR: Final = "policy"

#: Why a connection was turned away (the labels of servertracker_connections_refused_total).
REFUSAL_REASONS: Final = (ERR_FORBIDDEN, ERR_BUSY)
#: Protocol error codes the daemon counts: the msgpack protocol's other codes
#: (docs/protocol.md) and "policy" for a malformed Postfix policy request.
PROTOCOL_ERROR_CODES: Final = (
    ERR_TOO_LARGE,
    ERR_EMPTY_FRAME,
    ERR_BAD_MSGPACK,
    ERR_BAD_MESSAGE,
    ERR_UNSUPPORTED_VERSION,
    ERR_UNKNOWN_TYPE,
    ERR_TRUNCATED,
    ERR_UNEXPECTED,
    ERR_FLEET_OFF,
    POLICY_ERROR,
)
