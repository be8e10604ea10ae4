"""Which text is an IP address, and its packed form: the rule trackerd counts by.
Pure, no I/O.

trackerd's normaliser (trackerd/core/normalise.py) imports canonical_ip() from
here, as it imports the sender split rule from sender_split.py: so that
`trackerctl record` can tell, before sending, that the daemon will reject a
connection IP (and say so without echoing it), with no second copy of the rule.
"""

from __future__ import annotations

import socket
from typing import Final

from servertracker.protocol import MAX_VALUE_LENGTH

_V4_MAPPED_PREFIX: Final = bytes(10) + b"\xff\xff"


def canonical_ip(text: str) -> bytes | None:
    """The packed address of an IP in any common textual form, or None.

    Accepts ``1.2.3.4``, ``[1.2.3.4]``, ``2001:db8::1``, ``[IPv6:2001:DB8::1]``,
    IPv4-mapped IPv6 (counted as the IPv4 address) and zoned IPv6 (zone dropped:
    the same address on another interface is the same server). The packed form
    is canonical by construction, and inet_pton is strict (no leading zeros, no
    short forms) and far faster than the ipaddress module.
    """
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        if ":" not in text:
            return socket.inet_pton(socket.AF_INET, text)
        if text[:5].lower() == "ipv6:":
            text = text[5:]
        zone = text.find("%")
        if zone >= 0:
            if zone == len(text) - 1:
                return None
            text = text[:zone]
        packed = socket.inet_pton(socket.AF_INET6, text)
    except (OSError, ValueError):  # ValueError covers NUL bytes and non-ASCII text
        return None
    return packed[12:] if packed.startswith(_V4_MAPPED_PREFIX) else packed


def conn_ip_rejected(value: str) -> bool:
    """True when trackerd will count this connection IP as rejected (not an IP, or
    too long); False for one it counts, and for an empty one, which it ignores."""
    value = value.strip()
    if not value:
        return False
    return len(value) > MAX_VALUE_LENGTH or canonical_ip(value) is None
