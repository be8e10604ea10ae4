"""The metrics text file for node_exporter's textfile collector (--metrics-textfile).

Written at each status write, atomically as the status file: a temp file beside
it (node_exporter reads only ``*.prom``, so the temp name ends otherwise), fsync,
rename. Mode 0644: node_exporter runs as another user, and the file holds only
counts. A failure is logged once per outage and never stops the status file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from pathlib import Path

from servertracker import exposition
from servertracker.status import Status
from trackerd import __version__

log = logging.getLogger(__name__)

TEXTFILE_MODE = 0o644


def write_textfile(path: Path, data: bytes) -> None:
    """Write data to path atomically. Raises OSError."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, TEXTFILE_MODE)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), TEXTFILE_MODE)  # whatever the umask
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


class MetricsTextfile:
    """Renders a status and writes it to one path; counts and logs failures."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.failures = 0
        self._failing = False

    def write(self, status: Status, *, live: bool = True) -> None:
        """Called in the status writer's worker thread, after the status file.

        live=False at a clean stop: the last numbers stay, marked source="file" as
        the status file's are, since node_exporter serves the file whether or not
        trackerd runs (docs/monitoring.md).
        """
        source: exposition.Source = "live" if live else "file"
        try:
            write_textfile(self.path, exposition.render(status, source=source, version=__version__))
        except OSError as exc:
            self.failures += 1
            if not self._failing:
                log.error(
                    "cannot write the metrics text file %s: %s; will retry at the next write",
                    self.path,
                    exc.strerror or exc,
                )
            self._failing = True
            return
        if self._failing:
            log.warning("metrics text file written again after %d failures", self.failures)
            self._failing = False
