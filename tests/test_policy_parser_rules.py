"""The Postfix policy parser against the rules it implements, on generated input.

PolicyDecoder checks a whole request with a few scans in C, and takes a short
way when a read is one whole request: fast, and easy to get subtly wrong. Here
a plain line-by-line parser (Reference, trackerd's first one, which follows
docs/postfix.md's rules a line at a time) is the oracle: on every input, cut
into reads in any way, the decoder must give the same requests in the same
order, and refuse (PolicyProtocolError) exactly where the reference does; which
of two faults it names may differ. Inputs mix the usual requests with every
kind of malformed line, CRLF, duplicates, undecodable bytes, and the bounds
(line length, attribute count, request size) at and past their limits.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.policy_cost import ATTRIBUTES
from trackerd.core import policy_protocol
from trackerd.core.policy_protocol import (
    MAX_ATTRIBUTES,
    MAX_LINE,
    MAX_REQUEST,
    NEED_DATA,
    USED_ATTRIBUTES,
    PolicyDecoder,
    PolicyProtocolError,
    Request,
)

#: What a parse came to: the requests in order, and whether it was refused after them.
Outcome = tuple[list[Request], bool]


@pytest.fixture(autouse=True, params=["c", "python"])
def short_way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs on both short ways: the C one (trackerd/_cext/policy.c)
    and the pure-Python fallback."""
    if request.param == "python":
        monkeypatch.setattr(policy_protocol, "_c_parse", None)
    elif policy_protocol._c_parse is None:
        pytest.skip("the C extension is not built")
    return str(request.param)


class Reference:
    """docs/postfix.md's rules, a line at a time (slow, plainly right)."""

    def __init__(self, keep: Sequence[str] = USED_ATTRIBUTES) -> None:
        self._keep = [name.encode("ascii") for name in keep]
        self._values: dict[bytes, str] = {}
        self._lines = 0
        self._bytes = 0

    def parse(self, data: bytes, closed: bool) -> Outcome:
        requests: list[Request] = []
        start = 0
        try:
            while (newline := data.find(b"\n", start)) >= 0:
                line, start = data[start:newline], newline + 1
                if len(line) > MAX_LINE:
                    raise PolicyProtocolError("request line too long")
                request = self._line(line)
                if request is not None:
                    requests.append(request)
            if len(data) - start > MAX_LINE:
                raise PolicyProtocolError("request line too long")
            if closed and (start < len(data) or self._lines):
                raise PolicyProtocolError("connection closed inside a request")
        except PolicyProtocolError:
            return requests, True
        return requests, False

    def _line(self, line: bytes) -> Request | None:
        self._bytes += len(line) + 1
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            if not self._lines:
                raise PolicyProtocolError("empty request")
            request = tuple(self._values.get(name) for name in self._keep)
            self._values, self._lines, self._bytes = {}, 0, 0
            return request
        self._lines += 1
        if self._lines > MAX_ATTRIBUTES or self._bytes > MAX_REQUEST:
            raise PolicyProtocolError("request too large")
        name, equals, value = line.partition(b"=")
        if not equals or not name:
            raise PolicyProtocolError("request line without name=value")
        if name in self._keep:
            self._values[name] = value.decode("utf-8", "replace")
        return None


def decoded(data: bytes, cuts: Sequence[int], closed: bool, at_once: bool = False) -> Outcome:
    """What PolicyDecoder makes of data read in pieces (ending at the cuts), each
    read followed by every request it completes, as the policy session does;
    at_once: each read through receive_request() (the session's way) rather than
    receive_data()."""
    decoder = PolicyDecoder()
    requests: list[Request] = []
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True) if b > a]
    try:
        for piece in pieces:
            if at_once:
                if (whole := decoder.receive_request(piece)) is not None:
                    requests.append(whole)
                    assert not decoder.in_progress and not any(decoder._buffer)
                    continue
            else:
                decoder.receive_data(piece)
            while (request := decoder.next_request()) is not NEED_DATA:
                assert isinstance(request, tuple)
                requests.append(request)
        if closed:
            decoder.receive_data(b"")
            assert decoder.next_request() is NEED_DATA
    except PolicyProtocolError:
        assert decoder.next_request() is NEED_DATA  # nothing more from that peer
        assert not any(decoder._buffer)  # and nothing of it kept
        return requests, True
    return requests, False


def assert_same(data: bytes, cuts: Sequence[int] = (), closed: bool = True) -> None:
    expected = Reference().parse(data, closed)
    assert decoded(data, cuts, closed) == expected, (data[:200], cuts)
    assert decoded(data, cuts, closed, at_once=True) == expected, (data[:200], cuts, "at once")


# --- generated input ----------------------------------------------------------------

KEPT_NAMES = [name.encode() for name in USED_ATTRIBUTES]
VALUE_BYTES = st.sampled_from(
    [b"a", b"1", b".", b"@", b"=", b"\r", b"\xff", b"\xc3\xa9", b" ", b"<"]
)
VALUES = st.lists(VALUE_BYTES, max_size=12).map(b"".join)
NAMES = st.one_of(
    st.sampled_from([*KEPT_NAMES, b"request", b"recipient", b"sender_x", b"xsender", b"\r"]),
    st.lists(st.sampled_from([b"a", b"_", b"\r", b"s"]), min_size=1, max_size=4).map(b"".join),
)
LINE_ENDS = st.sampled_from([b"\n", b"\n", b"\n", b"\r\n"])
GOOD_LINES = st.builds(lambda n, v, e: n + b"=" + v + e, NAMES, VALUES, LINE_ENDS)
BAD_LINES = st.sampled_from([b"=x\n", b"=\n", b"noequals\n", b"\r\r\n", b"x\n", b"\r=\n", b"=\r\n"])
LONG_LINES = st.sampled_from([MAX_LINE - 8, MAX_LINE - 7, MAX_LINE - 6, MAX_LINE]).map(
    lambda size: b"sender=" + b"x" * size + b"\n"
)
EMPTY_LINES = st.sampled_from([b"\n", b"\r\n"])
LINES = st.one_of(
    GOOD_LINES, GOOD_LINES, GOOD_LINES, GOOD_LINES, BAD_LINES, EMPTY_LINES, EMPTY_LINES, LONG_LINES
)


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[int], bool]:
    data = b"".join(draw(st.lists(LINES, max_size=30)))
    if draw(st.booleans()):
        data += b"\n"  # most streams end a request
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=6))))
    return data, [cut for cut in cuts if cut < len(data)], draw(st.booleans())


@settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # set once, not per example
)
@given(streams())
def test_the_decoder_follows_the_rules_on_any_input_cut_anyhow(
    stream: tuple[bytes, list[int], bool],
) -> None:
    data, cuts, closed = stream
    assert_same(data, cuts, closed)
    assert_same(data, [], closed)  # one read: the short way, where it applies


def test_the_decoder_follows_the_rules_on_many_postfix_like_requests() -> None:
    """Requests as smtpd sends them, each altered at random in one place (or not),
    one read each: mostly the short way; then the same stream read in pieces."""
    rng = random.Random(13)
    base = ATTRIBUTES.format(ip="192.0.2.1", n=7, w=1).encode()
    lines = base.split(b"\n")[:-2]
    fine = [
        lambda ls: ls,
        lambda ls: [*ls, b"sender=late@dup.example"],  # a name given twice: the last wins
        lambda ls: [b"client_address=first", *ls],  # a kept name on the first line
        lambda ls: [line + b"\r" for line in ls],  # CRLF
        lambda ls: [*ls[:3], b"", *ls[3:]],  # an empty line inside: two requests
        lambda ls: [*ls[:3], b"\r", *ls[3:]],
        lambda ls: [*ls, b"x=" + b"y" * (MAX_LINE - 2)],  # a line of MAX_LINE bytes
        lambda ls: ls + [b"a%d=b" % i for i in range(MAX_ATTRIBUTES - len(ls))],
        lambda ls: [line.replace(b"sender=", b"sender=\xff\xfe") for line in ls],
        lambda ls: [line for line in ls if not line.startswith(b"instance=")],
    ]
    malformed = [
        lambda ls: [*ls, b"=no-name"],
        lambda ls: [*ls, b"no equals sign"],
        lambda ls: [*ls, b"x=" + b"y" * (MAX_LINE - 1)],
        lambda ls: ls + [b"a%d=b" % i for i in range(MAX_ATTRIBUTES + 1 - len(ls))],
        lambda ls: [],  # just the empty line
    ]
    stream = b""
    for number in range(3000):
        request = b"\n".join(rng.choice(fine + malformed)(list(lines))) + b"\n\n"
        if rng.random() < 0.2:
            request = request.replace(b"\n\n", b"\r\n\r\n")
        assert_same(request)
        if number < 200:
            stream += b"\n".join(rng.choice(fine)(list(lines))) + b"\n\n"
    for altered in [*fine, *malformed]:
        data = stream + b"\n".join(altered(list(lines))) + b"\n\n"
        for _ in range(3):
            cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 500)))
            assert_same(data, cuts, closed=rng.random() < 0.5)


@pytest.mark.parametrize(
    "data",
    [
        b"a=b\n\n",
        b"a=b\r\n\r\n",
        b"a=b\n\r\n",
        b"\n",
        b"\r\n",
        b"\r\na=b\n\n",
        b"=\n\n",
        b"a=b\n=c\n\n",
        b"a=b\nc\n\n",
        b"a=b\n\r\n\n",  # a request, then an empty one
        b"a=b\n\n\n",
        b"a=b\nc=d",  # cut short
        b"sender=\r\n\n",  # an empty value
        b"sender=\r\r\n\n",  # a value that is "\r"
        b"sender=a\nsender=b\n\n",
        b"sender=a\rb\n\n",
        b"sender=" + b"x" * (MAX_LINE - 7) + b"\n\n",  # a line of MAX_LINE bytes
        b"sender=" + b"x" * (MAX_LINE - 6) + b"\n\n",  # one more
        b"s=" + b"x" * (MAX_LINE - 4) + b"\n\n",  # the request is MAX_LINE bytes
        b"x" * (MAX_LINE + 1),  # too long, no newline yet
        b"".join(b"a%d=b\n" % i for i in range(MAX_ATTRIBUTES)) + b"\n",
        b"".join(b"a%d=b\n" % i for i in range(MAX_ATTRIBUTES + 1)) + b"\n",
        b"".join(b"a=\n" for _ in range(MAX_ATTRIBUTES)) + b"\n",  # the shortest lines
        b"".join(b"a=\n" for _ in range(MAX_ATTRIBUTES + 1)) + b"\n",
    ],
)
def test_tricky_inputs_whole_and_byte_by_byte(data: bytes) -> None:
    for closed in (False, True):
        assert_same(data, [], closed)
        assert_same(data, list(range(1, len(data))), closed)


def test_the_size_bounds_at_and_past_their_limits() -> None:
    line = b"x=" + b"y" * 3997 + b"\n"  # 4,000 bytes with its newline
    lines = MAX_REQUEST // len(line)
    rest = MAX_REQUEST - lines * len(line)
    for extra in (0, 1):
        data = line * lines + b"z=" + b"y" * (rest - 3 + extra) + b"\n\n"
        assert_same(data)
        assert_same(data, list(range(1000, len(data), 1000)))


def test_each_read_is_looked_at_by_the_short_way_once_at_most(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A read the short way turns down (two requests in one read, say) goes the
    general way; it is not scanned whole again by next_request(), so the time
    spent stays linear in the bytes received."""
    looks: list[int] = []
    c_parse = policy_protocol._c_parse
    if c_parse is None:
        whole = PolicyDecoder._whole

        def counted(self: PolicyDecoder, buffer: bytearray, end: int) -> Request | None:
            looks.append(end)
            return whole(self, buffer, end)

        monkeypatch.setattr(PolicyDecoder, "_whole", counted)
    else:
        c_parse_ = c_parse  # bound for the closure (mypy)

        def c_counted(data: bytes | bytearray | memoryview) -> Request | None:
            looks.append(len(data))
            return c_parse_(data)

        monkeypatch.setattr(policy_protocol, "_c_parse", c_counted)
    two = b"client_address=10.0.0.1\n\nclient_address=10.0.0.2\n\n"
    for at_once in (False, True):
        looks.clear()
        decoder = PolicyDecoder()
        if at_once:
            assert decoder.receive_request(two) is None
        else:
            decoder.receive_data(two)
        assert decoder.next_request() == ("10.0.0.1", None, None)
        assert decoder.next_request() == ("10.0.0.2", None, None)
        assert decoder.next_request() is NEED_DATA
        assert looks == [len(two)], at_once
        # One whole request a read: the short way, once.
        looks.clear()
        one = b"client_address=10.0.0.3\n\n"
        if at_once:
            assert decoder.receive_request(one) == ("10.0.0.3", None, None)
        else:
            decoder.receive_data(one)
            assert decoder.next_request() == ("10.0.0.3", None, None)
        assert decoder.next_request() is NEED_DATA
        assert looks == [len(one)], at_once


@settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    st.one_of(
        streams().map(lambda stream: stream[0]),
        st.binary(max_size=64),
        st.lists(st.sampled_from([b"a", b"=", b"\n", b"\r", b"\x00", b"\xff", b"sender="]))
        .map(b"".join)
        .map(lambda data: data + b"\n\n"),
    )
)
def test_the_c_short_way_takes_exactly_the_reads_the_python_one_takes(
    short_way: str, data: bytes
) -> None:
    """Not only the same outcome: the C short way (core/_cpolicy.c) takes a read
    exactly when PolicyDecoder._whole does, with the same values."""
    c_parse = policy_protocol._c_parse
    if short_way != "c" or c_parse is None:
        pytest.skip("compares the C short way with the Python one")
    policy_protocol._c_parse = None
    try:
        # A fresh decoder's receive_request() is the Python short way alone.
        expected = PolicyDecoder().receive_request(data)
    finally:
        policy_protocol._c_parse = c_parse
    assert c_parse(data) == expected


def c_parser_class(short_way: str) -> type:
    if short_way != "c" or policy_protocol._cpolicy is None:
        pytest.skip("the C Parser's own rules")
    return type(policy_protocol._cpolicy.Parser((b"a",), MAX_LINE, MAX_ATTRIBUTES))


def test_a_c_parser_is_initialised_once(short_way: str) -> None:
    """A second __init__, failing half way or not, would leave the names pointing
    into bytes it does not hold (or swap them under a caller): it is refused, and
    the parser keeps its names."""
    parser_class = c_parser_class(short_way)
    parser = parser_class((b"sender",), MAX_LINE, MAX_ATTRIBUTES)
    name = bytes(bytearray(b"x" * 200 + b"sender"))  # a new object, held nowhere else
    for names in ((name, "not bytes"), (name,)):
        with pytest.raises(RuntimeError):
            parser.__init__(names, MAX_LINE, MAX_ATTRIBUTES)
    del name
    assert parser.parse(b"sender=a@b\n\n") == ("a@b",)
    assert parser.parse(b"x" * 200 + b"sender=a@b\n\n") == (None,)


def test_the_c_parser_refuses_limits_out_of_range(short_way: str) -> None:
    """max_attributes is doubled (the shape's bound): one that would overflow is
    refused, as are limits too small."""
    parser_class = c_parser_class(short_way)
    largest = (sys.maxsize - 1) // 2
    parser_class((b"a",), 100, largest)
    for max_line, max_attributes in ((100, largest + 1), (100, 2**62), (3, 1), (100, 0)):
        with pytest.raises(ValueError):
            parser_class((b"a",), max_line, max_attributes)
