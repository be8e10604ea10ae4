"""IDNA in time linear in the input: UTS #46 mapping, IDNA 2008 label rules, Punycode.

The idna package is the authority on the rules and its tables are used here
unchanged (UTS #46 statuses and mappings, PVALID/CONTEXTJ/CONTEXTO classes,
joining types, scripts). Only the way they are applied differs: idna checks a
contextual code point by scanning its whole label, once per such code point
(KATAKANA MIDDLE DOT, Arabic-Indic digits, ZERO WIDTH NON-JOINER), looks each
code point up with a bisection in a Python loop, and encodes Punycode with the
standard library's codec, which loops over the label once per distinct code
point. A hostile sender made of such code points cost milliseconds (issue 12).
Here each property is looked up for a whole label at once with ``str.translate``
over a table (C loops), each contextual rule is decided once per label, and the
Punycode encoder stops as soon as the A-label would be too long. The results are
idna's: tests/test_idna_linear.py holds every function to idna's own answer.

Pure, no I/O. The tables cost about 3 MB (5 MB while built) and 50-70 ms once, at import.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from typing import Final

from idna import idnadata, uts46data
from idna.core import IDNAError, check_bidi

_CODE_POINTS: Final = 0x110000
#: An A-label is at most 63 octets, and "xn--" takes four of them.
MAX_PUNYCODE_LENGTH: Final = 63 - 4


def _table(ranges: list[tuple[int, int, str]], default: str) -> str:
    """One character per code point, for str.translate: ranges are (start, end, letter)."""
    parts: list[str] = []
    at = 0
    for start, end, letter in sorted(ranges):
        parts.append(default * (start - at))
        parts.append(letter * (end - start))
        at = end
    parts.append(default * (_CODE_POINTS - at))
    table = "".join(parts)
    assert len(table) == _CODE_POINTS
    return table


def _intranges(encoded: tuple[int, ...], letter: str) -> list[tuple[int, int, str]]:
    # idna.intranges: each range is one int, start << 32 | end (end exclusive).
    return [(value >> 32, value & 0xFFFFFFFF, letter) for value in encoded]


def _uts46_tables() -> tuple[str, dict[int, str | None]]:
    starts, statuses = uts46data.uts46_starts, uts46data.uts46_statuses
    ranges: list[tuple[int, int, str]] = []
    mapping: dict[int, str | None] = {}
    for index, start in enumerate(starts):
        end = starts[index + 1] if index + 1 < len(starts) else _CODE_POINTS
        status = chr(statuses[index])
        ranges.append((start, end, status))
        if status == "M":
            for code_point in range(start, end):
                mapping[code_point] = uts46data.uts46_replacements[index]
        elif status == "I":
            for code_point in range(start, end):
                mapping[code_point] = None
    return _table(ranges, "X"), mapping


#: UTS #46 status per code point: V valid, D deviation (kept), M mapped, I ignored,
#: X disallowed. The same statuses idna.uts46_remap() bisects for.
_UTS46_STATUS, _UTS46_MAP = _uts46_tables()
#: IDNA 2008 class per code point: p PVALID, j CONTEXTJ, o CONTEXTO, x anything else.
_IDNA_CLASS: Final = _table(
    [
        *_intranges(idnadata.codepoint_classes["PVALID"], "p"),
        *_intranges(idnadata.codepoint_classes["CONTEXTJ"], "j"),
        *_intranges(idnadata.codepoint_classes["CONTEXTO"], "o"),
    ],
    "x",
)
#: Joining type by code point, as idna's _joining_type() finds it (first type wins).
#: Upper-case letters: a label that passed the class check holds no upper-case ASCII.
_JOINING: Final[dict[int, str]] = {}
for _type, _ranges in idnadata.joining_types.items():
    for _start, _end, _letter in _intranges(_ranges, _type):
        for _code_point in range(_start, _end):
            _JOINING.setdefault(_code_point, _letter)


def _script_class(*scripts: str) -> re.Pattern[str]:
    ranges = [r for script in scripts for r in _intranges(idnadata.scripts[script], "")]
    body = "".join(f"{re.escape(chr(start))}-{re.escape(chr(end - 1))}" for start, end, _ in ranges)
    return re.compile(f"[{body}]")


_KANA_OR_HAN: Final = _script_class("Hiragana", "Katakana", "Han")
_GREEK: Final = _script_class("Greek")
_HEBREW: Final = _script_class("Hebrew")
_ARABIC_INDIC: Final = re.compile("[\u0660-\u0669]")
_EXTENDED_ARABIC_INDIC: Final = re.compile("[\u06f0-\u06f9]")
_VIRAMA: Final = 9  # canonical combining class


#: A longer run of combining marks can never be in a valid label: NFC composes at
#: most 3 marks into the character before them, and a U-label has at most
#: MAX_PUNYCODE_LENGTH (59) code points. NFC sorts a run of marks by combining
#: class with an insertion sort, quadratic in the run (a run of 377 cost 390 us).
MAX_MARK_RUN: Final = 63
#: Every code point of non-zero combining class is below this (the last, U+1E94A,
#: in Unicode 15); tests/test_idna_linear.py checks the rest of the range.
MARKS_END: Final = 0x20000


def _is_mark(char: str) -> bool:
    """A combining mark, or a code point that decomposes canonically into marks
    (U+0F73: two marks, though of combining class 0 itself)."""
    if unicodedata.combining(char):
        return True
    decomposition = unicodedata.decomposition(char)
    return bool(
        decomposition
        and not decomposition.startswith("<")
        and unicodedata.combining(chr(int(decomposition.split()[0], 16)))
    )


def _marks_table() -> str:
    """By code point of the text as sent: "m" if UTS #46 makes it marks only, "i"
    if it drops it, "s" for anything else (for str.translate). Looked up on the
    text before mapping, which is at most MAX_DOMAIN_TEXT long: mapping can make
    it 18 times longer."""
    ranges: list[tuple[int, int, str]] = []

    def add(code_point: int, letter: str) -> None:
        if ranges and ranges[-1][1] == code_point and ranges[-1][2] == letter:
            ranges[-1] = (ranges[-1][0], code_point + 1, letter)
        else:
            ranges.append((code_point, code_point + 1, letter))

    for code_point in sorted(set(range(MARKS_END)) | _UTS46_MAP.keys()):
        status = _UTS46_STATUS[code_point]
        if status == "I":
            add(code_point, "i")
        elif status == "M":
            mapped = _UTS46_MAP[code_point] or ""
            if mapped and all(map(_is_mark, mapped)):
                add(code_point, "m")
        elif status in "VD" and _is_mark(chr(code_point)):
            add(code_point, "m")
    return _table(ranges, "s")


_MARKS: Final = _marks_table()
_LONG_MARK_RUN: Final = "m" * (MAX_MARK_RUN + 1)


def uts46_map(text: str, *, bound_marks: bool = False) -> str | None:
    """idna.uts46_remap(text, std3_rules=False), or None for a disallowed code point.

    With ``bound_marks``, also None for a run of more than MAX_MARK_RUN code points
    that map to combining marks (ignored ones between them do not count), found
    before NFC would sort it: no label holding one is valid, so a caller that goes
    on to validate labels loses nothing.
    """
    statuses = text.translate(_UTS46_STATUS)
    if "X" in statuses:
        return None
    if bound_marks and _LONG_MARK_RUN in text.translate(_MARKS).replace("i", ""):
        return None
    if "M" in statuses or "I" in statuses:
        text = text.translate(_UTS46_MAP)
    return unicodedata.normalize("NFC", text)


def valid_u_label(label: str) -> bool:
    """Whether label passes idna.check_label(): IDNA 2008 (RFC 5891-5893) for one label."""
    if not label or not unicodedata.is_normalized("NFC", label):
        return False
    if label[2:4] == "--" or label[0] == "-" or label[-1] == "-":
        return False
    if unicodedata.category(label[0])[0] == "M":
        return False  # a leading combining mark
    classes = label.translate(_IDNA_CLASS)
    if "x" in classes:
        return False
    if "j" in classes and not _contextj_ok(label, classes):
        return False
    if "o" in classes and not _contexto_ok(label, classes):
        return False
    try:
        return check_bidi(label)  # one pass (two for right-to-left labels)
    except IDNAError:
        return False


def _positions(classes: str, letter: str) -> list[int]:
    return [index for index, value in enumerate(classes) if value == letter]


def _contextj_ok(label: str, classes: str) -> bool:
    """RFC 5892 A.1 and A.2, as idna.valid_contextj(), for every joiner in label."""
    joining: str | None = None
    named: set[str] = set()  # unicodedata.name() costs a microsecond: once per character
    for pos in _positions(classes, "j"):
        if pos > 0:
            before = label[pos - 1]
            combining = unicodedata.combining(before)
            if combining == 0 and before not in named:
                if not unicodedata.name(before, ""):
                    return False  # idna raises for an unknown neighbour
                named.add(before)
            if combining == _VIRAMA:
                continue
        if label[pos] == "\u200d":
            return False
        if label[pos] != "\u200c":
            return False
        if joining is None:
            joining = label.translate(_JOINING)  # once per label
        # The nearest character that is not transparent (T), on each side. The
        # strip is a C loop over at most one label (59 code points).
        if joining[:pos].rstrip("T")[-1:] not in ("L", "D"):
            return False
        if joining[pos + 1 :].lstrip("T")[:1] not in ("R", "D"):
            return False
    return True


def _contexto_ok(label: str, classes: str) -> bool:
    """RFC 5892 A.3-A.9, as idna.valid_contexto(); rules about the whole label are
    decided once per label, not once per code point."""
    last = len(label) - 1
    kana_or_han: bool | None = None
    for pos in _positions(classes, "o"):
        char = label[pos]
        if char == "\u00b7":  # MIDDLE DOT: only between two l (Catalan l·l)
            if not (0 < pos < last and label[pos - 1] == "l" and label[pos + 1] == "l"):
                return False
        elif char == "\u0375":  # GREEK LOWER NUMERAL SIGN: before a Greek letter
            if not (pos < last and _GREEK.match(label, pos + 1)):
                return False
        elif char in "\u05f3\u05f4":  # HEBREW GERESH, GERSHAYIM: after a Hebrew letter
            if not (pos > 0 and _HEBREW.match(label, pos - 1)):
                return False
        elif char == "\u30fb":  # KATAKANA MIDDLE DOT: with kana or Han in the label
            if kana_or_han is None:
                kana_or_han = bool(_KANA_OR_HAN.search(label.replace("\u30fb", "")))
            if not kana_or_han:
                return False
        elif not ("\u0660" <= char <= "\u0669" or "\u06f0" <= char <= "\u06f9"):
            return False
    # The two sets of Arabic-Indic digits are never mixed in one label.
    return not (_ARABIC_INDIC.search(label) and _EXTENDED_ARABIC_INDIC.search(label))


# --- Punycode (RFC 3492) --------------------------------------------------------------
# Written out here because the standard library's codec is pure Python too, and
# walks the whole label once per distinct code point (about 600 us for 59
# distinct ones). These make one pass over the code points, in order of value,
# and stop as soon as the result would be too long.

_BASE, _TMIN, _TMAX, _SKEW, _DAMP = 36, 1, 26, 38, 700
_DIGITS: Final = "abcdefghijklmnopqrstuvwxyz0123456789"
_DIGIT_VALUES: Final = {char: value for value, char in enumerate(_DIGITS)} | {
    char.upper(): value for value, char in enumerate(_DIGITS[:26])
}


def _adapt(delta: int, points: int, first: bool) -> int:
    delta = delta // _DAMP if first else delta >> 1
    delta += delta // points
    k = 0
    while delta > 455:  # ((_BASE - _TMIN) * _TMAX) // 2
        delta //= 35  # _BASE - _TMIN
        k += _BASE
    return k + 36 * delta // (delta + _SKEW)


def _thresholds(bias: int) -> tuple[int, ...]:
    """t for the digits of one variable-length integer at this bias, in order."""
    # Sixteen digits are more than any delta of a label takes (each digit divides
    # by at least 10); the last entry is a sentinel no digit reaches.
    return (
        *(
            _TMIN if k <= bias else _TMAX if k >= bias + _TMAX else k - bias
            for k in range(_BASE, _BASE * 17, _BASE)
        ),
        _BASE,
    )


#: By bias: _adapt() returns less than 36 * 8 for any delta below 36**8.
_THRESHOLDS: Final = tuple(_thresholds(bias) for bias in range(_BASE * 8))


def punycode_encode(label: str, limit: int = MAX_PUNYCODE_LENGTH) -> str | None:
    """label.encode("punycode").decode(), or None as soon as it exceeds limit characters.

    RFC 3492's encoder walks the whole label once per distinct code point. Here
    the code points are taken in order of value with their positions, and what
    that walk counts (the characters handled before a position) is a bisection
    in the sorted list of handled positions: O(n log n), not O(n x m).
    """
    basic = label.encode("ascii", "ignore").decode("ascii")
    out = [basic, "-"] if basic else []
    length = len(basic) + 1 if basic else 0
    if length > limit:
        return None
    points = sorted(zip(map(ord, label), range(len(label)), strict=True))
    b = h = len(basic)
    handled = sorted(position for _, position in points[:b])
    n, delta, bias = 128, 0, 72
    start, total = b, len(points)
    while start < total:
        m = points[start][0]
        delta += (m - n) * (h + 1)
        before = 0  # handled characters before the previous position of m
        end = start
        while end < total and points[end][0] == m:
            count = bisect.bisect_left(handled, points[end][1])
            delta += count - before
            before = count
            # delta as a generalised variable-length integer
            q = delta
            for t in _THRESHOLDS[bias]:
                if q < t:
                    break
                out.append(_DIGITS[t + (q - t) % (_BASE - t)])
                q = (q - t) // (_BASE - t)
                length += 1
            out.append(_DIGITS[q])
            length += 1
            if length > limit:
                return None
            if h == b or delta > 454:
                bias = _adapt(delta, h + 1, h == b)
            else:  # _adapt() for the usual small delta, inline (no loop below 455)
                half = delta >> 1
                half += half // (h + 1)
                bias = 36 * half // (half + _SKEW)
            delta = 0
            h += 1
            end += 1
        delta += len(handled) - before + 1
        for _, position in points[start:end]:
            bisect.insort(handled, position)
        n = m + 1
        start = end
    return "".join(out)


def punycode_decode(text: str) -> str | None:
    """text.encode().decode("punycode"), or None where the codec raises."""
    delimiter = text.rfind("-")
    out = list(text[:delimiter]) if delimiter > 0 else []
    if not text[: max(delimiter, 0)].isascii():
        return None
    rest = text[delimiter + 1 :]
    n, i, bias, at = 128, 0, 72, 0
    while at < len(rest):
        old, w, k = i, 1, _BASE
        while True:
            if at >= len(rest):
                return None
            digit = _DIGIT_VALUES.get(rest[at])
            at += 1
            if digit is None:
                return None
            i += digit * w
            t = _TMIN if k <= bias else _TMAX if k >= bias + _TMAX else k - bias
            if digit < t:
                break
            w *= _BASE - t
            k += _BASE
        size = len(out) + 1
        bias = _adapt(i - old, size, old == 0)
        n += i // size
        i %= size
        if n > 0x10FFFF:
            return None
        out.insert(i, chr(n))
        i += 1
    return "".join(out)


def delta_octets(a_label: str) -> int:
    """The octets of an "xn--" label's Punycode deltas: what follows its last hyphen
    (RFC 3492: the basic code points, then a hyphen if there were any)."""
    body = a_label[4:]
    return len(body) - body.rfind("-") - 1


def to_a_label(label: str, max_delta_octets: int = MAX_PUNYCODE_LENGTH) -> str | None:
    """The A-label of a U-label (mapped already), or None if it is not a valid one,
    its A-label would be longer than 63 octets, or its deltas (delta_octets())
    longer than max_delta_octets. As idna.alabel(), with that bound."""
    if len(label) > MAX_PUNYCODE_LENGTH:
        return None
    basic = len(label.encode("ascii", "ignore"))
    limit = min(MAX_PUNYCODE_LENGTH, basic + (basic > 0) + max_delta_octets)
    encoded = punycode_encode(label, limit)  # first: it stops at once when too long
    if encoded is None or not valid_u_label(label):
        return None
    return "xn--" + encoded


def check_a_label(label: str) -> bool:
    """Whether a lower-case "xn--" label is a valid A-label: it decodes, is the
    canonical encoding of what it decodes to, and that is a valid U-label.
    As idna.ulabel(). The caller has bounded the label to 63 octets."""
    body = label[4:]
    if not body or body.endswith("-") or not body.isascii():
        return False
    decoded = punycode_decode(body)
    if decoded is None:
        return False
    return punycode_encode(decoded, len(body)) == body and valid_u_label(decoded)
