"""idna_linear gives idna's answers, label by label and name by name, without its costly paths."""

from __future__ import annotations

import re
import unicodedata

import idna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from idna.core import uts46_remap

from trackerd.core import idna_linear
from trackerd.core.normalise import MAX_IDNA_DELTA_OCTETS, canonical_domain

# Code points that exercise every rule: contextual ones (CONTEXTJ, CONTEXTO), what
# their rules look at (kana, Han, Greek, Hebrew, Arabic letters of each joining
# type, viramas, transparent marks), right-to-left and combining characters,
# mapped and ignored ones, the other full stops, and plain ASCII.
INTERESTING = (
    "abl-_0.9\u00b7\u0375\u03b1\u05f3\u05f4\u05d0\u0660\u0669\u06f0\u06f9\u30fb\u30a2"
    "\u3042\u4e00\u200c\u200d\u094d\u0915\u0628\u0627\u064b\u0644\u00e4\u00df\u0301"
    "\u00ad\u3002\uff0e\uff61\u2488A\u00c4\u0661x\u05bf\u0631"
)
labels = st.text(alphabet=INTERESTING, min_size=1, max_size=12)


def idna_says_label(label: str) -> bool:
    try:
        idna.check_label(label)
    except (idna.IDNAError, ValueError):
        return False
    return True


@settings(max_examples=150, deadline=None)
@given(labels)
def test_valid_u_label_agrees_with_idna(label: str) -> None:
    assert idna_linear.valid_u_label(label) == idna_says_label(label)


@settings(max_examples=150, deadline=None)
@given(st.text(min_size=1, max_size=30))
def test_valid_u_label_agrees_with_idna_on_any_text(label: str) -> None:
    assert idna_linear.valid_u_label(label) == idna_says_label(label)


@settings(max_examples=150, deadline=None)
@given(st.text(min_size=1, max_size=40) | labels)
def test_punycode_agrees_with_the_codec(label: str) -> None:
    expected = label.encode("punycode").decode("ascii")
    assert idna_linear.punycode_encode(label, limit=10_000) == expected
    limited = idna_linear.punycode_encode(label)
    assert limited == (expected if len(expected) <= idna_linear.MAX_PUNYCODE_LENGTH else None)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-ABZ", max_size=20))
def test_punycode_decode_agrees_with_the_codec(text: str) -> None:
    try:
        expected: str | None = text.encode("ascii").decode("punycode")
    except (UnicodeError, ValueError, OverflowError):
        expected = None
    assert idna_linear.punycode_decode(text) == expected


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=40) | labels)
def test_uts46_map_agrees_with_idna(text: str) -> None:
    try:
        expected: str | None = uts46_remap(text, std3_rules=False)
    except idna.IDNAError:
        expected = None
    assert idna_linear.uts46_map(text) == expected


@settings(max_examples=150, deadline=None)
@given(labels | st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12))
def test_a_labels_agree_with_idna(text: str) -> None:
    if not text.isascii():
        try:
            text = "xn--" + text.encode("punycode").decode()
        except UnicodeError:
            return
    label = text if text.startswith("xn--") else "xn--" + text
    label = label.lower()
    try:
        idna.ulabel(label)
        expected = True
    except (idna.IDNAError, ValueError):
        expected = False
    assert idna_linear.check_a_label(label) == expected


_HOST_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


def reference(text: str) -> bytes | None:
    """The documented rule, written with idna itself: UTS #46 mapping, one trailing
    dot, IDNA 2008 (idna.alabel/ulabel) for IDNA labels (at most 8), the host-label
    rule for the others, then the length, Punycode-delta and numeric-top-label rules."""
    if len(text) > 254:
        return None
    try:
        mapped = uts46_remap(text, std3_rules=False)
    except idna.IDNAError:
        return None
    if mapped.endswith("."):
        mapped = mapped[:-1]
    out = []
    for label in mapped.split("."):
        try:
            if not label.isascii() or label.startswith("xn--"):
                out.append(idna.alabel(label).decode())
                continue
        except (idna.IDNAError, ValueError):
            return None
        if not _HOST_LABEL.fullmatch(label):
            return None
        out.append(label)
    name = ".".join(out)
    if name.count("xn--") > 8:
        return None
    # At most 96 octets of Punycode deltas (after each A-label's last hyphen) in all.
    a_labels = [label[4:] for label in name.split(".") if label.startswith("xn--")]
    if sum(len(body) - body.rfind("-") - 1 for body in a_labels) > 96:
        return None
    if len(name) > 253 or name.rpartition(".")[2].isdigit():
        return None
    return name.encode()


names = st.lists(labels, min_size=1, max_size=5).map(".".join)


@settings(max_examples=150, deadline=None)
@given(names)
def test_names_follow_the_documented_rule(text: str) -> None:
    assert canonical_domain(text) == reference(text)


@pytest.mark.parametrize(
    "text",
    [
        "\u30fb" * 90 + "a" * 162 + "\u30a2",  # the 12.6 ms sender
        "\u30fb" * 20 + "\u30a2" * 43 + ".de",  # one label, 20 middle dots
        "\u30fb" * 29 + "a" * 28 + "\u30a2.de",
        ".".join(["\u0661" * 60] * 4),  # Arabic-Indic digits
        "\u0661" * 30 + ".de",
        "\u0628" + "\u200c\u0628" * 28 + ".de",  # many joiners
        "\u30fb\u30a2.de",
        "l\u00b7l.cat",
        "\u0661\u0662\u0663.de",
        "\u0661\u06f1.de",
        "a" + "\u0301" * 127 + "\u0f73" * 125 + "x",  # a long run of marks (review)
        "a" + "\u0301" * 20 + "\u0f73" * 20 + ".de",  # a shorter one
        "a\u0301\u0f73.de",
    ],
)
def test_costly_names_are_classified_as_idna_would(text: str) -> None:
    assert canonical_domain(text) == reference(text)


@pytest.mark.parametrize(
    "text",
    [
        "\u30fb" * 90 + "a" * 162 + "\u30a2",
        "\u30fb" * 20 + "\u30a2" * 43 + ".de",
        "\u30fb" * 5 + "\u30a2" * 5 + ".de",
        ".".join(["\u0661" * 60] * 4),
        "\u0661" * 20 + ".de",
        "\u0628" + "\u200c\u0628" * 28 + ".de",
        "".join(chr(0x4E00 + 97 * i) for i in range(59)) + ".de",
    ],
)
def test_idnas_costly_paths_are_never_taken(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    """idna's per-code-point scans (quadratic in a label) and the standard
    library's Punycode encoder (a pass per distinct code point) are not used."""

    def costly(*args: object, **kwargs: object) -> None:
        raise AssertionError("a costly idna path was taken")

    for name in ("valid_contexto", "valid_contextj", "check_label", "uts46_remap", "encode"):
        monkeypatch.setattr(idna.core, name, costly)
        monkeypatch.setattr(idna, name, costly, raising=False)
    monkeypatch.setattr("encodings.punycode.punycode_encode", costly)
    canonical_domain(text)


def test_at_most_eight_idna_labels_in_a_name() -> None:
    eight = ".".join(["b\u00fccher"] * 8) + ".de"
    assert canonical_domain(eight) == b".".join([b"xn--bcher-kva"] * 8) + b".de"
    assert canonical_domain("x." + eight) is not None
    assert canonical_domain("\u00e4." + eight) is None
    assert canonical_domain("xn--4ca." + eight.replace("\u00fc", "ue")) is not None
    assert canonical_domain(".".join(["xn--bcher-kva"] * 9)) is None


def _cjk(first: int, count: int) -> str:
    return "".join(chr(0x4E00 + 97 * j + first) for j in range(count))


def test_the_punycode_deltas_of_a_name_are_bounded_in_either_form() -> None:
    """At most MAX_IDNA_DELTA_OCTETS octets of deltas in a name's IDNA labels (issue
    12 review: 8 labels of 11 ideographs cost 350 us), the same for U- and A-labels."""
    for count, counted in ((3, True), (4, False)):
        u_labels = [_cjk(k, 11) for k in range(count)]
        a_labels = ["xn--" + label.encode("punycode").decode() for label in u_labels]
        deltas = sum(map(idna_linear.delta_octets, a_labels))
        assert (deltas <= MAX_IDNA_DELTA_OCTETS) is counted
        for name in (".".join(u_labels), ".".join(a_labels), ".".join(a_labels[:1] + u_labels[1:])):
            assert (canonical_domain(name + ".cn") is not None) is counted
            assert canonical_domain(name + ".cn") == reference(name + ".cn")


def test_a_run_of_marks_too_long_for_a_label_is_refused_before_nfc() -> None:
    run = "a" + "\u0301" * 32 + "\u0f73" * 31  # 63 marks as sent (U+0F73 maps to two)
    assert idna_linear.uts46_map(run, bound_marks=True) is not None
    longer = run + "\u0f73"
    assert idna_linear.uts46_map(longer, bound_marks=True) is None
    # Ignored code points between the marks do not break the run.
    assert idna_linear.uts46_map("a" + "\u0301\u00ad" * 64, bound_marks=True) is None
    assert idna_linear.uts46_map(longer) == uts46_remap(longer, std3_rules=False)
    assert canonical_domain(longer + ".de") is None
    assert reference(longer + ".de") is None


def test_no_mark_lies_beyond_the_table_of_marks() -> None:
    """idna_linear looks code points up to MARKS_END only for combining marks."""
    for code_point in range(idna_linear.MARKS_END, 0x110000):
        char = chr(code_point)
        assert not unicodedata.combining(char)
        decomposition = unicodedata.decomposition(char)
        if decomposition and not decomposition.startswith("<"):
            assert not unicodedata.combining(chr(int(decomposition.split()[0], 16)))
