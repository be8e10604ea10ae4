"""The salt's keyed hash of canonical values, and first sightings decided in C. Pure, no I/O.

A canonical value (normalise.py) is counted by its keyed BLAKE2b digest: the salt
is the key, and each category its own personalisation (PERSON), so a value can
never match across categories. KeyedHash computes it with hashlib (the reference);
CKeyedHash with the C extension (_cfirst.c, its BLAKE2b in _blake2b.h), which also
decides the common forms of a first sighting in one C loop (classify(): the raw
value normalised, classified and hashed, no Python object a value) and leaves the
rest (non-ASCII, IPv6, IDNA, a source route) to normalise.py. new_keyed_hash()
picks, as servertracker/accel.py decides.

Either way the salt stays inside: hashlib's pre-keyed hashers or the C struct (its
key block and states wiped on dealloc); no attribute or method returns it.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Sequence
from functools import partial
from itertools import repeat, starmap
from typing import TYPE_CHECKING, Final

from servertracker import accel

if TYPE_CHECKING:
    from trackerd.core._cfirst import FirstSightings

#: The C extension module, or None: hashlib and normalise.py do everything.
EXTENSION: Final = "trackerd.core._cfirst"
_cfirst = accel.load(EXTENSION)

#: Each category's personalisation (Category 0, 1, 2: normalise.py).
PERSON: Final = b"trackerd-%d"
CATEGORIES: Final = 3

#: The columns classify() takes.
CONN_IPS: Final = 0
SENDERS: Final = 1
DOMAIN_PARTS: Final = 2

#: Cache misses decided in C at a time (tracker.py, interned.py), the clock checked
#: after each chunk: about 0.1-0.3 ms of common forms (hostile ones of 512
#: characters, about 1 ms).
C_CHUNK: Final = 1024

#: classify()'s codes: 0 unsure (normalise.py decides), 1 + Category for a counted
#: value, then these.
UNSURE: Final = 0
COUNTED_CODES: Final = (1, 2, 3)
REJECTED: Final = 4
IGNORED: Final = 5

#: What classify() gives: each value's code (a byte), each one's digest (zeros unless
#: counted), and per category the counted values' digests joined.
Classified = tuple[bytes, bytes, tuple[bytes, bytes, bytes]]


class KeyedHash:
    """The keyed digests with hashlib: one pre-keyed hasher per category, copied
    per value (the key block is processed once)."""

    #: No C first sightings here.
    first_sightings: FirstSightings | None = None

    def __init__(self, key: bytes, digest_size: int) -> None:
        self._hashers = tuple(
            hashlib.blake2b(key=key, digest_size=digest_size, person=PERSON % category)
            for category in range(CATEGORIES)
        )

    def digest(self, category: int, key: bytes) -> bytes:
        hasher = self._hashers[category].copy()
        hasher.update(key)
        return hasher.digest()

    def digests(self, category: int, keys: Sequence[bytes]) -> list[bytes]:
        """digest() of each key: the copies, updates and digests run in map(),
        without a Python statement per key."""
        hashers = list(starmap(self._hashers[category].copy, repeat((), len(keys))))
        deque(map(_BLAKE2B.update, hashers, keys), maxlen=0)
        return list(map(_BLAKE2B.digest, hashers))


#: The type of the hashers (their methods are mapped over many at a time).
_BLAKE2B = type(hashlib.blake2b())


class CKeyedHash:
    """The keyed digests and the first sightings in C (_cfirst.FirstSightings)."""

    def __init__(self, key: bytes, digest_size: int) -> None:
        assert _cfirst is not None, "built only when the extension loaded (new_keyed_hash)"
        persons = [PERSON % category for category in range(CATEGORIES)]
        self.first_sightings: FirstSightings | None = _cfirst.FirstSightings(
            key, persons, digest_size
        )
        self.digest = self.first_sightings.digest

    def digests(self, category: int, keys: Sequence[bytes]) -> list[bytes]:
        return list(map(partial(self.digest, category), keys))


def new_keyed_hash(key: bytes, digest_size: int, *, c: bool = True) -> KeyedHash | CKeyedHash:
    """The C hash (with first sightings) if the extension runs and ``c``, else hashlib."""
    if c and _cfirst is not None:
        return CKeyedHash(key, digest_size)
    return KeyedHash(key, digest_size)
