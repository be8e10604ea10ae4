"""The raw-value cache: never a wrong answer, bounded, forgetting safely. Pure.

Every test runs on both implementations: the pure-Python RawCache and the C
extension's CRawCache (skipped where the extension is not built: test_accel.py
fails where a compiler could have built it)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trackerd.core import raw_cache
from trackerd.core.raw_cache import (
    COUNTED,
    FEW,
    IGNORED,
    MISS,
    REJECTED,
    WAYS,
    CRawCache,
    RawCache,
)

Cache = RawCache | CRawCache
MakeCache = Callable[[int], Cache]


@pytest.fixture(params=["python", "c"], scope="module")
def make_cache(request: pytest.FixtureRequest) -> MakeCache:
    """A cache of the given slots, of each implementation (the C one keyed by domain
    part for the usual senders, as the tracker's raw senders' cache is)."""
    if request.param == "python":
        return RawCache
    if raw_cache._ccolumns is None:
        pytest.skip("the C extension is not built (or SERVERTRACKER_PURE_PYTHON is set)")
    return lambda slots: CRawCache(slots, split=True)


def codes_of(cache: Cache, values: list[str | None]) -> list[int]:
    return [int(code) for code in cache.look_up(values)[1]]


def test_what_is_remembered_comes_back_with_its_code(make_cache: MakeCache) -> None:
    cache = make_cache(1024)
    values = ["192.0.2.1", "bogus", "", None, "<a@example.com>"]
    assert codes_of(cache, values) == [MISS] * 5
    keys, _ = cache.look_up(values)
    cache.remember(keys, [COUNTED, REJECTED, IGNORED, IGNORED, COUNTED])
    assert codes_of(cache, [*values, "192.0.2.2"]) == [
        COUNTED, REJECTED, IGNORED, IGNORED, COUNTED, MISS]  # fmt: skip
    assert len(cache) == 5 and cache.key("bogus") in cache and cache.key("x") not in cache


def test_the_empty_string_is_no_empty_slot(make_cache: MakeCache) -> None:
    """hash("") is 0: an empty table must not answer for it."""
    assert hash("") == 0
    assert codes_of(make_cache(64), [""]) == [MISS]


@pytest.mark.parametrize("others", [0, FEW, 100])
def test_a_key_given_twice_takes_one_slot(make_cache: MakeCache, others: int) -> None:
    """However many keys come with it (one at a time, or as arrays). Arrays may
    forget a key that shares a row with another new one, never answer wrongly."""
    cache = make_cache(4096)
    values = ["a", "a", "b", *(f"v{i}" for i in range(others))]
    keys, _ = cache.look_up(values)
    cache.remember(keys, [COUNTED, COUNTED, REJECTED] + [IGNORED] * others)
    assert len(cache) <= 2 + others
    assert codes_of(cache, ["a", "b"])[0] in (COUNTED, MISS)
    if 3 + others <= FEW or isinstance(cache, CRawCache):  # one at a time: nothing is forgotten
        assert len(cache) == 2 + others
        assert codes_of(cache, ["a", "b"]) == [COUNTED, REJECTED]


def test_a_full_row_forgets_and_the_size_never_changes(make_cache: MakeCache) -> None:
    cache = make_cache(4 * WAYS)  # 4 rows
    size = cache.nbytes
    values = [f"v{i}" for i in range(1000)]
    keys, _ = cache.look_up(values)
    cache.remember(keys, [COUNTED] * len(values))
    assert len(cache) == cache.slots == 4 * WAYS and cache.nbytes == size
    codes = codes_of(cache, values)
    assert codes.count(COUNTED) == 4 * WAYS and set(codes) == {COUNTED, MISS}


def test_clear_forgets_everything(make_cache: MakeCache) -> None:
    cache = make_cache(64)
    keys, _ = cache.look_up(["a", "b"])
    cache.remember(keys, [COUNTED, COUNTED])
    cache.clear()
    assert len(cache) == 0 and codes_of(cache, ["a", "b"]) == [MISS, MISS]


@settings(max_examples=100, derandomize=True, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(st.text(max_size=3), st.sampled_from([COUNTED, REJECTED, IGNORED])),
            max_size=30,
        ),
        max_size=8,
    ),
    st.sampled_from([4, 16, 64, 4096]),
)
def test_an_answer_is_never_wrong(
    make_cache: MakeCache, batches: list[list[tuple[str, int]]], slots: int
) -> None:
    """Batch after batch of look-ups and remembered misses: every value found is
    found with the code it was remembered with (a value may be forgotten)."""
    cache = make_cache(slots)
    truth: dict[str, int] = {}
    for batch in batches:
        values = [value for value, _ in batch]
        keys, codes = cache.look_up(values)
        new_keys, new_codes = [], []
        for (value, code), key, found in zip(batch, keys.tolist(), codes.tolist(), strict=True):
            code = truth.setdefault(value, code)
            if found == MISS:
                new_keys.append(key)
                new_codes.append(code)
            else:
                assert found == code
        cache.remember(new_keys, new_codes)
        assert len(cache) <= cache.slots
