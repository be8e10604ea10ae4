"""Client's parameters are checked where they are given (new-operator review).

A float or bool table size used to reach the daemon, which refused every intern
request; max_buffered=0 dropped every record and made record_many() wait forever.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from servertracker import Client
from tests.conftest import Daemon, wait_for


@pytest.mark.parametrize("value", [1.5, 131072.0, True, False, "big", None])
def test_table_entries_of_the_wrong_type_is_a_type_error(short_tmp: Path, value: object) -> None:
    with pytest.raises(TypeError, match="table_entries must be an integer"):
        Client(short_tmp / "s", table_entries=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("table_entries", -1, "from 0 to 1,048,576"),
        ("table_entries", (1 << 20) + 1, "from 0 to 1,048,576"),
        ("max_buffered", 0, "at least 1"),
        ("max_buffered", -5, "at least 1"),
        ("max_long_chars", -1, "at least 0"),
        ("batch_size", 0, "from 1 to 65,536"),
        ("batch_size", 65537, "from 1 to 65,536"),
        ("flush_interval", 0, "> 0"),
        ("flush_interval", float("nan"), "> 0"),
        ("exit_timeout", -1.0, ">= 0"),
        ("exit_timeout", float("inf"), ">= 0"),
    ],
)
def test_out_of_range_is_a_value_error_naming_the_parameter(
    short_tmp: Path, name: str, value: object, words: str
) -> None:
    with pytest.raises(ValueError, match=name) as raised:
        Client(short_tmp / "s", **{name: value})  # type: ignore[arg-type]
    assert words in str(raised.value)


@pytest.mark.parametrize(("name", "value"), [("max_buffered", 2.0), ("batch_size", True)])
def test_counts_must_be_integers(short_tmp: Path, name: str, value: object) -> None:
    with pytest.raises(TypeError, match=name):
        Client(short_tmp / "s", **{name: value})  # type: ignore[arg-type]


def test_integer_like_values_are_taken(daemon: Daemon) -> None:
    """operator.index(): an int subclass or numpy integer is a count; records arrive."""

    class Count(int):
        pass

    client = Client(
        daemon.socket_path, table_entries=Count(4096), max_buffered=Count(10), flush_interval=1
    )
    try:
        assert client.record_many([("192.0.2.1", "a@example.com")], timeout=30) == 1
        assert client.flush(30)
        wait_for(lambda: daemon.status().records >= 1, timeout=30)
    finally:
        client.close()
