"""The classification table: every case of the seed, with its gaps closed."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servertracker import sender_split
from servertracker.conn_ip import conn_ip_rejected
from servertracker.protocol import MAX_VALUE_LENGTH
from servertracker.sender_split import (
    IGNORED,
    REJECTED,
    Outcome,
    split_sender,
    split_senders,
)
from trackerd.core.normalise import Category, classify_conn_ip, classify_sender

DOMAIN, IP = Category.DOMAIN, Category.IP_SERVER

# (domain part as a worker may send it, expected classification)
SENDER_DOMAIN_PARTS = [
    ("example.com", (DOMAIN, "example.com")),
    ("EXAMPLE.Com", (DOMAIN, "example.com")),
    ("example.com.", (DOMAIN, "example.com")),
    ("Bücher.de", (DOMAIN, "xn--bcher-kva.de")),
    ("BÜCHER.DE", (DOMAIN, "xn--bcher-kva.de")),
    ("xn--bcher-kva.de", (DOMAIN, "xn--bcher-kva.de")),
    ("XN--BCHER-KVA.DE.", (DOMAIN, "xn--bcher-kva.de")),
    ("mail_out.example.org", (DOMAIN, "mail_out.example.org")),
    ("localhost", (DOMAIN, "localhost")),
    ("[1.2.3.4]", (IP, "1.2.3.4")),
    ("1.2.3.4", (IP, "1.2.3.4")),
    ("[IPv6:2001:db8::1]", (IP, "2001:db8::1")),
    ("[IPv6:2001:DB8:0::1]", (IP, "2001:db8::1")),
    ("[ipv6:2001:0db8:0000:0000:0000:0000:0000:0001]", (IP, "2001:db8::1")),
    ("2001:db8::1", (IP, "2001:db8::1")),
    ("::ffff:1.2.3.4", (IP, "1.2.3.4")),
    ("[IPv6:::ffff:1.2.3.4]", (IP, "1.2.3.4")),
    ("[2001:db8::1]", (IP, "2001:db8::1")),
    ("[1.2.3.4", REJECTED),
    ("[IPv6:1.2.3.4]", REJECTED),
    ("[example.com]", REJECTED),
    ("[1.2.3.999]", REJECTED),
    ("1.2.3", REJECTED),
    ("exa mple.com", REJECTED),
    ("example..com", REJECTED),
    ("-example.com", REJECTED),
    ("example.com..", REJECTED),
    ("xn--zzzzzz.de", REJECTED),
    ("a" * 64 + ".com", REJECTED),
    ("garbage!", REJECTED),
    # One rule for ASCII labels, whatever the rest of the name (issue 12 §10).
    ("mail_relay.example.de", (DOMAIN, "mail_relay.example.de")),
    ("mail_relay.bücher.de", (DOMAIN, "mail_relay.xn--bcher-kva.de")),
    ("mail_relay.xn--bcher-kva.de", (DOMAIN, "mail_relay.xn--bcher-kva.de")),
    ("ab--cd.example.de", (DOMAIN, "ab--cd.example.de")),
    ("ab--cd.bücher.de", (DOMAIN, "ab--cd.xn--bcher-kva.de")),
    ("ab--cd.xn--bcher-kva.de", (DOMAIN, "ab--cd.xn--bcher-kva.de")),
    ("-ab.bücher.de", REJECTED),
    ("ab-.xn--bcher-kva.de", REJECTED),
    # ... and for the full stops UTS #46 maps to ".", a trailing one included.
    ("bücher.de\u3002", (DOMAIN, "xn--bcher-kva.de")),
    ("bücher.de\uff0e", (DOMAIN, "xn--bcher-kva.de")),
    ("bücher.de\uff61", (DOMAIN, "xn--bcher-kva.de")),
    ("bücher\u3002de", (DOMAIN, "xn--bcher-kva.de")),
    ("example.com\u3002", (DOMAIN, "example.com")),
    ("bücher.de\u3002.", REJECTED),
    # An IDNA label follows IDNA 2008 in either form: no underscore inside it.
    ("mail_bücher.de", REJECTED),
    ("xn--ab--bcher-kva.de", REJECTED),
    ("a" * 63 + ".bücher.de", (DOMAIN, "a" * 63 + ".xn--bcher-kva.de")),
    ("ü" * 60 + ".de", REJECTED),
]


def key(expected: object) -> object:
    """The canonical key the core returns for a readable expectation."""
    if isinstance(expected, tuple):
        category, text = expected
        if category is IP:
            return (category, ipaddress.ip_address(text).packed)
        return (category, text.encode())
    return expected


@pytest.mark.parametrize(("domain", "expected"), SENDER_DOMAIN_PARTS)
def test_sender_as_domain_part(domain: str, expected: object) -> None:
    assert classify_sender(domain) == key(expected)


@pytest.mark.parametrize(("domain", "expected"), SENDER_DOMAIN_PARTS)
@pytest.mark.parametrize("template", ["user@{}", "<user@{}>", " <First.Last+tag@{}> "])
def test_sender_as_whole_address(template: str, domain: str, expected: object) -> None:
    assert classify_sender(template.format(domain)) == key(expected)


@pytest.mark.parametrize("value", [None, "", "   ", "<>", "< >"])
def test_empty_and_null_sender_are_ignored(value: str | None) -> None:
    assert classify_sender(value) is IGNORED


@pytest.mark.parametrize(
    "value",
    [
        "user@",
        "@",
        "@example.com",
        "<user@example.com",
        "user@example.com>",
        "<@relay.example>",
        "a@b@",
        "x" * (MAX_VALUE_LENGTH + 1),
    ],
)
def test_malformed_senders_are_rejected(value: str) -> None:
    assert classify_sender(value) is REJECTED


def test_quoted_local_part_and_source_route() -> None:
    assert classify_sender('"odd@local"@Example.COM') == (DOMAIN, b"example.com")
    assert classify_sender("<@relay.example,@b.example:user@example.com>") == (
        DOMAIN,
        b"example.com",
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("192.0.2.1", "192.0.2.1"),
        (" 192.0.2.1 ", "192.0.2.1"),
        ("[192.0.2.1]", "192.0.2.1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("[::ffff:192.0.2.1]", "192.0.2.1"),
        ("2001:DB8:0:0::1", "2001:db8::1"),
        ("[IPv6:2001:db8::1]", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("[fe80::1%2]", "fe80::1"),
        ("::1", "::1"),
    ],
)
def test_conn_ip_canonical_forms(value: str, expected: str) -> None:
    assert classify_conn_ip(value) == ipaddress.ip_address(expected).packed


@pytest.mark.parametrize(
    "value", ["example.com", "1.2.3", "01.2.3.4", "192.0.2.1:25", "[]", "x" * 1000]
)
def test_conn_ip_not_an_address_is_rejected(value: str) -> None:
    assert classify_conn_ip(value) is REJECTED


@pytest.mark.parametrize("value", [None, "", "  "])
def test_conn_ip_empty_is_ignored(value: str | None) -> None:
    assert classify_conn_ip(value) is IGNORED


@pytest.mark.parametrize(
    "value", ["\x00", "\ud800", "ü" * 300, "[IPv6:" + "f" * 400 + "]", "@:@", "<<>>"]
)
def test_hostile_values_never_raise(value: str) -> None:
    assert classify_sender(value) in (IGNORED, REJECTED) or isinstance(
        classify_sender(value), tuple
    )
    classify_conn_ip(value)


def reference_split_sender(value: str | None) -> str | Outcome:
    """The first, plain version of split_sender: the fast one must agree with it."""
    if not value:
        return IGNORED
    text = value.strip()
    if len(text) > MAX_VALUE_LENGTH:
        return REJECTED
    if text.startswith("<") or text.endswith(">"):
        if not (text.startswith("<") and text.endswith(">")):
            return REJECTED
        text = text[1:-1].strip()
    if not text:
        return IGNORED
    if text.startswith("@"):
        _route, colon, text = text.partition(":")
        if not colon:
            return REJECTED
    if "@" in text:
        local, _, text = text.rpartition("@")
        if not local or not text:
            return REJECTED
    return text


@settings(max_examples=3000, derandomize=True, deadline=None)
@given(st.text(alphabet="<>@:[] .aZ1ü\t", max_size=14))
def test_split_sender_agrees_with_the_plain_version(value: str) -> None:
    assert split_sender(value) == reference_split_sender(value)


@settings(max_examples=1000, derandomize=True, deadline=None)
@given(st.text(max_size=40))
def test_classify_sender_never_raises(value: str) -> None:
    result = classify_sender(value)
    assert result in (IGNORED, REJECTED) or (
        isinstance(result, tuple) and isinstance(result[1], bytes)
    )


# Values that steer the batch splitter down each of its paths: the usual forms
# (bare, local@domain, <local@domain>), near misses of them (space of every kind,
# a stray bracket or "@"), everything else, line breaks inside a value, None, a
# value over the length bound.
_ODD = "\u2003\x1c\x85\u2028\r"
SENDERS_FOR_BATCHES = st.one_of(
    st.text(alphabet="<>@:[] .aZ1ü\t\n\u2003", max_size=14),
    st.builds(
        lambda form, local, domain: form.format(local, domain),
        st.sampled_from(["<{}@{}>", "{}@{}", "{1}", "<{1}>", "{}@{}>", "<{}@{}", "@{}:{}"]),
        st.text(alphabet="aZ1.ü-@ " + _ODD, min_size=1, max_size=8),
        st.text(alphabet="aZ1.ü-[]:@ >" + _ODD, min_size=1, max_size=8),
    ),
    st.none(),
    st.just("<" + "a" * 600 + "@example.com>"),
)


@settings(max_examples=2000, derandomize=True, deadline=None)
@given(st.lists(SENDERS_FOR_BATCHES, max_size=20))
def test_split_senders_agrees_with_split_sender_one_by_one(values: list[str | None]) -> None:
    assert split_senders(values) == [split_sender(value) for value in values]


@settings(max_examples=1000, derandomize=True, deadline=None)
@given(st.lists(st.one_of(st.text(alphabet="aZ1.ü[]:-" + _ODD + " \t", max_size=6), st.none())))
def test_split_senders_of_bare_parts_agrees_with_split_sender(values: list[str | None]) -> None:
    # Batches with no "@" or angle bracket: the path that takes them whole.
    assert split_senders(values) == [split_sender(value) for value in values]
    assert split_senders(tuple(values)) == [split_sender(value) for value in values]


def test_split_senders_splits_the_usual_forms_without_a_call_per_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str | None] = []

    def counted(value: str | None) -> str | Outcome:
        calls.append(value)
        return split_sender(value)

    monkeypatch.setattr(sender_split, "split_sender", counted)
    usual = ["mail.example.com", "u@mail.example.com", "<u@[192.0.2.1]>", "[192.0.2.1]"]
    odd = ["u@example.com>", "example.com>", "<example.com", " example.com", "<>"]
    assert split_senders(usual + odd) == [
        "mail.example.com",
        "mail.example.com",
        "[192.0.2.1]",
        "[192.0.2.1]",
        REJECTED,
        REJECTED,
        REJECTED,
        "example.com",
        IGNORED,
    ]
    assert calls == odd
    calls.clear()
    assert split_senders(("mail.example.com", "[192.0.2.1]")) == ["mail.example.com", "[192.0.2.1]"]
    assert calls == []


@pytest.mark.parametrize("length", [MAX_VALUE_LENGTH - 1, MAX_VALUE_LENGTH, MAX_VALUE_LENGTH + 1])
def test_split_senders_at_the_length_bound(length: int) -> None:
    value = "<" + "a" * (length - len("<@example.com>")) + "@example.com>"
    assert len(value) == length
    expected = "example.com" if length <= MAX_VALUE_LENGTH else REJECTED
    assert split_senders([value, "<b@example.org>"]) == [expected, "example.org"]


_IP_LIKE = st.text(alphabet="0123456789abcdefABCDEF.:[]%vV6 \t", max_size=48)


@given(st.one_of(_IP_LIKE, st.ip_addresses().map(str), st.text(max_size=600)))
@settings(max_examples=400)
def test_trackerctl_s_rejected_conn_ip_is_the_daemon_s(value: str) -> None:
    """trackerctl record warns (conn_ip_rejected) exactly when the daemon rejects."""
    assert conn_ip_rejected(value) == (classify_conn_ip(value) is REJECTED)
