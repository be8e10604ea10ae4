"""The fleet key: its file format, its epochs and the one-way step between them.

Every host of a fleet holds the same key file. It names an epoch (a period of
``epoch_seconds``, by default one UTC day, numbered from the Unix epoch) and the
key of that epoch. The key of the next epoch is a keyed BLAKE2b of a fixed label
under the current key: anyone can step forward, nobody can step back, so a key
taken today tells nothing about the registers of earlier days. Nothing here
reads or writes a file (trackerd's edges and ``trackerctl fleet`` do); pure.

The file is text, one ``name value`` per line, so that an admin can see which
epoch it is for without a tool:

    # servertracker fleet key: secret, the same on every host (docs/fleet.md)
    version 1
    epoch-seconds 86400
    epoch 20417
    key 3c5e...(64 hex digits)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Final

KEY_SIZE: Final = 32
DEFAULT_EPOCH_SECONDS: Final = 86400
#: Shortest and longest epoch a key file may name (short ones are for tests).
MIN_EPOCH_SECONDS: Final = 1
MAX_EPOCH_SECONDS: Final = 366 * 86400
#: A key file is a few lines; anything larger is not one.
MAX_KEY_FILE_SIZE: Final = 4096
#: Most steps taken at once (a key file this many epochs old is refused):
#: about 1 s of hashing, and 2,700 years of daily epochs.
MAX_STEPS: Final = 1_000_000

_FORMAT_VERSION = "1"
# BLAKE2b personalisation strings: the step and the value hashes never collide.
_STEP_PERSON = b"st-fleet-step"
_VALUE_PERSON = b"st-fleet-value%d"


class FleetKeyError(ValueError):
    """A key file that cannot be used; the text never contains the key."""


def epoch_at(now: float, epoch_seconds: int) -> int:
    """The number of the epoch that contains Unix time ``now``."""
    return int(now // epoch_seconds)


def next_key(key: bytes) -> bytes:
    """The key of the next epoch: one way only (a keyed hash of a fixed label)."""
    return hashlib.blake2b(
        b"next epoch", key=key, digest_size=KEY_SIZE, person=_STEP_PERSON
    ).digest()


def value_hasher(key: bytes, category: int) -> hashlib.blake2b:
    """A pre-keyed BLAKE2b for one category's values in the epoch of ``key``.

    64-bit digests, as Redis's HyperLogLog takes from its own MurmurHash64A.
    """
    return hashlib.blake2b(key=key, digest_size=8, person=_VALUE_PERSON % category)


@dataclass(frozen=True, slots=True)
class FleetKey:
    """One epoch's key. repr() never shows the key."""

    epoch_seconds: int
    epoch: int
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not MIN_EPOCH_SECONDS <= self.epoch_seconds <= MAX_EPOCH_SECONDS:
            raise FleetKeyError(
                f"epoch-seconds must be between {MIN_EPOCH_SECONDS} and {MAX_EPOCH_SECONDS}"
            )
        if self.epoch < 0:
            raise FleetKeyError("epoch must not be negative")
        if len(self.key) != KEY_SIZE:
            raise FleetKeyError(f"the key must be {KEY_SIZE} bytes")

    @classmethod
    def generate(cls, now: float, epoch_seconds: int = DEFAULT_EPOCH_SECONDS) -> FleetKey:
        """A new random key for the epoch that contains ``now``."""
        if not MIN_EPOCH_SECONDS <= epoch_seconds <= MAX_EPOCH_SECONDS:
            raise FleetKeyError(
                f"epoch-seconds must be between {MIN_EPOCH_SECONDS} and {MAX_EPOCH_SECONDS}"
            )
        import secrets  # only keygen needs it

        return cls(epoch_seconds, epoch_at(now, epoch_seconds), secrets.token_bytes(KEY_SIZE))

    def advanced(self, epoch: int) -> FleetKey:
        """The key of a later (or the same) epoch. There is no way back:
        an earlier epoch raises FleetKeyError."""
        if epoch < self.epoch:
            raise FleetKeyError(
                f"the key is for epoch {self.epoch}; earlier epochs cannot be derived from it"
            )
        if epoch - self.epoch > MAX_STEPS:
            raise FleetKeyError(f"the key is more than {MAX_STEPS} epochs old")
        key = self.key
        for _ in range(epoch - self.epoch):
            key = next_key(key)
        return FleetKey(self.epoch_seconds, epoch, key)

    def to_text(self) -> str:
        return (
            "# servertracker fleet key: secret, the same on every host (docs/fleet.md)\n"
            f"version {_FORMAT_VERSION}\n"
            f"epoch-seconds {self.epoch_seconds}\n"
            f"epoch {self.epoch}\n"
            f"key {self.key.hex()}\n"
        )

    @classmethod
    def from_text(cls, text: str) -> FleetKey:
        """Parse a key file's text; FleetKeyError says what is wrong (never the key)."""
        if len(text) > MAX_KEY_FILE_SIZE:
            raise FleetKeyError("not a fleet key file (too large)")
        fields: dict[str, str] = {}
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, _, value = line.partition(" ")
            if name not in ("version", "epoch-seconds", "epoch", "key") or name in fields:
                raise FleetKeyError(f"not a fleet key file (line {number})")
            fields[name] = value.strip()
        if set(fields) != {"version", "epoch-seconds", "epoch", "key"}:
            raise FleetKeyError("not a fleet key file (needs version, epoch-seconds, epoch, key)")
        if fields["version"] != _FORMAT_VERSION:
            raise FleetKeyError("unsupported fleet key file version")
        try:
            epoch_seconds = int(fields["epoch-seconds"])
            epoch = int(fields["epoch"])
        except ValueError:
            raise FleetKeyError("epoch-seconds and epoch must be integers") from None
        key_hex = fields["key"]
        if len(key_hex) != 2 * KEY_SIZE:
            raise FleetKeyError(f"the key must be {2 * KEY_SIZE} hex digits")
        try:
            key = bytes.fromhex(key_hex)
        except ValueError:
            raise FleetKeyError("the key must be hex digits") from None
        return cls(epoch_seconds, epoch, key)
