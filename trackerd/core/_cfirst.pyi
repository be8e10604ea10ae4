"""Types of the C extension module trackerd/core/_cfirst.c (built optional)."""

from collections.abc import Sequence

UNSURE: int
REJECTED: int
IGNORED: int

class FirstSightings:
    """Keyed BLAKE2b per category, and first sightings classified and hashed."""

    def __init__(self, key: bytes, persons: Sequence[bytes], digest_size: int) -> None: ...
    def digest(self, category: int, key: bytes) -> bytes: ...
    def classify(
        self, column: int, values: Sequence[str | None]
    ) -> tuple[bytes, bytes, tuple[bytes, bytes, bytes]]: ...

def canonical(column: int, value: str | None) -> tuple[int, bytes | None]: ...
def blake2b(data: bytes, key: bytes, person: bytes, digest_size: int) -> bytes: ...
