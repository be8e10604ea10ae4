"""The batch fast paths of normalising agree with the exact, one-value-at-a-time path.

plain_domains() decides most domain parts in one pass over a batch; whatever it
claims must be what classify_domain_part() says, and what it leaves (b"") goes to
classify_domain_part() itself. Tricky inputs sit in the batches beside plain ones,
so a value that shifted the batch's lines would show too.
"""

from __future__ import annotations

import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trackerd.core import normalise
from trackerd.core.normalise import Category, classify_domain_part, plain_domains

TRICKY_PARTS = [
    "example.com",
    "EXAMPLE.Com",
    "Mail7.Example.COM.",
    "example.com..",
    ".example.com",
    "example..com",
    "mail_relay.example.de",
    "_dmarc.example.org",
    "ab--cd.example.de",
    "-ab.example.de",
    "ab-.example.de",
    "a-b.c-d.e-f",
    "xn--bcher-kva.de",
    "XN--BCHER-KVA.DE.",
    "xn--zzzzzz.de",
    "fooxn--bar.example",
    "Bücher.de",
    "bücher.de\u3002",
    "example.com\u3002",
    "mail.\u212aelvin.example",  # the Kelvin sign lowers to an ASCII "k"
    "\u0130stanbul.example",  # İ lowers to two code points
    "1.2.3.4",
    "01.2.3.4",
    "1.2.3.04",
    "1.2.3.256",
    "256.1.1.1",
    "1.2.3",
    "1.2.3.4.",
    "example.123",
    "example.123.",
    "123",
    "123.",
    "example.12a",
    "example.1-2",
    "example.1_2",
    "[192.0.2.1]",
    "[1.2.3.4",
    "::ffff:1.2.3.4",
    "[IPv6:::ffff:1.2.3.4]",
    "2001:db8::1",
    "localhost",
    "a",
    "A.",
    "_",
    "-",
    ".",
    "",
    " example.com",
    "example.com ",
    "exa mple.com",
    "example.com\t",
    "garbage!",
    "a" * 63 + ".com",
    "a" * 64 + ".com",
    "A" * 63 + ".COM.",
    "com." + "b" * 63,
    # 253 and 254 characters, each with and without a trailing dot
    ".".join(["a" * 63] * 3 + ["b" * 61]),
    ".".join(["a" * 63] * 3 + ["b" * 61]) + ".",
    ".".join(["a" * 63] * 3 + ["b" * 62]),
    ".".join(["a" * 63] * 3 + ["b" * 62]) + ".",
    "x" * 300,
    "a." * 126 + "b",
    "a." * 127 + "b",
]


def exact(part: str) -> tuple[Category, bytes] | None:
    """What plain_domains() may claim for a part: only a DOMAIN result."""
    result = classify_domain_part(part)
    if isinstance(result, tuple) and result[0] is Category.DOMAIN:
        return result
    return None


def check(parts: list[str]) -> None:
    keys = plain_domains(parts)
    assert len(keys) == len(parts)
    whole_lines = not any("\n" in part for part in parts)
    for part, key in zip(parts, keys, strict=True):
        if key:
            assert classify_domain_part(part) == (Category.DOMAIN, key), part
        elif whole_lines:
            # Left to the exact path: then it is no plain name that the pattern missed.
            result = exact(part)
            assert result is None or not part.isascii() or _has_idna(part), part


def _has_idna(part: str) -> bool:
    return "xn--" in part.lower()


@pytest.mark.parametrize("part", TRICKY_PARTS)
def test_each_tricky_part_alone_and_between_plain_ones(part: str) -> None:
    check([part])
    check(["mail1.example.com", part, "mail2.example.com"])


def test_the_tricky_parts_in_one_batch() -> None:
    check(TRICKY_PARTS)
    check(TRICKY_PARTS[::-1])


def test_plain_names_take_the_fast_path() -> None:
    # It must be able to fail: a fast path that claimed nothing would pass check().
    parts = ["Mail7.Example.COM.", "mail_relay.example.de", "a" * 63 + ".com", "example.12a"]
    assert plain_domains(parts) == [
        b"mail7.example.com",
        b"mail_relay.example.de",
        b"a" * 63 + b".com",
        b"example.12a",
    ]


@pytest.mark.parametrize(
    "parts",
    [["a.com\nb.com", "c.com"], ["a.com", "b.com\n"], ["\n"], ["a.com\r", "b.com"]],
)
def test_line_breaks_inside_a_part_leave_the_batch_to_the_exact_path(parts: list[str]) -> None:
    keys = plain_domains(parts)
    assert len(keys) == len(parts)
    check(parts)


def test_an_empty_batch() -> None:
    assert plain_domains([]) == []


LABEL_TEXT = st.text(alphabet="aZ09_-.x\u212a\u0130ü:[] \n", max_size=12)


@settings(max_examples=600, derandomize=True, deadline=None)
@given(st.lists(st.one_of(LABEL_TEXT, st.sampled_from(TRICKY_PARTS)), max_size=12))
def test_random_batches_agree_with_the_exact_path(parts: list[str]) -> None:
    check(parts)


@settings(max_examples=500, derandomize=True, deadline=None)
@given(
    st.lists(st.text(alphabet="ab-_1", min_size=1, max_size=66), min_size=1, max_size=6).map(
        ".".join
    )
)
def test_label_and_name_lengths_agree_with_the_exact_path(part: str) -> None:
    check([part, part + ".", part.upper()])


SHORT_NAMES = st.text(alphabet="aZ9-_.", min_size=1, max_size=8)


@settings(max_examples=600, derandomize=True, deadline=None)
@given(st.lists(st.one_of(SHORT_NAMES, st.sampled_from(TRICKY_PARTS)), min_size=1, max_size=6))
def test_batches_of_short_names_agree_with_the_exact_path(parts: list[str]) -> None:
    # Mostly short names from few characters: often a whole batch is plain, and
    # taken whole (_short_plain_names), else one near miss sends it to the pattern.
    check(parts)


def test_a_batch_of_short_plain_names_is_taken_whole() -> None:
    parts = ["Mail7.Example.COM.", "mail_relay.example.de", "a-b.c_d.e", "x.1a"]
    assert normalise._short_plain_names(parts, "\n".join(parts)) == [
        b"mail7.example.com",
        b"mail_relay.example.de",
        b"a-b.c_d.e",
        b"x.1a",
    ]
    for odd in ("a..", "-a.b", "a-.b", "a.b-", ".a", "a.1", "xn--a.b", "a b", "", "a" * 64):
        both = [*parts, odd]
        assert normalise._short_plain_names(both, "\n".join(both)) is None, odd


# --- connection IPs: ipv4_keys() against classify_conn_ip() ----------------------

TRICKY_IPS = [
    "192.0.2.1",
    "0.0.0.0",
    "255.255.255.255",
    "256.1.1.1",
    "01.2.3.4",
    "1.2.3.04",
    "1.2.3",
    "1.2.3.4.",
    "1.2.3.4.5",
    " 192.0.2.1",
    "192.0.2.1 ",
    "192.0.2.1\n",
    "[192.0.2.1]",
    "192.0.2.1:25",
    "0x7f.0.0.1",
    "127.1",
    "1e1.0.0.1",
    "\u0661.2.3.4",  # an Arabic-Indic digit one
    "1.2.3.4\x00",
    "\ud800",
    "::ffff:192.0.2.1",
    "2001:db8::1",
    "",
    "   ",
    "x" * 300,
]


def check_ips(values: list[str | None]) -> None:
    """ipv4_keys() gives classify_conn_ip()'s keys, or None, and None only when
    some value is not a plain dotted quad (the text inet_ntoa() makes of its key)."""
    keys = normalise.ipv4_keys(values)
    exact = [normalise.classify_conn_ip(value) for value in values]
    if keys is not None:
        assert keys == exact, values
    else:
        assert any(
            type(key) is not bytes or len(key) != 4 or socket.inet_ntoa(key) != value
            for value, key in zip(values, exact, strict=True)
        ), values


@pytest.mark.parametrize("value", [*TRICKY_IPS, None])
def test_each_tricky_ip_alone_and_between_plain_ones(value: str | None) -> None:
    check_ips([value])
    check_ips(["192.0.2.7", value, "198.51.100.1"])


def test_plain_ipv4_batches_take_the_fast_path() -> None:
    # It must be able to fail: a fast path that claimed nothing would pass check_ips().
    values = ["192.0.2.1", "0.0.0.0", "255.255.255.255", "10.0.1.200"]
    assert normalise.ipv4_keys(values) == [normalise.classify_conn_ip(v) for v in values]
    assert normalise.ipv4_keys([]) == []


@settings(max_examples=600, derandomize=True, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(alphabet="0123456789.:[] x\u0661", max_size=17),
            st.sampled_from(TRICKY_IPS),
            st.none(),
        ),
        max_size=8,
    )
)
def test_random_ip_batches_agree_with_the_exact_path(values: list[str | None]) -> None:
    check_ips(values)
