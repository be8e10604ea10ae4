"""The metrics text file for node_exporter's textfile collector (--metrics-textfile).

Written at each status write, atomically as the status file: a temp file beside
it (node_exporter reads only ``*.prom``, so the temp name ends otherwise), fsync,
rename. Mode 0644: node_exporter runs as another user, and the file holds only
counts. A failure is logged once per outage and never stops the status file.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

from servertracker import exposition
from servertracker.status import Status
from trackerd import __version__
from trackerd.edges.file_writes import FailureLog, write_atomically

log = logging.getLogger(__name__)

TEXTFILE_MODE = 0o644


def write_textfile(path: Path, data: bytes) -> None:
    """Write data to path atomically. Raises OSError."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    write_atomically(path, temp, data, TEXTFILE_MODE)


class MetricsTextfile:
    """Renders a status and writes it to one path; counts and logs failures."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._failures = FailureLog(log, "metrics text file")

    @property
    def failures(self) -> int:
        return self._failures.failures

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
            self._failures.failed(
                "cannot write the metrics text file %s: %s; will retry at the next write",
                self.path,
                exc.strerror or exc,
            )
            return
        self._failures.succeeded()
