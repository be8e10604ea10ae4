"""Normalisation and classification of recorded values: pure functions, no I/O.

Every worker sends raw values; this module alone decides what counts as what,
so every worker in every language counts the same way. The results are
canonical keys, bytes: the packed address (4 bytes for IPv4, 16 for IPv6) or the
ASCII domain name. The tracker hashes them at once and never keeps them.
"""

from __future__ import annotations

import enum
import functools
import re
import socket
from collections.abc import Sequence
from typing import Final

import numpy as np

from servertracker.conn_ip import canonical_ip
from servertracker.protocol import MAX_VALUE_LENGTH

# The MAIL FROM split rule lives in the client package (one place), so that a
# worker that sends a sender's domain part (servertracker.sender_split) follows
# the very rule the daemon applies here. So does the IP rule (canonical_ip), so that
# trackerctl can tell a connection IP this module will reject.
from servertracker.sender_split import IGNORED, REJECTED, Outcome, split_sender
from trackerd.core import idna_linear


class Category(enum.IntEnum):
    """The three sets the original tracker keeps."""

    CONN_IP = 0
    DOMAIN = 1
    IP_SERVER = 2


# A host label: letters, digits, hyphens inside. The same rule for every label that
# is not an IDNA one, whether the rest of the name is ASCII or not (issue 12 §10):
# underscores ("mail_relay") and "--" in positions 3-4 ("r3--sn-abc") occur in
# real MAIL FROM domains, and an MX operator counts them as names. A-labels
# ("xn--", checked by idna_linear) match it too, so it checks every name last.
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_DOMAIN_RE: Final = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}")
_MAX_DOMAIN_LENGTH: Final = 253
#: Longer text is rejected before anything else: a name and one trailing dot.
#: (UTS #46 would drop "ignored" code points such as soft hyphens from longer
#: text; no real name needs them, and every later step stays bounded.)
MAX_DOMAIN_TEXT: Final = _MAX_DOMAIN_LENGTH + 1
#: A label holding other than ASCII needs "xn--" and at least one octet per code point.
_MAX_U_LABEL: Final = idna_linear.MAX_PUNYCODE_LENGTH
#: ... and two more: its smallest code point beyond ASCII is at least U+00B7 (none
#: below is PVALID or CONTEXTO), so its first Punycode delta is at least 55, three
#: digits. This bounds how many labels can reach the per-label work.
_U_LABEL_EXTRA: Final = 6
#: IDNA labels in one name, at most. Each costs a fixed amount of work beside its
#: length (a few microseconds); real names hold one or two, and 30 short ones
#: would make a name cost more than 200 us (issue 12's bound for any value).
MAX_IDNA_LABELS: Final = 8
#: Octets of Punycode deltas (what follows an A-label's last hyphen: the encoding
#: of its code points beyond ASCII) in one name's IDNA labels, at most. Decoding,
#: encoding and checking cost about 1.5 us per such octet: 8 labels of 11 CJK
#: ideographs (176 octets) cost 350 us (issue 12 review). A real name needs far
#: fewer (a ten-ideograph label takes about 30); the same bound holds whether a
#: label comes as an A-label or a U-label, since it is measured on the A-label.
MAX_IDNA_DELTA_OCTETS: Final = 96


def canonical_domain(text: str) -> bytes | None:
    """The canonical ASCII form of a domain name, or None if it is not one.

    Case-insensitive, one trailing dot ignored, Unicode and punycode forms of one
    name give the same result (``Bücher.de`` and ``xn--bcher-kva.de``). IDNA
    labels (any with other than ASCII, and "xn--" ones) follow IDNA 2008 after
    UTS #46 mapping; every other label is a host label (_LABEL), in any name.
    The work is linear in the text and bounded by MAX_DOMAIN_TEXT: every length
    that can be checked before a costly step is checked first.
    """
    if len(text) > MAX_DOMAIN_TEXT:
        return None
    if text.isascii():
        name = text.lower()
        if name.endswith("."):
            name = name[:-1]
        if "xn--" in name:
            if name.count("xn--") > MAX_IDNA_LABELS:
                return None
            a_labels = [label for label in name.split(".") if label.startswith("xn--")]
            if sum(map(idna_linear.delta_octets, a_labels)) > MAX_IDNA_DELTA_OCTETS:
                return None  # before any is decoded
            for label in a_labels:
                if len(label) > 63 or not idna_linear.check_a_label(label):
                    return None
    else:
        name = _idna_name(text) or ""
    if len(name) > _MAX_DOMAIN_LENGTH or not _DOMAIN_RE.fullmatch(name):
        return None
    if name.rpartition(".")[2].isdigit():
        return None  # an all-numeric top label: a mangled IP address, not a domain
    return name.encode("ascii")


def _idna_name(text: str) -> str | None:
    """A name with other than ASCII in it, its IDNA labels turned into A-labels."""
    # UTS #46 (no STD3 rules: the host-label rule decides on ASCII labels) maps the
    # other full stops, U+3002, U+FF0E and U+FF61, to ".".
    # A run of combining marks too long for any label is refused before NFC sorts it.
    mapped = idna_linear.uts46_map(text, bound_marks=True)
    if mapped is None:
        return None
    if mapped.endswith("."):
        mapped = mapped[:-1]
    labels = mapped.split(".")
    # Lengths first: a U-label's A-label is at least _U_LABEL_EXTRA octets longer
    # than the label, so these bound every later step.
    widths = list(map(len, labels))
    if max(widths) > 63 or sum(widths) + len(labels) - 1 > _MAX_DOMAIN_LENGTH:
        return None
    unicode_labels = [index for index, label in enumerate(labels) if not label.isascii()]
    if len(mapped) + _U_LABEL_EXTRA * len(unicode_labels) > _MAX_DOMAIN_LENGTH:
        return None
    if len(unicode_labels) + mapped.count("xn--") > MAX_IDNA_LABELS:
        return None
    if any(widths[index] > _MAX_U_LABEL for index in unicode_labels):
        return None
    # What the A-labels as sent take of the deltas' bound, before any work; each
    # U-label's encoding stops as soon as it would exceed what is left.
    budget = MAX_IDNA_DELTA_OCTETS - sum(
        idna_linear.delta_octets(label) for label in labels if label.startswith("xn--")
    )
    if budget < 0:
        return None
    for index, label in enumerate(labels):
        if not label.isascii():
            a_label = idna_linear.to_a_label(label, budget)
            if a_label is None:
                return None
            budget -= idna_linear.delta_octets(a_label)
            labels[index] = a_label
        elif label.startswith("xn--") and not idna_linear.check_a_label(label):
            return None  # an A-label as sent, or one that mapping made ASCII
    return ".".join(labels)


def _looks_like_ip(text: str) -> bool:
    return ":" in text or text.replace(".", "").isdigit()


def classify_conn_ip(value: str | None) -> bytes | Outcome:
    """The packed connection IP, IGNORED for an empty value, REJECTED otherwise
    (servertracker.conn_ip.conn_ip_rejected() says the same without the key)."""
    if not value:
        return IGNORED
    value = value.strip()
    if not value:
        return IGNORED
    if len(value) > MAX_VALUE_LENGTH:
        return REJECTED
    return canonical_ip(value) or REJECTED


#: socket.inet_pton for IPv4 alone, called by map() without a Python frame per value.
_PACK_IPV4: Final = functools.partial(socket.inet_pton, socket.AF_INET)


def ipv4_keys(values: Sequence[str | None]) -> list[bytes] | None:
    """classify_conn_ip() of a batch in which every value is a plain dotted-quad IPv4
    address ("192.0.2.1"), else None: one map() in C, no Python call per value.

    glibc's inet_pton takes exactly those: four decimal octets of at most 255, no
    leading zeros, nothing around them (no space, brackets or port), and raises for
    anything else (None, "", a NUL, non-ASCII digits). Such a value passes
    classify_conn_ip() unchanged to the same inet_pton: the same key. A batch with
    any other value gives None, and the caller classifies it one value at a time,
    so a hostile batch costs at most one more pass of this cheap check.
    """
    try:
        return list(map(_PACK_IPV4, values))
    except (OSError, ValueError, TypeError):
        return None


def classify_domain_part(text: str) -> tuple[Category, bytes] | Outcome:
    """(Category.IP_SERVER or Category.DOMAIN, canonical key) for a domain part, or REJECTED."""
    if text.startswith("["):
        address = canonical_ip(text) if text.endswith("]") else None
        return (Category.IP_SERVER, address) if address else REJECTED
    if _looks_like_ip(text):
        address = canonical_ip(text)
        if address:
            return (Category.IP_SERVER, address)
    domain = canonical_domain(text)
    return (Category.DOMAIN, domain) if domain else REJECTED


# A plain host name, as most senders' domain parts are: ASCII labels of letters,
# digits, underscores and inner hyphens (any case), at most 253 characters and one
# trailing dot, a top label not all digits (so no IP address either). One line per
# value, for a whole batch at once; any other line gives "".
_PLAIN_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_PLAIN_NAME_LINES: Final = re.compile(
    rf"^(?:(?=.{{1,{_MAX_DOMAIN_LENGTH}}}\.?$)"  # the length first: every later step is bounded
    rf"((?:{_PLAIN_LABEL}\.)*(?=[0-9]*[A-Za-z_-]){_PLAIN_LABEL})\.?|.*)$",
    re.MULTILINE,
)


def plain_domains(parts: Sequence[str]) -> list[bytes]:
    """For each domain part, its key if it is a plain host name, else b"".

    A plain name's classify_domain_part() is (Category.DOMAIN, that key), its
    canonical_domain(): lower case, no trailing dot. b"" says only "not plain":
    classify_domain_part() decides that part (an IP, an IDNA name, anything
    malformed). One regular-expression pass over the batch instead of a Python
    call per value; a property test holds it to classify_domain_part().
    """
    joined = "\n".join(parts)
    # A part holding a line break of its own would shift every line after it.
    if joined.count("\n") != len(parts) - 1:
        return [b""] * len(parts)
    short = _short_plain_names(parts, joined)
    if short is not None:
        return short
    if joined.startswith("[") and joined.count("\n[") == len(parts) - 1:
        return [b""] * len(parts)  # address literals only: no line is a name
    names = _PLAIN_NAME_LINES.findall(joined)
    if len(names) != len(parts):
        return [b""] * len(parts)
    # The names are ASCII (the pattern takes nothing else), so lowering them joined
    # lowers each alone.
    lowered = "\n".join(names).lower()
    keys = lowered.encode("ascii").split(b"\n")
    if "xn--" in lowered:  # IDNA labels: only canonical_domain() checks them
        keys = [b"" if b"xn--" in key else key for key in keys]
    return keys


# Each ASCII character's class in a batch of short plain names (_short_plain_names).
_OTHER, _LABEL_CHAR, _DIGIT, _HYPHEN, _DOT, _END = range(6)
_CLASSES = np.full(256, _OTHER, dtype=np.uint8)
_CLASSES[np.frombuffer(b"abcdefghijklmnopqrstuvwxyz_", dtype=np.uint8)] = _LABEL_CHAR
_CLASSES[np.frombuffer(b"0123456789", dtype=np.uint8)] = _DIGIT
_CLASSES[ord("-")], _CLASSES[ord(".")], _CLASSES[ord("\n")] = _HYPHEN, _DOT, _END


def _short_plain_names(parts: Sequence[str], joined: str) -> list[bytes] | None:
    """plain_domains() of a batch in which every part is a plain name of at most 63
    characters (so no label and no name is too long) whose last character is no
    digit, else None. A few array operations over the whole batch, no pass of
    the pattern over each line: most batches of new domain parts are such."""
    if not joined.isascii() or max(map(len, parts), default=64) > 63:
        return None
    lowered = joined.lower()
    if "xn--" in lowered:
        return None
    names = lowered.replace(".\n", "\n")  # one trailing dot each is dropped
    if names.endswith("."):
        names = names[:-1]
    raw = names.encode("ascii")
    if not raw:
        return None
    classes = _CLASSES[np.frombuffer(raw, dtype=np.uint8)]
    edge = classes >= _DOT  # a label's end: a dot, or a name's end (a line break)
    hyphen = classes == _HYPHEN
    digit = classes == _DIGIT
    if (
        classes[0] not in (_LABEL_CHAR, _DIGIT)
        or classes[-1] != _LABEL_CHAR  # a last digit: maybe an all-numeric top label
        or (classes == _OTHER).any()
        # an empty label or name; a label starting or ending with a hyphen
        or (edge[:-1] & (edge[1:] | hyphen[1:])).any()
        or (hyphen[:-1] & edge[1:]).any()
        or (digit[:-1] & (classes[1:] == _END)).any()
    ):
        return None
    return raw.split(b"\n")


def classify_sender(value: str | None) -> tuple[Category, bytes] | Outcome:
    """Classify a sender given as a whole MAIL FROM address or as its domain part.

    Returns (Category.DOMAIN or Category.IP_SERVER, canonical key), IGNORED for an
    empty value or the null sender ``<>``, REJECTED for anything malformed.
    """
    part = split_sender(value)
    return part if isinstance(part, Outcome) else classify_domain_part(part)
