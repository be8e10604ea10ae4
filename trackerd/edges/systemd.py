"""systemd integration without libsystemd: sd_notify, socket activation, no core dumps.

sd_notify is one datagram to $NOTIFY_SOCKET (a path, or an abstract address
written with a leading "@"). Socket activation hands over listening sockets as
fds 3.. with $LISTEN_FDS, $LISTEN_PID and $LISTEN_FDNAMES (sd_listen_fds(3)).
Outside systemd every function here is a no-op.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import socket
import time
from collections.abc import Mapping, MutableMapping

log = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3
#: Seconds a notification may wait for room in the service manager's queue.
NOTIFY_SEND_TIMEOUT = 0.05
_PR_SET_DUMPABLE = 4


class Notifier:
    """Sends sd_notify messages to the service manager, if there is one."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address: str | None = None
        if address.startswith("@"):
            self._address = "\0" + address[1:]  # Linux abstract namespace
        elif address.startswith("/"):
            self._address = address
        elif address:
            log.warning("NOTIFY_SOCKET %r is not a Unix socket address; not notifying", address)
        self._watchdog_usec = _watchdog_usec(env)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half the timeout), or None if not asked for."""
        return None if self._watchdog_usec is None else self._watchdog_usec / 2_000_000

    def notify(self, message: str) -> bool:
        if self._address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # This runs in the event loop: a service manager whose queue is
                # full must not hold it (the next watchdog ping would be late).
                sock.settimeout(NOTIFY_SEND_TIMEOUT)
                sock.connect(self._address)
                sock.sendall(message.encode())
            return True
        except OSError as exc:
            log.warning("cannot notify the service manager: %s", exc.strerror or exc)
            return False

    def ready(self, status: str) -> None:
        self.notify(f"READY=1\nSTATUS={status}\nMAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def reloading(self) -> None:
        """RELOADING=1: systemd waits for the next READY=1 (sd_notify(3))."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def reloaded(self, status: str) -> None:
        self.notify(f"READY=1\nSTATUS={status}")

    def stopping(self) -> None:
        self.notify("STOPPING=1\nSTATUS=Stopping")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None  # not for us (for example, inherited by a child)
    return usec


def listen_fds(environ: MutableMapping[str, str] | None = None) -> dict[str, int]:
    """Sockets passed by socket activation, by FileDescriptorName=; {} when none.

    Like sd_listen_fds(1): the variables are removed, so no child inherits them,
    and each fd gets close-on-exec. Unnamed fds are named "unknown", as systemd does.
    """
    env = os.environ if environ is None else environ
    pid, count = env.get("LISTEN_PID"), env.get("LISTEN_FDS")
    names = env.get("LISTEN_FDNAMES")
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(name, None)
    if not pid or not count or pid != str(os.getpid()):
        return {}
    try:
        n = int(count)
    except ValueError:
        return {}
    labels = names.split(":") if names else []
    fds: dict[str, int] = {}
    for index in range(n):
        fd = SD_LISTEN_FDS_START + index
        os.set_inheritable(fd, False)
        label = labels[index] if index < len(labels) and labels[index] else "unknown"
        fds.setdefault(label, fd)
    return fds


def pick_fd(fds: Mapping[str, int], name: str) -> int | None:
    """The fd named ``name``; a lone unnamed fd counts as the main one."""
    if name in fds:
        return fds[name]
    if name == "trackerd" and list(fds) == ["unknown"]:
        return fds["unknown"]
    return None


def make_non_dumpable() -> bool:
    """prctl(PR_SET_DUMPABLE, 0): no core dump, no ptrace by the same user. The salt
    lives in this process's memory and nowhere else."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0)
    return False
