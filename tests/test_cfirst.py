"""First sightings in C (trackerd/core/_cfirst.c) against their reference. Pure.

normalise.py and servertracker.sender_split decide what a value comes to; the C code
decides the common forms alone and must agree on every value it decides (counted
with the same canonical key, rejected, ignored), leaving the rest UNSURE. Its
BLAKE2b must be hashlib's. Hypothesis aims at the edges: case, dots, label and name
lengths about 63 and 253, hyphens at label ends, digits, IPv4 octets with leading
zeros and 256, empty labels, "@" counts, brackets and space. Skipped where the
extension is not built (test_accel.py fails where it could have been).
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servertracker.sender_split import Outcome
from trackerd.core import keyed_hash
from trackerd.core.interned import IPS
from trackerd.core.interned import SENDERS as SENDER_COLUMN
from trackerd.core.keyed_hash import (
    CONN_IPS,
    DOMAIN_PARTS,
    IGNORED,
    PERSON,
    REJECTED,
    SENDERS,
    UNSURE,
    KeyedHash,
)
from trackerd.core.normalise import classify_conn_ip, classify_domain_part, classify_sender
from trackerd.core.tracker import DIGEST_SIZE, Tracker

_cfirst = keyed_hash._cfirst
pytestmark = pytest.mark.skipif(
    _cfirst is None, reason="the C extension is not built (or SERVERTRACKER_PURE_PYTHON is set)"
)

EXAMPLES = settings(max_examples=300, derandomize=True, deadline=None)

# --- BLAKE2b ---------------------------------------------------------------------

#: Around the block boundaries (128 bytes), and the key block alone (empty).
_LENGTHS = st.sampled_from([0, 1, 2, 63, 64, 127, 128, 129, 255, 256, 257, 300])


@EXAMPLES
@given(
    st.binary(max_size=64),
    st.binary(max_size=16),
    st.integers(1, 64),
    _LENGTHS.flatmap(lambda n: st.binary(min_size=n, max_size=n)) | st.binary(max_size=600),
)
def test_blake2b_is_hashlibs(key: bytes, person: bytes, size: int, data: bytes) -> None:
    assert _cfirst is not None
    expected = hashlib.blake2b(data, key=key, person=person, digest_size=size).digest()
    assert _cfirst.blake2b(data, key, person, size) == expected


@pytest.mark.parametrize(
    ("key", "person", "size"),
    [(b"k" * 65, b"", 8), (b"", b"p" * 17, 8), (b"", b"", 0), (b"", b"", 65)],
)
def test_blake2b_refuses_what_hashlib_refuses(key: bytes, person: bytes, size: int) -> None:
    assert _cfirst is not None
    with pytest.raises(ValueError):
        hashlib.blake2b(key=key, person=person, digest_size=size)
    with pytest.raises(ValueError):
        _cfirst.blake2b(b"x", key, person, size)


@EXAMPLES
@given(st.binary(min_size=1, max_size=64), st.binary(max_size=300), st.integers(0, 2))
def test_the_keyed_hash_is_the_same_in_c_and_hashlib(
    key: bytes, data: bytes, category: int
) -> None:
    c_hash = keyed_hash.new_keyed_hash(key, DIGEST_SIZE)
    python_hash = KeyedHash(key, DIGEST_SIZE)
    assert c_hash.first_sightings is not None
    assert c_hash.digest(category, data) == python_hash.digest(category, data)
    assert c_hash.digests(category, [data, b"x"]) == python_hash.digests(category, [data, b"x"])
    expected = hashlib.blake2b(data, key=key, person=PERSON % category, digest_size=DIGEST_SIZE)
    assert c_hash.digest(category, data) == expected.digest()


# --- the rules -------------------------------------------------------------------

_OCTETS = ["0", "00", "01", "1", "9", "10", "99", "100", "199", "255", "256", "300", "0255", ""]
ipv4ish = st.lists(st.sampled_from(_OCTETS), min_size=2, max_size=5).map(".".join)
_LABEL_ALPHABET = "abzAZ09_-"
#: Labels of every length about the bound of 63, hyphens and digits at their ends.
labels = st.one_of(
    st.text(_LABEL_ALPHABET, min_size=0, max_size=5),
    st.integers(61, 64).map(lambda n: "a" * n),
    st.sampled_from(["-a", "a-", "a--b", "xn--bcher-kva", "XN--x", "123", "0", "_", "x1"]),
)
names = st.lists(labels, min_size=1, max_size=6).map(".".join)
#: Names of about 253 octets: labels of 63 ("a" * 63) and a short last one.
long_names = st.integers(240, 258).map(lambda n: ".".join(["a" * 63] * 3 + ["b" * (n - 192)]))
domain_parts = st.one_of(
    names,
    names.map(lambda name: name + "."),
    names.map(lambda name: name + ".."),
    long_names,
    long_names.map(lambda name: name + "."),
    ipv4ish,
    ipv4ish.map(lambda ip: f"[{ip}]"),
    ipv4ish.map(lambda ip: f"[{ip}"),
    st.sampled_from(
        [
            "[]",
            "[",
            "]",
            "[IPv6:2001:db8::1]",
            "2001:db8::1",
            "::1",
            ".",
            "a..b",
            "bücher.de",
            "a b.example",
            "a\x00b.example",
            "[1.2.3.4\x00]",
        ]
    ),
    st.text(_LABEL_ALPHABET + ".[]:@ <>", max_size=12),
)
_SPACE = st.sampled_from(["", " ", "\t", "\x1f", "\u00a0"])
senders = st.one_of(
    domain_parts,
    st.tuples(st.sampled_from(["u", "U.x", "", "a@b", "@r:u", '"q"']), domain_parts).map(
        lambda p: f"{p[0]}@{p[1]}"
    ),
    st.tuples(
        _SPACE,
        st.sampled_from(["<", ""]),
        st.sampled_from(["u@", "", "@", "u@@"]),
        domain_parts,
        st.sampled_from([">", ""]),
        _SPACE,
    ).map("".join),
    st.sampled_from(
        [
            "",
            "<>",
            " <> ",
            "< >",
            "<",
            ">",
            "@",
            "@a",
            "u@",
            "<u@>",
            "<@a:u@b.c>",
            "u@b.c>",
            "<u@b.c",
            "u@[1.2.3.4]",
            "<postmaster@[192.0.2.1]>",
        ]
    ),
    st.text(_LABEL_ALPHABET + ".[]:@ <>\t", max_size=16),
    st.none(),
)
conn_ips = st.one_of(
    ipv4ish,
    st.tuples(_SPACE, ipv4ish, _SPACE).map("".join),
    ipv4ish.map(lambda ip: f"[{ip}]"),
    st.sampled_from(
        [
            "",
            " ",
            "::1",
            "[IPv6:::1]",
            "::ffff:1.2.3.4",
            "1.2.3.4%eth0",
            "x" * 600,
            "1.2.3.4\x00",
            "\u0661.2.3.4",
            "[1.2.3.4",
        ]
    ),
    st.text("0129.[]: ", max_size=16),
    st.none(),
)


def expect(reference: object) -> tuple[int, bytes | None]:
    """The C code and key that normalise.py's answer means."""
    if reference is Outcome.REJECTED:
        return REJECTED, None
    if reference is Outcome.IGNORED:
        return IGNORED, None
    if type(reference) is bytes:
        return 1, reference  # 1 + Category.CONN_IP
    category, key = reference  # type: ignore[misc]
    return 1 + int(category), key


def check(column: int, value: str | None, reference: object) -> int:
    assert _cfirst is not None
    code, key = _cfirst.canonical(column, value)
    if code != UNSURE:
        assert (code, key) == expect(reference), value
    return code


@EXAMPLES
@given(conn_ips)
def test_connection_ips_are_decided_as_normalise_decides(value: str | None) -> None:
    check(CONN_IPS, value, classify_conn_ip(value))


@EXAMPLES
@given(domain_parts)
def test_domain_parts_are_decided_as_normalise_decides(value: str) -> None:
    if value:  # split_sender() never gives an empty part
        check(DOMAIN_PARTS, value, classify_domain_part(value))


@EXAMPLES
@given(senders)
def test_senders_are_decided_as_normalise_decides(value: str | None) -> None:
    check(SENDERS, value, classify_sender(value))


#: The common forms, each with what it comes to: C decides every one of them itself.
COMMON = [
    (CONN_IPS, "10.1.2.3", 1),
    (CONN_IPS, " 192.0.2.1\t", 1),
    (CONN_IPS, "[192.0.2.1]", 1),
    (CONN_IPS, "", IGNORED),
    (CONN_IPS, None, IGNORED),
    (CONN_IPS, "10.01.2.3", REJECTED),
    (CONN_IPS, "256.1.1.1", REJECTED),
    (SENDERS, "mail7.example.com", 2),
    (SENDERS, "user3@mail7.example.com", 2),
    (SENDERS, "<user3@mail7.example.com>", 2),
    (SENDERS, "User@MAIL7.Example.COM.", 2),
    (SENDERS, "[192.0.2.7]", 3),
    (SENDERS, "postmaster@[192.0.2.7]", 3),
    (SENDERS, "<postmaster@[192.0.2.7]>", 3),
    (SENDERS, "192.0.2.7", 3),
    (SENDERS, "<>", IGNORED),
    (SENDERS, "", IGNORED),
    (SENDERS, "user@", REJECTED),
    (SENDERS, "u@-a.example", REJECTED),
    (SENDERS, "u@" + "a" * 64 + ".example", REJECTED),
    (SENDERS, "u@a.123", REJECTED),
    (SENDERS, "u@1.2.3.256", REJECTED),
]


@pytest.mark.parametrize(("column", "value", "code"), COMMON)
def test_the_common_forms_are_decided_in_c(column: int, value: str | None, code: int) -> None:
    reference = classify_conn_ip(value) if column == CONN_IPS else classify_sender(value)
    assert check(column, value, reference) == code


@pytest.mark.parametrize(
    "value",
    [
        "u@bücher.de",
        "u@xn--bcher-kva.de",
        "u@[IPv6:2001:db8::1]",
        "@r:u@a.example",
        "u@a.\u00e9xample",
        "\u00a0u@a.example",
    ],
)
def test_the_rest_is_left_to_python(value: str) -> None:
    assert _cfirst is not None
    assert _cfirst.canonical(SENDERS, value) == (UNSURE, None)


@EXAMPLES
@given(st.lists(senders, max_size=20), st.binary(min_size=1, max_size=64))
def test_a_batch_gives_each_values_code_and_digest(values: list[str | None], key: bytes) -> None:
    assert _cfirst is not None
    c_hash = keyed_hash.new_keyed_hash(key, DIGEST_SIZE)
    assert c_hash.first_sightings is not None
    codes, digests, queued = c_hash.first_sightings.classify(SENDERS, values)
    assert len(codes) == len(values) and len(digests) == DIGEST_SIZE * len(values)
    expected_queue: list[list[bytes]] = [[], [], []]
    for i, value in enumerate(values):
        code, canonical_key = _cfirst.canonical(SENDERS, value)
        assert codes[i] == code
        digest = digests[i * DIGEST_SIZE : (i + 1) * DIGEST_SIZE]
        if canonical_key is None:
            assert digest == bytes(DIGEST_SIZE)
        else:
            assert digest == KeyedHash(key, DIGEST_SIZE).digest(code - 1, canonical_key)
            expected_queue[code - 1].append(digest)
    assert queued == tuple(b"".join(each) for each in expected_queue)


def test_bad_arguments_are_refused() -> None:
    assert _cfirst is not None
    first = keyed_hash.new_keyed_hash(b"k", DIGEST_SIZE).first_sightings
    assert first is not None
    with pytest.raises(TypeError):
        first.classify(SENDERS, ["a.example", 3])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        first.classify(SENDERS, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        first.classify(7, [])
    with pytest.raises(ValueError):
        first.digest(3, b"x")
    with pytest.raises(ValueError):
        _cfirst.FirstSightings(b"k", [b"a", b"b"], 8)
    assert first.classify(CONN_IPS, ()) == (b"", b"", (b"", b"", b""))


# --- in the tracker -------------------------------------------------------------

SALT = b"s" * 32


@settings(max_examples=100, derandomize=True, deadline=None)
@given(st.lists(conn_ips, max_size=12), st.lists(senders, max_size=12))
def test_interned_definitions_are_the_same_with_c_first_sightings(
    ips: list[str | None], sender_values: list[str | None]
) -> None:
    """define_values() (interned.py) on a tracker deciding first sightings in C and
    one deciding them in Python: the same codes and digests, value by value, and
    the same counts."""
    c_tracker = Tracker(salt=SALT)
    python_tracker = Tracker(salt=SALT, c_first_sightings=False)
    assert c_tracker._first is not None and python_tracker._first is None
    for column, values in ((IPS, ips), (SENDER_COLUMN, sender_values)):
        texts = [value for value in values if value is not None]
        c_done, c_found = c_tracker.define_values(column, texts)
        python_done, python_found = python_tracker.define_values(column, texts)
        assert c_done == python_done == len(texts)
        assert c_found.codes.tolist() == python_found.codes.tolist()
        assert c_found.digests.tolist() == python_found.digests.tolist()
    c_status, python_status = c_tracker.status(), python_tracker.status()
    assert (c_status.unique_conn_ips, c_status.unique_domains, c_status.unique_ip_servers) == (
        python_status.unique_conn_ips,
        python_status.unique_domains,
        python_status.unique_ip_servers,
    )


def test_pairs_one_at_a_time_count_alike_in_c_and_python() -> None:
    """One pair at a time (_record_few, a Postfix policy request's way): the same
    counts and tallies as the Python way, values of every outcome."""
    pairs = [("192.0.2.1", "u@Example.COM."), ("192.0.2.1", "<>"), ("bogus", "u@"),
             ("[192.0.2.9]", "x@[198.51.100.1]"), ("2001:db8::1", "u@bücher.de")]  # fmt: skip
    c_tracker = Tracker(salt=SALT, clock=lambda: 1000.0)
    python_tracker = Tracker(salt=SALT, clock=lambda: 1000.0, c_first_sightings=False)
    for tracker in (c_tracker, python_tracker):
        for pair in pairs * 2:
            tracker.record_server(*pair)
    status = c_tracker.status()
    assert status == python_tracker.status()
    assert (status.records, status.rejected_conn_ips, status.rejected_senders) == (10, 2, 2)
    assert (status.unique_conn_ips, status.unique_domains, status.unique_ip_servers) == (3, 2, 1)


#: What a hostile peer could send: over-long text, NULs, brackets and "@" in runs,
#: lone surrogates, astral characters, space of every ASCII kind.
HOSTILE = [
    "a" * 100_000,
    "1" * 600,
    "1." * 300,
    "\x00" * 600,
    "[" * 600,
    "@" * 600,
    "<" * 300 + ">" * 300,
    "u@" + "a." * 126 + "b",
    "u@" + "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61,
    "u@" + "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 62,
    "\ud800@a.example",
    "u@a.example\U0001f600",
    " \t\n\v\f\r\x1c\x1d\x1e\x1f",
    "<\x1fu@a.example\x1f>",
    "u@[1.2.3.4]]",
    "u@[[1.2.3.4]",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_are_decided_as_normalise_decides(value: str) -> None:
    check(CONN_IPS, value, classify_conn_ip(value))
    check(SENDERS, value, classify_sender(value))
    if value:
        check(DOMAIN_PARTS, value, classify_domain_part(value))
    first = keyed_hash.new_keyed_hash(b"k", DIGEST_SIZE).first_sightings
    assert first is not None
    codes, _, _ = first.classify(SENDERS, [value] * 3)
    assert len(codes) == 3
