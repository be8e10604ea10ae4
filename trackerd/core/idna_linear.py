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

Pure, no I/O. The tables cost about 2.3 MB and 30 ms once, at import.
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


def uts46_map(text: str) -> str | None:
    """idna.uts46_remap(text, std3_rules=False), or None for a disallowed code point."""
    statuses = text.translate(_UTS46_STATUS)
    if "X" in statuses:
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
    for pos in _positions(classes, "j"):
        if pos > 0:
            before = label[pos - 1]
            combining = unicodedata.combining(before)
            if combining == 0 and not unicodedata.name(before, ""):
                return False  # idna raises for an unknown neighbour
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
    for pos in _positions(classes, "o"):
        char = label[pos]
        if char == "\u00b7":  # MIDDLE DOT: only between two l (Catalan l·l)
            if not (0 < pos < last and label[pos - 1] == "l" and label[pos + 1] == "l"):
                return False
        elif char == "\u0375":  # GREEK LOWER NUMERAL SIGN: before a Greek letter
            if not (pos < last and _GREEK.match(label[pos + 1])):
                return False
        elif char in "\u05f3\u05f4":  # HEBREW GERESH, GERSHAYIM: after a Hebrew letter
            if not (pos > 0 and _HEBREW.match(label[pos - 1])):
                return False
        elif char == "\u30fb":  # KATAKANA MIDDLE DOT: with kana or Han in the label
            if not _KANA_OR_HAN.search(label.replace("\u30fb", "")):
                return False
        elif "\u0660" <= char <= "\u0669" or "\u06f0" <= char <= "\u06f9":
            # The two sets of Arabic-Indic digits are never mixed in one label.
            if _ARABIC_INDIC.search(label) and _EXTENDED_ARABIC_INDIC.search(label):
                return False
        else:
            return False
    return True


# --- Punycode (RFC 3492) --------------------------------------------------------------

_BASE, _TMIN, _TMAX, _SKEW, _DAMP = 36, 1, 26, 38, 700
_INITIAL_BIAS, _INITIAL_N = 72, 128
_DIGITS: Final = "abcdefghijklmnopqrstuvwxyz0123456789"


def _adapt(delta: int, points: int, first: bool) -> int:
    delta = delta // _DAMP if first else delta // 2
    delta += delta // points
    k = 0
    while delta > ((_BASE - _TMIN) * _TMAX) // 2:
        delta //= _BASE - _TMIN
        k += _BASE
    return k + (_BASE - _TMIN + 1) * delta // (delta + _SKEW)


def punycode_encode(label: str, limit: int = MAX_PUNYCODE_LENGTH) -> str | None:
    """label.encode("punycode").decode(), or None as soon as it exceeds limit characters.

    RFC 3492's encoder walks the whole label once per distinct code point. Here
    the code points are taken in order with their positions, and the count the
    walk would make (characters already handled before a position) is a
    bisection in the sorted list of handled positions: O(n log n), not O(n x m).
    """
    basic = [char for char in label if char < "\x80"]
    out = [*basic, "-"] if basic else []
    if len(out) > limit:
        return None
    handled = [index for index, char in enumerate(label) if char < "\x80"]
    others = sorted((ord(char), index) for index, char in enumerate(label) if char >= "\x80")
    n, delta, bias = _INITIAL_N, 0, _INITIAL_BIAS
    h = b = len(handled)
    start = 0
    while start < len(others):
        m = others[start][0]
        end = start
        while end < len(others) and others[end][0] == m:
            end += 1
        delta += (m - n) * (h + 1)
        before = 0  # handled characters before the previous occurrence of m
        for _, pos in others[start:end]:
            count = bisect.bisect_left(handled, pos)
            delta += count - before
            before = count
            # delta as a generalised variable-length integer
            q, k = delta, _BASE
            while True:
                t = _TMIN if k <= bias else _TMAX if k >= bias + _TMAX else k - bias
                if q < t:
                    break
                out.append(_DIGITS[t + (q - t) % (_BASE - t)])
                q = (q - t) // (_BASE - t)
                k += _BASE
            out.append(_DIGITS[q])
            if len(out) > limit:
                return None
            bias = _adapt(delta, h + 1, h == b)
            delta = 0
            h += 1
        delta += len(handled) - before + 1
        for _, pos in others[start:end]:
            bisect.insort(handled, pos)
        n = m + 1
        start = end
    return "".join(out)


def to_a_label(label: str) -> str | None:
    """The A-label of a U-label (mapped already), or None if it is not a valid one
    or its A-label would be longer than 63 octets. As idna.alabel()."""
    if len(label) > MAX_PUNYCODE_LENGTH or not valid_u_label(label):
        return None
    encoded = punycode_encode(label)
    return None if encoded is None else "xn--" + encoded


def check_a_label(label: str) -> bool:
    """Whether a lower-case "xn--" label is a valid A-label: it decodes, is the
    canonical encoding of what it decodes to, and that is a valid U-label.
    As idna.ulabel(). The caller has bounded the label to 63 octets."""
    body = label[4:]
    if not body or body.endswith("-") or not body.isascii():
        return False
    try:
        decoded = body.encode("ascii").decode("punycode")  # linear in at most 59 octets
    except (UnicodeError, ValueError, OverflowError):
        return False
    return punycode_encode(decoded, len(body)) == body and valid_u_label(decoded)
