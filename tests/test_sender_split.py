"""What a worker sends for a sender counts exactly as the whole sender would.

The worker cuts a MAIL FROM to its domain part (servertracker.sender_split) only
where the daemon's rule gives the part the same result as the whole: these tests
hold sent_sender() and sent_senders() to that on the classification table's
tricky inputs and on generated ones, and show that the usual forms are cut.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servertracker import sender_split
from servertracker.protocol import MAX_VALUE_LENGTH
from servertracker.sender_split import sent_sender, sent_senders
from tests.test_normalise import SENDER_DOMAIN_PARTS, SENDERS_FOR_BATCHES
from trackerd.core import normalise
from trackerd.core.normalise import classify_sender

TEMPLATES = [
    "{}",
    "user@{}",
    "<user@{}>",
    " <First.Last+tag@{}> ",
    "<user@{}",
    "user@{}>",
    "<@relay.example,@b.example:user@{}>",
    '"odd@local"@{}',
    '"odd local"@{}',
    "user@ {}",
    "<user@{} >",
    "user@@{}",
    "@{}",
    "<{}>",
    "\t{}\n",
    "ü@{}",
    "u\u2003@{}",
]
ODD_SENDERS = [
    "",
    " ",
    "<>",
    "< >",
    "@",
    "user@",
    "<user@>",
    "a@b@",
    "<@relay.example>",
    "<<>>",
    "@:@",
    "\x00@example.com",
    "u@\ud800",
    "u@" + "a" * (MAX_VALUE_LENGTH - 2),
    "u@" + "a" * (MAX_VALUE_LENGTH - 1),
    "<u@" + "a" * (MAX_VALUE_LENGTH - 4) + ">",
    "<u@" + "a" * (MAX_VALUE_LENGTH - 3) + ">",
    "line\nbreak@example.com",
    "u@example.com\n",
]
FORMS = [template.format(domain) for template in TEMPLATES for domain, _ in SENDER_DOMAIN_PARTS]
FORMS += ODD_SENDERS


@pytest.fixture(scope="module", params=["C", "Python"], autouse=True)
def split_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test twice: sent_senders() in C (when built) and its Python code."""
    c_split = sender_split._c_sent_senders
    if request.param == "C" and c_split is None:
        pytest.skip("the C extension is not built, or turned off")
    if request.param == "Python":
        sender_split._c_sent_senders = None
    try:
        yield request.param
    finally:
        sender_split._c_sent_senders = c_split


@pytest.mark.parametrize("value", FORMS)
def test_what_the_worker_sends_counts_as_the_whole(value: str) -> None:
    assert classify_sender(sent_sender(value)) == classify_sender(value)


def test_every_form_in_one_batch_is_cut_as_one_by_one() -> None:
    values: list[str | None] = [*FORMS, None]
    # Without line breaks and over-long values, the batch takes the fast path.
    clean = [v for v in values if v is None or ("\n" not in v and len(v) <= MAX_VALUE_LENGTH)]
    for batch in (values, clean, clean[::-1]):
        assert sent_senders(batch) == [sent_sender(v) if v else v for v in batch]


@pytest.mark.parametrize(
    ("value", "sent"),
    [
        ("user@example.com", "example.com"),
        ("<user@Example.COM>", "Example.COM"),
        ("First.Last+tag@bücher.de", "bücher.de"),
        ("u@[192.0.2.1]", "[192.0.2.1]"),
        ("<u@[IPv6:2001:db8::1]>", "[IPv6:2001:db8::1]"),
        ("example.com", "example.com"),
        ("[192.0.2.1]", "[192.0.2.1]"),
        # Unusual forms go as they came.
        (" <user@example.com> ", " <user@example.com> "),
        ("user@example.com ", "user@example.com "),
        ("<@relay.example:user@example.com>", "<@relay.example:user@example.com>"),
        ("user@ example.com", "user@ example.com"),
        ("<>", "<>"),
        ("user@", "user@"),
    ],
)
def test_the_usual_forms_are_cut_to_their_domain_part(value: str, sent: str) -> None:
    assert sent_sender(value) == sent
    assert sent_senders([value, None, "a@b.example"]) == [sent, None, "b.example"]


# Senders built from the characters that steer the split rule (brackets, "@",
# ":", space of both kinds, line breaks) around real domain parts.
TRICKY = st.one_of(
    SENDERS_FOR_BATCHES,
    st.builds(
        "{}{}{}".format,
        st.text(alphabet='<>@:" .aZü\t\u2003', max_size=6),
        st.sampled_from([domain for domain, _ in SENDER_DOMAIN_PARTS]),
        st.text(alphabet="<>@ .\t", max_size=3),
    ),
)


@settings(max_examples=150, derandomize=True, deadline=None)
@given(TRICKY)
def test_generated_senders_count_as_the_whole(value: str | None) -> None:
    if value:
        assert classify_sender(sent_sender(value)) == classify_sender(value)


@settings(max_examples=150, derandomize=True, deadline=None)
@given(st.lists(TRICKY, max_size=20))
def test_a_batch_is_cut_as_its_senders_one_by_one(values: list[str | None]) -> None:
    assert sent_senders(values) == [sent_sender(v) if v else v for v in values]


# ASCII without space: the batches sent_senders() cuts without a regular expression,
# with and without angle brackets (anywhere, or only around values).
PLAIN = st.text(alphabet="<>@:.aZ1", max_size=8)
NO_BRACKETS = st.text(alphabet="@:.aZ1", max_size=8)
WRAPPED = st.builds("<{}>".format, NO_BRACKETS)


@settings(max_examples=150, derandomize=True, deadline=None)
@given(st.lists(st.one_of(PLAIN, NO_BRACKETS, WRAPPED, st.none()), max_size=12))
def test_an_ascii_batch_is_cut_as_its_senders_one_by_one(values: list[str | None]) -> None:
    assert sent_senders(values) == [sent_sender(v) if v else v for v in values]
    for value in values:
        if value:
            assert classify_sender(sent_sender(value)) == classify_sender(value)


@settings(max_examples=150, derandomize=True, deadline=None)
@given(st.lists(st.one_of(NO_BRACKETS, WRAPPED, st.none()), max_size=12))
def test_a_batch_with_brackets_only_around_values_is_cut_as_one_by_one(
    values: list[str | None],
) -> None:
    assert sent_senders(values) == [sent_sender(v) if v else v for v in values]


# Uniform batches, which sent_senders() cuts by one split: every sender local@domain
# (or every one <local@domain>), the null sender (None, "", "<>") anywhere among them,
# and now and then one that breaks the pattern.
PART = st.text(alphabet="aZ1.-[]:", min_size=1, max_size=5)
USUAL = st.builds("{}@{}".format, PART, PART)
BREAKERS = ["a@b@c", "abc", "@b", "a@", "<a@b>", "a@b>", "<>", "a b@c", "x<a@b>", "<a@b>x",
            "<@b>", "<a@>", "<a@b", "a<@b>", "<a@b>>"]  # fmt: skip
BREAKER = st.sampled_from(BREAKERS)


@pytest.mark.parametrize("breaker", BREAKERS)
@pytest.mark.parametrize("wrapped", [False, True])
@pytest.mark.parametrize("at", [0, 2, 4])
def test_one_odd_sender_in_a_uniform_batch(breaker: str, wrapped: bool, at: int) -> None:
    usual = ["a@b.example", "c@[192.0.2.1]", None, "d@e.example", ""]
    batch: list[str | None] = [f"<{v}>" if v and wrapped else v for v in usual]
    batch.insert(at, breaker)
    assert sent_senders(batch) == [sent_sender(v) if v else v for v in batch]


@settings(max_examples=150, derandomize=True, deadline=None)
@given(
    st.lists(st.one_of(USUAL, USUAL, USUAL, st.sampled_from([None, "", "<>"])), max_size=12),
    st.booleans(),
    st.lists(st.tuples(st.integers(0, 12), BREAKER), max_size=1),
)
def test_a_uniform_batch_is_cut_as_its_senders_one_by_one(
    values: list[str | None], wrapped: bool, breakers: list[tuple[int, str]]
) -> None:
    batch = [f"<{v}>" if v and wrapped else v for v in values]
    for index, breaker in breakers:
        batch.insert(index, breaker)
    assert sent_senders(batch) == [sent_sender(v) if v else v for v in batch]


# Mixed batches, as a worker sees them: every usual form (bare, local@domain,
# <local@domain>), literals and the null senders side by side, now and then one
# that breaks the pattern. sent_senders() cuts them without a call a value.
MIXED = st.one_of(USUAL, st.builds("<{}>".format, USUAL), PART, st.sampled_from([None, "", "<>"]))


@settings(max_examples=150, derandomize=True, deadline=None)
@given(st.lists(MIXED, max_size=12), st.lists(st.tuples(st.integers(0, 12), BREAKER), max_size=1))
def test_a_mixed_batch_is_cut_as_its_senders_one_by_one(
    values: list[str | None], breakers: list[tuple[int, str]]
) -> None:
    for index, breaker in breakers:
        values.insert(index, breaker)
    assert sent_senders(values) == [sent_sender(v) if v else v for v in values]


def test_a_mixed_batch_of_the_usual_forms_is_cut_without_a_call_a_sender(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batch = ["a@b.example", "<c@d.example>", "e.example", "[192.0.2.1]", "<>", None, "",
             "u@[192.0.2.1]", "<Postmaster@F.Example.>"]  # fmt: skip
    expected = [sent_sender(v) if v else v for v in batch]
    monkeypatch.setattr(sender_split, "_c_sent_senders", None)  # the Python code's way
    monkeypatch.setattr(sender_split, "sent_sender", None)  # any call a value fails
    assert sent_senders(batch) == expected
    assert expected[:4] == ["b.example", "d.example", "e.example", "[192.0.2.1]"]


def test_the_daemon_applies_the_same_rule() -> None:
    # One place for the rule: the normaliser uses the client package's function.
    assert normalise.split_sender is sender_split.split_sender


def test_senders_with_more_at_signs_than_senders_go_one_by_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # numpy's way costs a search per "@": a batch of many-"@" senders held the GIL
    # for milliseconds. It must take the one-by-one way, with the same results.
    batch: list[str | None] = ["a@" * 31 + "a"] * 1024
    expected = [sent_sender(v) if v else v for v in batch]
    calls: list[int] = []

    def one_by_one(values: list[str | None]) -> list[str | None]:
        calls.append(len(values))
        return [sent_sender(v) if v else v for v in values]

    monkeypatch.setattr(sender_split, "_c_sent_senders", None)  # the Python code's way
    monkeypatch.setattr(sender_split, "_one_by_one", one_by_one)
    assert sent_senders(batch) == expected
    assert calls == [1024]
