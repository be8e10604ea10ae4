"""One listener of the daemon: its name, its server, and the socket it listens on.

An Endpoint ties the three together (no lists matched by index), opens its
socket (the one systemd passed under its name, else its own file), binds that
file again when upkeep finds it removed, and closes every socket it ever had.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from trackerd.edges.socket_files import OpenSocket, SocketFileSettings, adopt_listening_socket
from trackerd.edges.stream_server import StreamServer
from trackerd.edges.systemd import pick_fd

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ListenerSettings:
    """Where one listener listens when systemd passes no socket named ``name``."""

    #: systemd's FileDescriptorName= for this listener.
    name: str
    path: Path | None
    file: SocketFileSettings = field(default_factory=SocketFileSettings)

    def open(self, passed: dict[str, int]) -> OpenSocket:
        """The socket systemd passed under this name, else our own file at path."""
        fd = pick_fd(passed, self.name)
        if fd is not None:
            sock = adopt_listening_socket(fd)
            if self.file != SocketFileSettings():
                log.warning(
                    "the %s socket was passed by systemd: its owner, group and mode are the "
                    "socket unit's (SocketUser=, SocketGroup=, SocketMode=), not the options'",
                    self.name,
                )
            return OpenSocket(
                sock, f"a socket passed by systemd ({sock.getsockname() or self.name})"
            )
        if self.path is None:
            raise ValueError(f"no socket passed for {self.name} and no path to bind")
        return OpenSocket.bind(self.path, self.file)


@dataclass
class Endpoint:
    name: str
    server: StreamServer
    socket: OpenSocket
    #: Sockets this endpoint had before upkeep bound its file again; closed at exit.
    _retired: list[OpenSocket] = field(default_factory=list)

    @property
    def rebindable(self) -> bool:
        """True while the socket file is the daemon's own (not passed, not taken over)."""
        return self.socket.path is not None

    def rebind(self) -> OpenSocket:
        """Bind the socket file again at its path, with the same settings; return the new one."""
        old = self.socket
        assert old.path is not None
        self.socket = OpenSocket.bind(old.path, old.settings)
        old.path = None  # the file is the new socket's now: the old one must not remove it
        self._retired.append(old)
        return self.socket

    def close(self) -> None:
        for opened in (*self._retired, self.socket):
            opened.close()
