"""The library's logger, and how its lines read when the application logs nothing.

Messages carry no "servertracker:" prefix: the logger's name says who speaks, in
whatever format the application gives its own handlers ("%(name)s %(levelname)s
%(message)s" gives "servertracker WARNING cannot reach trackerd at ...", not the
name twice). An application that set up no handler at all would get Python's last
resort, which prints the bare message with no hint of its source; for that case
only, a handler on this library's own logger writes Postfix's way instead:
"servertracker: warning: cannot reach trackerd at ...". It stands aside whenever
any other handler would see the record (or the application turned the last resort
off), so an application's logging configuration is never doubled nor overridden;
the root logger is never touched.
"""

from __future__ import annotations

import logging
import sys

NAME = "servertracker"


class _LastResort(logging.Handler):
    """Python's last resort, with the logger's name and the level in lower case."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        if logging.lastResort is None or _others_would_handle(record, self):
            return
        stream = sys.stderr
        if stream is None:  # pythonw, or a daemonised worker that closed it
            return
        try:
            stream.write(f"{record.name}: {record.levelname.lower()}: {self.format(record)}\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def _others_would_handle(record: logging.LogRecord, mine: logging.Handler) -> bool:
    """Whether a handler other than mine is on the record's way up (the walk
    Logger.callHandlers makes before it falls back on the last resort)."""
    logger: logging.Logger | None = logging.getLogger(record.name)
    while logger is not None:
        if any(handler is not mine for handler in logger.handlers):
            return True
        if not logger.propagate:
            return False
        logger = logger.parent
    return False


log = logging.getLogger(NAME)
log.addHandler(_LastResort())
