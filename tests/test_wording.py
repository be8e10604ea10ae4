"""Log-line English: one helper for plurals and for "(N more since)"."""

from __future__ import annotations

from trackerd.core.wording import more_since, plural


def test_plural_says_one_or_many() -> None:
    assert plural(1, "connection") == "1 connection"
    assert plural(0, "connection") == "0 connections"
    assert plural(1_000, "status write") == "1000 status writes"  # commas separate items
    assert plural(2, "body", "bodies") == "2 bodies"


def test_more_since_is_omitted_when_none() -> None:
    assert more_since(0) == ""
    assert more_since(3) == " (3 more since)"
