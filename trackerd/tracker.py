"""The tracker core: the salt, the keyed hash and the three sets. Pure, no I/O.

Values are normalised, then only a keyed BLAKE2b digest of the canonical form
is kept. The salt is made here, handed to the hash objects and dropped: no
attribute holds it, nothing prints it, and a restart makes a new one, so the
counts reset by design.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Iterable, Sequence

from servertracker.status import Status
from trackerd.normalise import Category, Outcome, classify_conn_ip, classify_sender

SALT_SIZE = 32
#: 64-bit digests: at ten million values per set the chance of any collision is
#: about 3 in a million, and a digest is half the size of a 128-bit one.
DIGEST_SIZE = 8


class Tracker:
    """Salted-hash sets of connection IPs, sender domains and sender IP literals."""

    def __init__(
        self, *, clock: Callable[[], float] = time.time, salt: bytes | None = None
    ) -> None:
        """``salt`` exists for tests of the core; the daemon never passes one."""
        key = secrets.token_bytes(SALT_SIZE) if salt is None else salt
        # One pre-keyed hasher per category, copied per value: the key block is
        # processed once, and a value can never match across categories.
        self._hashers = tuple(
            hashlib.blake2b(key=key, digest_size=DIGEST_SIZE, person=b"trackerd-%d" % category)
            for category in Category
        )
        del key
        self._sets: tuple[set[bytes], set[bytes], set[bytes]] = (set(), set(), set())
        self._clock = clock
        self.boot_time = int(clock())
        self.records = 0
        self.rejected_conn_ips = 0
        self.rejected_senders = 0

    def __repr__(self) -> str:
        return f"<Tracker records={self.records} sets={[len(s) for s in self._sets]}>"

    def _add(self, category: Category, key: bytes) -> None:
        hasher = self._hashers[category].copy()
        hasher.update(key)
        self._sets[category].add(hasher.digest())

    def record_server(self, conn_ip: str | None, sender: str | None) -> None:
        """Count one (connection IP, sender) pair; never raises for any str or None."""
        self.records += 1
        ip = classify_conn_ip(conn_ip)
        if type(ip) is bytes:
            self._add(Category.CONN_IP, ip)
        elif ip is Outcome.REJECTED:
            self.rejected_conn_ips += 1
        classified = classify_sender(sender)
        if type(classified) is tuple:
            self._add(*classified)
        elif classified is Outcome.REJECTED:
            self.rejected_senders += 1

    def record_pairs(self, pairs: Iterable[Sequence[str | None]]) -> None:
        for conn_ip, sender in pairs:
            self.record_server(conn_ip, sender)

    def status(self) -> Status:
        return Status(
            boot_time=self.boot_time,
            unique_conn_ips=len(self._sets[Category.CONN_IP]),
            unique_domains=len(self._sets[Category.DOMAIN]),
            unique_ip_servers=len(self._sets[Category.IP_SERVER]),
            updated_time=self._clock(),
            records=self.records,
            rejected_conn_ips=self.rejected_conn_ips,
            rejected_senders=self.rejected_senders,
        )
