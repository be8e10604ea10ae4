"""Domain names made to cost the normaliser as much as possible (issue 12 §1).

Each shape aims at one rule of idna or one step of normalisation: the issue's
examples, then what idna's rules suggest (a scan per contextual code point,
a bisection per code point, Punycode's pass per distinct code point, long
mappings, many short labels). ``variant(shape, i)`` gives distinct values of one
shape, so a flood of them misses every cache. Shared by bench/, fuzz/ and tests.
"""

from __future__ import annotations

from collections.abc import Callable

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _letters(i: int, width: int) -> str:
    """i in base 26, as exactly width letters."""
    out = []
    for _ in range(width):
        i, digit = divmod(i, 26)
        out.append(_LETTERS[digit])
    return "".join(out)


def _digits(i: int, width: int, zero: int) -> str:
    return "".join(chr(zero + int(d)) for d in str(i).zfill(width)[-width:])


def _cjk(i: int, count: int, step: int = 97) -> str:
    return "".join(chr(0x4E00 + (step * j + i) % 20000) for j in range(count))


#: name -> a function of i giving the i-th distinct value of that shape.
SHAPES: dict[str, Callable[[int], str]] = {
    # The 12.6 ms sender: idna scanned the label once per KATAKANA MIDDLE DOT.
    "issue: 90 katakana middle dots, 162 letters, 1 katakana": lambda i: (
        "\u30fb" * 90 + _letters(i, 162) + "\u30a2"
    ),
    # The 815 us label: one 63-character label, 20 middle dots.
    "issue: one 63-character label, 20 middle dots": lambda i: (
        "\u30fb" * 20 + _letters(i, 42) + "\u30a2.de"
    ),
    "issue: labels of Arabic-Indic digits": lambda i: ".".join(
        [_digits(i, 60, 0x660)] + ["\u0661" * 60] * 3
    ),
    "middle dots, valid label length": lambda i: "\u30fb" * 29 + _letters(i, 28) + "\u30a2.de",
    "mixed Arabic-Indic digit sets": lambda i: _digits(i, 30, 0x660) + "\u06f1" * 29 + ".de",
    "extended Arabic-Indic digits, 4 labels": lambda i: ".".join([_digits(i, 59, 0x6F0)] * 4),
    # CONTEXTJ: each ZERO WIDTH NON-JOINER scans back and forth over transparent marks.
    "joiners between transparent marks": lambda i: (
        "\u0628" + "\u064b" * 20 + "\u200c" * 18 + "\u064b" * 19 + _digits(i, 1, 0x660) + ".de"
    ),
    "joiners between Arabic letters": lambda i: (
        "\u0628" + "\u200c\u0628" * 28 + _digits(i, 1, 0x660) + ".de"
    ),
    "Greek keraia before Greek letters": lambda i: (
        "\u03b1" + "\u0375\u03b2" * 28 + chr(0x3B1 + i % 20) + ".gr"
    ),
    "Hebrew geresh after Hebrew letters": lambda i: (
        "\u05d0\u05f3" * 29 + chr(0x5D0 + i % 20) + ".il"
    ),
    "Catalan middle dots": lambda i: "l\u00b7l" * 19 + _letters(i, 2) + ".cat",
    # Punycode: the standard library's encoder passes over the label per distinct code point.
    "59 distinct CJK ideographs in one label": lambda i: _cjk(i, 59) + ".cn",
    "4 labels of 59 distinct CJK": lambda i: ".".join(_cjk(i + k, 59, 89) for k in range(4)),
    "254 CJK ideographs, no dot": lambda i: _cjk(i, 254),
    "many one-character U-labels": lambda i: ".".join(chr(0xE0 + (i + k) % 23) for k in range(30)),
    "many A-labels": lambda i: ".".join(
        "xn--" + chr(0xE0 + (i + k) % 23).encode("punycode").decode() for k in range(30)
    ),
    "8 one-character U-labels (the most IDNA labels)": lambda i: ".".join(
        [chr(0xE0 + (i + k) % 23) for k in range(8)] + ["x" * 40] * 4
    ),
    "right-to-left labels (Bidi rule)": lambda i: ".".join(
        [_digits(i, 1, 0x5D0) + "\u05d0" * 57] * 4
    ),
    "a mapping that grows 18-fold (U+FDFA)": lambda i: "\ufdfa" * 253 + chr(0x61 + i % 26),
    "ignored code points (soft hyphens)": lambda i: "b\u00ad" * 126 + _letters(i, 2),
    "fullwidth letters and full stops": lambda i: (
        "".join(chr(0xFF41 + ord(c) - 97) for c in _letters(i, 60)) + "\uff0e\uff44\uff45"
    ),
    # NFC sorts a run of combining marks by class, quadratic in the run; U+0F73
    # maps to two marks (issue 12 review: 393 us before runs were bounded).
    "review: a run of 377 combining marks (U+0F73 maps to two)": lambda i: (
        "a" + "\u0301" * 127 + "\u0f73" * 125 + _cjk(i, 1)
    ),
    "runs of 63 marks as sent (105 once mapped), 3 labels": lambda i: ".".join(
        ["a" + "\u0301" * 21 + "\u0f73" * 42] * 3 + [_letters(i, 3)]
    ),
    # Each A-label is decoded, encoded again and checked (issue 12 review: 346 us).
    "review: 8 A-labels of 11 CJK ideographs": lambda i: ".".join(
        "xn--" + _cjk(i * 8 + k, 11).encode("punycode").decode() for k in range(8)
    ),
    "8 U-labels of 11 CJK ideographs": lambda i: ".".join(_cjk(i * 8 + k, 11) for k in range(8)),
    "3 A-labels of 11 CJK ideographs (deltas just under the bound)": lambda i: ".".join(
        ["xn--" + _cjk(i * 3 + k, 11).encode("punycode").decode() for k in range(3)] + ["cn"]
    ),
    # For scale: what real names cost.
    "typical Unicode name": lambda i: f"b\u00fccher{_letters(i, 3)}.de",
    "legitimate 253-octet name": lambda i: ".".join(
        ["b\u00fccher" + _letters(i, 50)] + ["b\u00fccher" + "a" * 50] * 2 + ["x" * 61]
    ),
}

#: Shapes that are real names, for scale: they must keep counting.
LEGITIMATE = ("typical Unicode name", "legitimate 253-octet name")


def variant(shape: str, i: int) -> str:
    """The i-th distinct value of a shape."""
    return SHAPES[shape](i)


def worst_senders(count: int, start: int = 0) -> list[str]:
    """count distinct senders, cycling through every costly shape."""
    shapes = [name for name in SHAPES if name not in LEGITIMATE]
    return ["u@" + variant(shapes[i % len(shapes)], start + i // len(shapes)) for i in range(count)]


def flood_pairs(number: int, count: int) -> list[tuple[str, str]]:
    """The number-th batch of count pairs for a flood: distinct costly senders (no
    cache hit anywhere) from distinct connection IPs (so counts can be checked)."""
    first = number * count
    return [
        (f"10.{(first + i) >> 16 & 255}.{(first + i) >> 8 & 255}.{(first + i) & 255}", sender)
        for i, sender in enumerate(worst_senders(count, start=first))
    ]
