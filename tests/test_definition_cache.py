"""The definition cache (core/definition_cache.py): a held key always comes back
with its own payload, whatever collides in a row."""

from __future__ import annotations

import numpy as np
import pytest

from trackerd.core.definition_cache import WAYS, DefinitionCache


def payloads(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # type: ignore[type-arg]
    """A payload derived from each key, so a mixed-up slot shows."""
    codes = (keys % 5 + 1).astype(np.int8)
    digests = (keys.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) | np.uint64(1)
    registers = (keys % 1000 + 1).astype(np.uint32)
    return codes, digests, registers


def check_held(cache: DefinitionCache, keys: np.ndarray, fleet: bool) -> int:  # type: ignore[type-arg]
    hits, slots = cache.look_up(keys)
    codes, digests, registers = payloads(keys)
    assert (cache.codes.ravel()[slots[hits]] == codes[hits]).all()
    assert (cache.digests.ravel()[slots[hits]] == digests[hits]).all()
    if fleet:
        assert cache.registers is not None
        assert (cache.registers.ravel()[slots[hits]] == registers[hits]).all()
    return int(hits.sum())


@pytest.mark.parametrize("fleet", [False, True])
def test_rows_overflowing_keep_each_key_with_its_payload(fleet: bool) -> None:
    cache = DefinitionCache(4 * WAYS, fleet=fleet)  # 4 rows
    rng = np.random.default_rng(7)
    everything = []
    for size in (3, 10, 40, 200):  # far more keys than slots, many on one row
        keys = rng.integers(-(1 << 63), 1 << 63, size=size, dtype=np.int64)
        codes, digests, registers = payloads(keys)
        cache.remember(keys, codes, digests, registers if fleet else None)
        everything.append(keys)
        check_held(cache, np.concatenate(everything), fleet)
    assert len(cache) == 4 * WAYS  # every slot taken, none twice


def test_free_slots_are_all_used_before_any_key_is_forgotten() -> None:
    cache = DefinitionCache(2 * WAYS)
    # 2 * WAYS keys on two rows: each lands, though they contend for the same slots.
    keys = np.array([row + 2 * n for n in range(WAYS) for row in (0, 1)], dtype=np.int64)
    codes, digests, _ = payloads(keys)
    cache.remember(keys, codes, digests, None)
    assert check_held(cache, keys, False) == keys.size


def test_a_key_given_twice_is_held_once() -> None:
    cache = DefinitionCache(4 * WAYS)
    keys = np.array([5, 9, 5, 13, 9], dtype=np.int64)
    codes, digests, _ = payloads(keys)
    cache.remember(keys, codes, digests, None)
    assert len(cache) == 3
    assert check_held(cache, keys, False) == keys.size
