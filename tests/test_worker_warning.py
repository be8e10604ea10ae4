"""A worker that cannot reach trackerd's socket says so: one WARNING a minute, with the cause."""

from __future__ import annotations

import errno
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from servertracker import Client, reachability
from servertracker.reachability import UnreachableWarning, cause
from tests.conftest import Daemon, run_as_nobody

SECRET_IP = "198.51.100.77"
SECRET_SENDER = "someone@secret-domain.example"


def test_one_warning_a_minute_after_the_grace() -> None:
    warn = UnreachableWarning(grace=3.0, interval=60.0)
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    quiet = [warn.failed(refused, "/run/trackerd/trackerd.sock", t) for t in (0.0, 1.0, 2.9)]
    assert quiet == [None, None, None]  # a restart takes less than the grace
    text = warn.failed(refused, "/run/trackerd/trackerd.sock", 3.0)
    assert text is not None and "/run/trackerd/trackerd.sock" in text and "stale socket" in text
    assert all(warn.failed(refused, "x", t) is None for t in (3.5, 30.0, 62.9))
    assert warn.failed(refused, "x", 63.0) is not None
    assert warn.succeeded() is True
    assert warn.succeeded() is False
    # Unreachable again soon after: still at most one warning a minute.
    assert all(warn.failed(refused, "x", t) is None for t in (70.0, 80.0, 122.9))
    assert warn.failed(refused, "x", 123.0) is not None


def test_causes_name_what_to_check() -> None:
    assert "is this user in trackerd's group?" in cause(PermissionError(errno.EACCES, "x"))
    assert "is trackerd running? is the socket path right?" in cause(
        FileNotFoundError(errno.ENOENT, "x")
    )
    assert "stale socket" in cause(ConnectionRefusedError(errno.ECONNREFUSED, "x"))


WORKER = textwrap.dedent(
    """
    import logging, sys, time
    import servertracker.reachability as reachability
    from servertracker import Client

    reachability.GRACE_SECONDS = 0.2  # the minute stays a minute; only the grace is shortened

    class Count(logging.Handler):
        failures = 0
        def emit(self, record):
            if record.levelno == logging.DEBUG and "cannot send" in record.getMessage():
                Count.failures += 1

    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(levelname)s %(message)s")
    logging.getLogger("servertracker").addHandler(Count())
    client = Client(sys.argv[1])
    deadline = time.monotonic() + 30
    while Count.failures < 6 and time.monotonic() < deadline:
        client.record_server(sys.argv[2], sys.argv[3])
        time.sleep(0.01)
    print(Count.failures, client.stats().sent)
    """
)


def run_worker(socket_path: Path) -> tuple[str, list[str]]:
    result = subprocess.run(
        [sys.executable, "-c", WORKER, str(socket_path), SECRET_IP, SECRET_SENDER],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    failures, sent = result.stdout.split()
    assert int(failures) >= 6 and sent == "0"
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    assert SECRET_IP not in result.stderr and "secret-domain" not in result.stderr
    return result.stderr, warnings


def test_a_worker_warns_once_when_there_is_no_socket(short_tmp: Path) -> None:
    path = short_tmp / "trackerd.sock"
    _, warnings = run_worker(path)
    assert len(warnings) == 1, warnings  # six failed connects, one warning
    assert str(path) in warnings[0]
    assert "is trackerd running? is the socket path right?" in warnings[0]


def test_a_worker_warns_once_about_a_stale_socket(short_tmp: Path) -> None:
    path = short_tmp / "trackerd.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # bound, never listening: what a crashed daemon leaves
    try:
        _, warnings = run_worker(path)
    finally:
        stale.close()
    assert len(warnings) == 1, warnings
    assert str(path) in warnings[0] and "stale socket" in warnings[0]


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a worker as another user")
def test_a_worker_outside_trackerd_s_group_warns_once(daemon: Daemon) -> None:
    # Traversable directories, so that the socket's own mode (0660) is what refuses.
    daemon.runtime_dir.chmod(0o755)
    daemon.runtime_dir.parent.chmod(0o755)

    def worker_as_nobody() -> int:
        # A forked worker (nobody cannot run this venv's interpreter under /root).
        reachability.GRACE_SECONDS = 0.2
        records: list[logging.LogRecord] = []
        handler = logging.Handler()
        handler.emit = records.append  # type: ignore[method-assign]
        logger = logging.getLogger("servertracker")
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        client = Client(daemon.socket_path)

        def failures() -> int:
            return sum("cannot send" in r.getMessage() for r in records)

        deadline = time.monotonic() + 30
        while failures() < 6 and time.monotonic() < deadline:
            client.record_server(SECRET_IP, SECRET_SENDER)
            time.sleep(0.01)
        warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
        texts = " ".join(r.getMessage() for r in records)
        if failures() < 6 or len(warnings) != 1 or SECRET_IP in texts:
            return 10 + len(warnings)
        ok = str(daemon.socket_path) in warnings[0]
        return 0 if ok and "is this user in trackerd's group?" in warnings[0] else 20

    assert run_as_nobody(worker_as_nobody) == 0
    assert daemon.status().records == 0
