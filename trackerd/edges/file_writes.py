"""How trackerd writes a file that others read (the status file, the metrics text file):
atomically, and with its failures logged once per outage.

A write goes to a temp file beside the target, is fsynced and renamed over it, so
a reader sees the old file or the new one, never a part. A failing write is
logged at the first failure of an outage and again when a write succeeds, never
once per attempt: a full disk must not fill the journal too.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path


def write_atomically(
    path: str | Path, temp: str | Path, data: bytes, mode: int, *, dir_fd: int | None = None
) -> None:
    """Write data to path by way of temp (a new name in the same directory), with this
    mode whatever the umask; both relative to dir_fd if given. Raises OSError."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, mode, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=dir_fd)
        raise


class FailureLog:
    """Counts one writer's failures and logs each outage twice: at its first failure
    (ERROR) and at the first success after it (WARNING)."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self._log = log
        #: What is written, for the recovery line ("status file").
        self._what = what
        self.failures = 0
        self._failing = False

    def failed(self, message: str, *args: object) -> None:
        """A write failed; message (with %-args) is logged if it starts an outage."""
        self.failures += 1
        if not self._failing:
            self._log.error(message, *args)
        self._failing = True

    def succeeded(self) -> None:
        if self._failing:
            self._log.warning("%s written again after %d failures", self._what, self.failures)
            self._failing = False
