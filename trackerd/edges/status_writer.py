"""The status file: atomic writes, rate-limited, retried after failures.

A write goes to a temp file in the same directory and is renamed over
server_tracker.json, so a reader sees the old file or the new one, never a
part. Writes happen at start, a few times a second at most while counts change,
and at shutdown; they run in a worker thread so a slow disk never stalls serving.
With sliding windows, counts also change while nothing arrives (values age
out), so the writer looks again every second and writes when a count moved,
and at least once a minute anyway (updated_time then shows the daemon alive).
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import anyio

from servertracker.status import STATUS_FILE_NAME, Health, Status, encode_status_file
from trackerd.core.tracker import Tracker
from trackerd.edges.file_writes import FailureLog, write_atomically
from trackerd.edges.metrics_textfile import MetricsTextfile
from trackerd.edges.socket_files import not_private
from trackerd.option_types import Arguments, seconds_between

log = logging.getLogger(__name__)

STATUS_FILE_MODE = 0o640
#: Least time between two writes while counts change (--status-interval), in seconds.
STATUS_INTERVAL = 0.25
_TEMP_PREFIX = f".{STATUS_FILE_NAME}."
_TEMP_SUFFIX = ".tmp"
#: How often counts are looked at while nothing arrives (windows age out meanwhile).
WINDOW_REFRESH_INTERVAL = 1.0
#: The status (and metrics) file is rewritten at least this often, so that its
#: updated_time shows the daemon alive even when no count moves.
MAX_STATUS_AGE = 60.0


def write_status_file(runtime_dir: Path, status: Status) -> None:
    """Write the status file atomically with mode 0640. Raises OSError.

    The directory is opened once, checked through that handle, and the file made
    and renamed relative to it: should the runtime directory be removed and a
    private /tmp one be made by another user meanwhile, no file goes into theirs.
    """
    dir_fd = os.open(runtime_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        problem = not_private(runtime_dir, os.fstat(dir_fd))
        if problem is not None:
            raise PermissionError(errno.EPERM, problem)
        temp_name = f"{_TEMP_PREFIX}{secrets.token_hex(8)}{_TEMP_SUFFIX}"
        data = encode_status_file(status)
        write_atomically(STATUS_FILE_NAME, temp_name, data, STATUS_FILE_MODE, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def remove_leftover_temp_files(runtime_dir: Path) -> int:
    """Remove temp files a crashed daemon left behind; returns how many."""
    removed = 0
    for path in runtime_dir.glob(f"{_TEMP_PREFIX}*{_TEMP_SUFFIX}"):
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed


class StatusWriter:
    """Writes the tracker's status whenever it changed, at most every min_interval seconds."""

    def __init__(
        self,
        tracker: Tracker,
        runtime_dir: Path,
        *,
        min_interval: float = STATUS_INTERVAL,
        retry_interval: float = 2.0,
    ) -> None:
        self._tracker = tracker
        self._runtime_dir = runtime_dir
        self._min_interval = min_interval
        self._retry_interval = retry_interval
        self._changed = anyio.Event()
        self._lock = anyio.Lock()
        self._failures = FailureLog(log, "status file")
        self._last_written: Status | None = None
        self.writes = 0
        #: The daemon's health counters, added to each snapshot (set by main).
        self.health: Callable[[], Health] | None = None
        #: --metrics-textfile: rewritten after each status write.
        self.textfile: MetricsTextfile | None = None
        #: Set before the final write at a clean stop: the text file no longer says live.
        self.stopping = False
        #: Awaited before each snapshot: the policy listener counts the requests it
        #: answered, so a status reply or file reflects them (policy_loop.py).
        self.before_snapshot: list[Callable[[], Awaitable[None]]] = []

    @classmethod
    def add_arguments(cls, arguments: Arguments) -> None:
        arguments.add_argument(
            "--status-interval",
            type=seconds_between(0.01, 3600),
            default=STATUS_INTERVAL,
            metavar="SECONDS",
            help="least time between two status file writes (default: %(default)s)",
        )
        arguments.add_argument(
            "--metrics-textfile",
            type=Path,
            metavar="PATH",
            help=(
                "also write the Prometheus text exposition here at each status write, for "
                "node_exporter's textfile collector (a *.prom path in its "
                "--collector.textfile.directory; see docs/monitoring.md). Off by default"
            ),
        )

    @property
    def failures(self) -> int:
        """Failed writes since the start."""
        return self._failures.failures

    async def snapshot(self) -> Status:
        """The tracker's status with the daemon's health: what the status reply, the
        status file and the metrics show."""
        for settle in self.before_snapshot:
            await settle()
        status = self._tracker.status()
        return status if self.health is None else replace(status, health=self.health())

    def notify_changed(self) -> None:
        """Cheap enough to call after every message."""
        self._changed.set()

    async def write_now(self, *, only_if_changed: bool = False) -> bool:
        """Write the current status; on failure log (once per outage) and return False.

        ``only_if_changed``: skip the write when no count differs from the last one
        written (the time of the snapshot aside).
        """
        async with self._lock:
            status = await self.snapshot()
            if only_if_changed and _same_counts(status, self._last_written):
                return True
            try:
                await anyio.to_thread.run_sync(self._write_files, status)
            except OSError as exc:
                self._failures.failed(
                    "cannot write the status file in %s: %s; still counting, will retry",
                    self._runtime_dir,
                    exc.strerror or exc,
                )
                return False
            self._failures.succeeded()
            self._last_written = status
            self.writes += 1
            return True

    def _write_files(self, status: Status) -> None:
        write_status_file(self._runtime_dir, status)
        if self.textfile is not None:
            # After the status write: a failed status write shows in its metrics next time.
            self.textfile.write(status, live=not self.stopping)

    async def run(self) -> None:
        """Loop forever: wait for a change, write, pause. Cancel to stop."""
        refresh = WINDOW_REFRESH_INTERVAL
        while True:
            with anyio.move_on_after(refresh) as quiet:
                await self._changed.wait()
            if quiet.cancelled_caught:
                if not await self.write_now(only_if_changed=True):
                    self._changed.set()
                    await anyio.sleep(self._retry_interval)
                continue
            self._changed = anyio.Event()
            if await self.write_now():
                await anyio.sleep(self._min_interval)
            else:
                self._changed.set()  # still dirty: try again after the pause
                await anyio.sleep(self._retry_interval)


def _same_counts(status: Status, last: Status | None) -> bool:
    """Whether nothing but the time and the health counters moved (the write
    counters move at every write)."""
    if last is None or status.updated_time - last.updated_time >= MAX_STATUS_AGE:
        return False
    return replace(last, updated_time=0, health=None) == replace(
        status, updated_time=0, health=None
    )
