"""Who may talk to trackerd, and the limits every connection lives within.

The socket's file mode is the first gate. Optional allow-lists of UIDs and GIDs
are the second, checked against the peer's credentials from SO_PEERCRED on
every connection (the kernel's word, not the peer's). A GID allow-list admits
a peer by its primary group or any supplementary one (SO_PEERGROUPS), since
"add the SMTP workers' user to the trackerd group" gives them a supplementary one.
"""

from __future__ import annotations

import argparse
import errno
import os
import platform
import socket
import struct
import time
from dataclasses import dataclass, field

from servertracker import protocol
from trackerd.option_types import Arguments, group_id, int_between, seconds_between, user_id

#: The --help group the options below go in, and what it says.
ARGUMENT_GROUP = (
    "access and limits",
    "The socket's mode (0660) is the first gate; allow-lists are checked on every "
    "connection with SO_PEERCRED and SO_PEERGROUPS (the peer's uid, its primary gid "
    "and its supplementary groups). The daemon's own user is always let in.",
)

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
#: Linux 4.13+; Python 3.11 does not name it. 59 is the value on every
#: architecture but parisc and sparc, which number socket options their own way.
_SO_PEERGROUPS: int | None = getattr(socket, "SO_PEERGROUPS", None) or (
    59 if not platform.machine().startswith(("parisc", "sparc")) else None
)
_GID_SIZE = 4  # gid_t
#: Linux's NGROUPS_MAX: a buffer this large always fits.
_MAX_GROUPS = 65536


@dataclass(frozen=True)
class PeerCredentials:
    pid: int
    uid: int
    gid: int
    #: Supplementary groups as the kernel recorded them at connect(); empty if unknown.
    groups: frozenset[int] = frozenset()


def peer_credentials(sock: socket.socket) -> PeerCredentials | None:
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        return None
    pid, uid, gid = _UCRED.unpack(raw)
    return PeerCredentials(pid, uid, gid, peer_groups(sock))


def peer_groups(sock: socket.socket) -> frozenset[int]:
    """The peer's supplementary groups (SO_PEERGROUPS), or none where it is unknown."""
    if _SO_PEERGROUPS is None:
        return frozenset()
    for count in (64, _MAX_GROUPS):  # most users are in few groups: try small first
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, count * _GID_SIZE)
        except OSError as exc:
            if exc.errno == errno.ERANGE:  # more groups than the buffer holds
                continue
            return frozenset()  # an old kernel
        return frozenset(struct.unpack(f"{len(raw) // _GID_SIZE}I", raw))
    return frozenset()


@dataclass(frozen=True)
class AllowLists:
    """Who may connect, beyond the socket's mode; None means "not restricted"."""

    uids: frozenset[int] | None = None
    gids: frozenset[int] | None = None
    #: The daemon's own user is always let in (its admin tools run as it).
    own_uid: int = field(default_factory=os.getuid)

    @classmethod
    def add_arguments(cls, arguments: Arguments) -> None:
        arguments.add_argument(
            "--allow-uid",
            action="append",
            type=user_id,
            metavar="USER",
            help="a user (name or number) that may connect; repeat for more",
        )
        arguments.add_argument(
            "--allow-gid",
            action="append",
            type=group_id,
            metavar="GROUP",
            help="a group (name or number) whose members may connect; repeat for more",
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AllowLists:
        return cls(
            frozenset(args.allow_uid) if args.allow_uid else None,
            frozenset(args.allow_gid) if args.allow_gid else None,
        )

    @property
    def restricted(self) -> bool:
        return self.uids is not None or self.gids is not None

    def unseeable(self, maps: IdMaps | None = None) -> list[str]:
        """The listed ids that no peer can ever be seen with here, as "--allow-gid 8".

        In a user namespace (systemd's PrivateUsers=yes makes one mapping only root
        and the service's own user) the kernel shows every unmapped peer as the
        overflow id (65534): such an id in a list would never match, or match everyone.
        """
        maps = maps or IdMaps.of_this_process()
        if maps.is_initial:
            return []
        found = []
        for flag, ids, id_map in (
            ("--allow-uid", self.uids, maps.uids),
            ("--allow-gid", self.gids, maps.gids),
        ):
            for number in sorted(ids or ()):
                if number == maps.overflow or not any(
                    inner <= number < inner + count for inner, _, count in id_map
                ):
                    found.append(f"{flag} {number}")
        return found

    def permits(self, peer: PeerCredentials | None) -> bool:
        if not self.restricted:
            return True
        if peer is None:
            return False
        return (
            peer.uid == self.own_uid
            or (self.uids is not None and peer.uid in self.uids)
            or (
                self.gids is not None
                and (peer.gid in self.gids or not self.gids.isdisjoint(peer.groups))
            )
        )


#: The count of the initial namespace's one identity mapping (2**32 - 1 ids).
_ALL_IDS = 4294967295


@dataclass(frozen=True)
class IdMaps:
    """This process's user namespace: /proc/self/uid_map and gid_map (inner, outer, count)."""

    uids: tuple[tuple[int, int, int], ...]
    gids: tuple[tuple[int, int, int], ...]
    #: What an unmapped peer is shown as (/proc/sys/kernel/overflowuid; the same for gids).
    overflow: int = 65534

    @property
    def is_initial(self) -> bool:
        """True outside any user namespace: everything maps to itself."""
        whole = ((0, 0, _ALL_IDS),)
        return self.uids == whole and self.gids == whole

    @classmethod
    def of_this_process(cls) -> IdMaps:
        def read_map(path: str) -> tuple[tuple[int, int, int], ...]:
            try:
                with open(path) as file:
                    rows = [line.split() for line in file]
            except OSError:  # no /proc: nothing to say
                return ((0, 0, _ALL_IDS),)
            return tuple((int(a), int(b), int(c)) for a, b, c in rows)

        try:
            with open("/proc/sys/kernel/overflowuid") as file:
                overflow = int(file.read())
        except (OSError, ValueError):
            overflow = 65534
        return cls(read_map("/proc/self/uid_map"), read_map("/proc/self/gid_map"), overflow)


def unseeable_message(unseeable: list[str]) -> str:
    return (
        f"{', '.join(unseeable)}: trackerd runs in a user namespace that does not map "
        "this id, so the kernel shows every such peer as nobody (65534) and the allow-list "
        "cannot work. Under systemd, PrivateUsers=yes does this: leave it off (see "
        "docs/install.md)"
    )


@dataclass(frozen=True)
class ConnectionLimits:
    #: Connections served at once; more are told "busy" and closed.
    max_connections: int = 1024
    #: A connection that sends nothing for this long is closed (0: never).
    idle_timeout: float = 600.0
    #: A frame must arrive whole within this many seconds of its first byte.
    frame_timeout: float = 30.0
    #: Bytes of unfinished frames buffered across all connections; past it, the
    #: connections whose frames began first are closed with "busy".
    max_buffered_total: int = 64 * 1024 * 1024

    @classmethod
    def add_arguments(cls, arguments: Arguments) -> None:
        defaults = cls()
        arguments.add_argument(
            "--max-connections",
            type=int_between(1, 1 << 20),
            default=defaults.max_connections,
            metavar="N",
            help="connections served at once (default: %(default)s)",
        )
        arguments.add_argument(
            "--idle-timeout",
            type=seconds_between(0, 1e9),
            default=defaults.idle_timeout,
            metavar="SECONDS",
            help="close connections silent this long; 0 never (default: %(default)s)",
        )
        arguments.add_argument(
            "--frame-timeout",
            type=seconds_between(0, 1e9),
            default=defaults.frame_timeout,
            metavar="SECONDS",
            help=(
                "close connections that take longer to send one message, from its first "
                "byte to its last (default: %(default)s)"
            ),
        )
        arguments.add_argument(
            "--max-unfinished-bytes",
            type=int_between(protocol.MAX_MESSAGE_SIZE + protocol.HEADER_SIZE, 1 << 40),
            default=defaults.max_buffered_total,
            metavar="BYTES",
            help=(
                "bytes of unfinished messages buffered across all connections; past it, "
                "those whose messages began first are closed (default: %(default)s)"
            ),
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ConnectionLimits:
        return cls(
            max_connections=args.max_connections,
            idle_timeout=args.idle_timeout,
            frame_timeout=args.frame_timeout,
            max_buffered_total=args.max_unfinished_bytes,
        )


class LogThrottle:
    """Lets a repeated log line through at most once per interval, counting the rest."""

    def __init__(self, interval: float = 10.0) -> None:
        self._interval = interval
        self._next = 0.0
        self._suppressed = 0

    def ready(self) -> int | None:
        """None to stay quiet; else how many events were suppressed since the last line."""
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return None
        self._next = now + self._interval
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed
