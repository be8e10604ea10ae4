"""Puts back the runtime directory and the daemon's socket files when they are removed.

A /tmp cleaner, logind at logout ($XDG_RUNTIME_DIR) or an admin's rm can take the
runtime directory, and the socket file with it. The daemon would go on counting
for the workers already connected, while no new client could reach it and the
status file could not be written. Every few seconds this checks, and makes again:

- the runtime directory, with its usual mode; only its last component, since a
  missing parent is not ours to create;
- the lock file in it, locked again (another daemon could otherwise start there);
- each socket file the daemon bound itself, served by the same server as before.
  A socket that systemd passed is systemd's to manage, and a path someone else
  has taken since is left alone.

Connections made before keep working throughout: they do not need the file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
from anyio.abc import SocketListener, TaskGroup

from trackerd.edges.endpoint import Endpoint
from trackerd.edges.socket_files import RuntimeDirLock, remake_runtime_dir
from trackerd.edges.status_writer import StatusWriter
from trackerd.errors import StartupError

log = logging.getLogger(__name__)

#: Seconds between two checks: a stat() or two, so cheap enough to do often.
CHECK_INTERVAL = 2.0


class Upkeep:
    def __init__(
        self,
        runtime_dir: Path,
        lock: RuntimeDirLock,
        writer: StatusWriter,
        endpoints: list[Endpoint],
    ) -> None:
        self._runtime_dir = runtime_dir
        self._lock = lock
        self._writer = writer
        self._endpoints = endpoints
        self._trouble: str | None = None

    async def run(self, serving: TaskGroup, interval: float = CHECK_INTERVAL) -> None:
        """Check every interval seconds; new listeners are served in serving. Cancel to stop."""
        while True:
            await anyio.sleep(interval)
            try:
                await self.check(serving)
            except (OSError, StartupError) as exc:
                text = str(exc) if isinstance(exc, StartupError) else exc.strerror or str(exc)
                if text != self._trouble:  # each problem logged once, not every interval
                    log.error("cannot put the runtime files back: %s; will keep trying", text)
                    self._trouble = text
                continue
            if self._trouble is not None:
                log.warning("runtime files back in place")
                self._trouble = None

    async def check(self, serving: TaskGroup) -> None:
        if remake_runtime_dir(self._runtime_dir):
            log.warning("runtime directory %s was removed; made it again", self._runtime_dir)
            self._writer.notify_changed()  # the status file went with it
        if not self._lock.held():
            self._lock.acquire()
            log.warning("lock file %s was removed; locked it again", self._lock.path)
        for endpoint in self._endpoints:
            # Only what the daemon bound itself can be made again.
            if not endpoint.rebindable or endpoint.server.stopping:
                continue
            opened = endpoint.socket
            state = opened.file_state()
            if state == "replaced":
                log.warning("%s is no longer our socket; leaving it alone", opened.path)
                opened.path = None  # nor will it be removed at exit
            elif state == "missing":
                again = endpoint.rebind()
                listener = await SocketListener.from_socket(again.sock)
                serving.start_soon(endpoint.server.serve, listener)
                log.warning("socket file %s was removed; listening on it again", again.path)
