"""Promises about time (caps, intervals, throttles), each checked without asserting speed.

A loaded machine only makes things later, so each test checks what holds on any
machine: a gap bounded below; a limit shortened in a real daemon (through
``Daemon(python_prelude=...)``) so that only that limit can end what the test
waits for, well inside a generous deadline; or the throttling logic driven by an
injected clock. Each also checks the constant against what the docs promise.
"""

from __future__ import annotations

import array
import itertools
import logging
import os
import re
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from servertracker import Client, protocol, reachability, read_status_file
from servertracker.errors import StatusFileError
from tests.conftest import Daemon, send_until_closed, wait_for
from trackerd.edges import status_writer, stream_server

#: Linux's SO_TIMESTAMPNS (asm-generic/socket.h), which the socket module does not name.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
TRACKERD = [sys.executable, "-m", "trackerd", "--log-level", "debug"]


def raw(daemon: Daemon) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(60)
    sock.connect(str(daemon.socket_path))
    return sock


def test_the_shutdown_drain_is_capped_at_3_seconds(make_daemon: Callable[..., Daemon]) -> None:
    """docs/architecture.md: at SIGTERM each connection is drained of what its client
    sent, until 50 ms pass without a byte, 3 s at most in all."""
    assert stream_server.DRAIN_DEADLINE == 3.0
    # Here a quiet connection would be drained for ten minutes: only the cap can end it.
    prelude = "import trackerd.edges.stream_server as s\ns.DRAIN_QUIET_TIME = 600.0"
    daemon = make_daemon(python_prelude=prelude, extra_args=["--status-interval", "3600"])
    daemon.start()
    assert daemon.process is not None
    with daemon.connect() as conn:
        conn.record([("192.0.2.1", "a@example.com")])
        conn.ping()
        conn.record([("192.0.2.2", "b@example.com")])  # sent, maybe not yet applied
        start = time.monotonic()
        daemon.process.send_signal(15)
        assert daemon.process.wait(60) == 0  # far less than the quiet time
        took = time.monotonic() - start
    assert took >= stream_server.DRAIN_DEADLINE  # it did drain, for the whole cap
    log = daemon.log()
    assert "1 connections still open at shutdown; closing them" in log
    assert read_status_file(daemon.runtime_dir).records == 2  # what was sent, applied


def test_a_reply_left_unread_closes_the_connection(make_daemon: Callable[..., Daemon]) -> None:
    """docs/protocol.md: a connection that leaves a reply unread for 10 s is closed."""
    assert stream_server.SEND_TIMEOUT == 10.0
    prelude = "import trackerd.edges.stream_server as s\ns.SEND_TIMEOUT = 1.0"
    daemon = make_daemon(python_prelude=prelude).start()
    greedy = raw(daemon)
    requests = protocol.encode(protocol.StatusRequest()) * 1000
    closed = send_until_closed(greedy, requests)
    greedy.close()
    assert closed, "the daemon never gave up on a peer that does not read"
    assert "closing a connection that did not read its reply within 1s" in daemon.log()
    assert daemon.status().records == 0  # everyone else is still served


def timeouts(daemon: Daemon) -> int:
    health = daemon.status().health
    assert health is not None
    return health.connection_timeouts


def test_peers_that_leave_replies_unread_are_logged_throttled_and_each_counted(
    make_daemon: Callable[..., Daemon],
) -> None:
    """One line per UNREAD_LOG_INTERVAL at most, the next saying how many came since:
    peers that never read cannot flood the log, and every one is a timeout."""
    prelude = (
        "import trackerd.edges.stream_server as s\n"
        "s.SEND_TIMEOUT = 1.0\ns.UNREAD_LOG_INTERVAL = 5.0\n"
    )
    daemon = make_daemon(python_prelude=prelude).start()
    line = re.compile(r"did not read its reply within 1s(?: \((\d+) more since\))?$", re.M)
    requests = protocol.encode(protocol.StatusRequest()) * 1000
    peers = 0
    # Each peer takes a SEND_TIMEOUT (1 s) to be closed: peers come until the
    # interval (5 s) lets a second line through, which counts those between.
    while len(line.findall(daemon.log())) < 2:
        assert peers < 60, "no second line: the log is not throttled by time"
        greedy = raw(daemon)
        assert send_until_closed(greedy, requests)
        greedy.close()
        peers += 1
        assert timeouts(daemon) == peers
    first, second = line.findall(daemon.log())
    assert first == "" and second, "the second line says how many came since the first"
    assert int(second) >= 1  # the peers between the two lines were not logged
    assert 1 + int(second) + 1 == peers  # ... and each of them is in the count


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to make a directory another user owns")
def test_a_private_dir_another_user_made_meanwhile_is_refused(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    """docs/architecture.md: after the runtime directory is removed, a private /tmp
    directory that another user has made in the meantime is refused, as at start."""
    private = short_tmp / "private"
    # /tmp/trackerd-<uid> itself is shared by every test run on this machine:
    # this daemon takes the test's directory for its private one.
    prelude = (
        "import pathlib, servertracker.paths as p\n"
        f"p.default_private_dir = lambda uid=None: pathlib.Path({str(private)!r})"
    )
    daemon = make_daemon("private", python_prelude=prelude).start()
    assert stat.S_IMODE(private.stat().st_mode) == 0o700  # taken as the private directory
    foreign = short_tmp / "foreign"
    foreign.mkdir(mode=0o700)
    os.chown(foreign, 65534, 65534)

    def swapped() -> bool:
        # Away with ours, in with theirs; should upkeep make it again in between, again.
        private.rename(short_tmp / f"old-{time.monotonic_ns()}")
        try:
            foreign.rename(private)
            return True
        except OSError:
            return False

    with daemon.connect() as conn:
        conn.record([("192.0.2.1", "a@example.com")])
        conn.ping()
        wait_for(swapped, what="the directory to be swapped")
        wait_for(
            lambda: "is not private to this user (owner uid 65534" in daemon.log(),
            what="the refusal in the log",
        )
        conn.record([("192.0.2.2", "b@example.com")])  # counting goes on
        assert conn.status().unique_conn_ips == 2
        # Nothing of ours goes into their directory: no socket, no status file.
        wait_for(
            lambda: "cannot write the status file" in daemon.log(), what="the writer's refusal"
        )
        assert list(private.iterdir()) == []
        # Their directory gone, ours comes back, with everything counted.
        private.rmdir()
        daemon.wait_ready()
        assert stat.S_IMODE(private.stat().st_mode) == 0o700 and private.stat().st_uid == 0
        wait_for(lambda: _file_counts(private) == 2, what="the status file, written again")


def _file_counts(runtime_dir: Path) -> int | None:
    try:
        return read_status_file(runtime_dir).unique_conn_ips
    except StatusFileError:
        return None


def test_the_status_file_is_written_at_most_4_times_a_second(daemon: Daemon) -> None:
    """README.md: rewritten at most 4 times a second while counts change. Each file
    carries the time of its snapshot; missed writes only widen the gaps seen."""
    assert status_writer.STATUS_INTERVAL == 0.25
    stop = threading.Event()

    def keep_counting() -> None:
        with daemon.connect() as conn:
            n = 0
            while not stop.is_set():
                n += 1
                conn.record([(f"10.0.{n // 256 % 256}.{n % 256}", "a@example.com")])
                stop.wait(0.002)

    times: set[float] = set()

    def seen_enough() -> bool:
        status = read_status_file(daemon.runtime_dir)
        if status.records:  # the file written at start is not one of these
            times.add(status.updated_time)
        return len(times) >= 8

    counting = threading.Thread(target=keep_counting)
    counting.start()
    try:
        wait_for(seen_enough, 60, "eight status file writes")
    finally:
        stop.set()
        counting.join()
    ordered = sorted(times)
    gaps = [b - a for a, b in itertools.pairwise(ordered)]
    assert min(gaps) >= status_writer.STATUS_INTERVAL - 0.001, gaps


def test_the_drop_warning_comes_at_most_once_a_minute() -> None:
    """README.md: past the queue bound records are dropped, counted, and a warning is
    logged at most once a minute, with the count so far. The flusher thread asks
    DropWarning, with its clock, whenever it runs; the test's clock here."""
    assert reachability.DROP_WARNING_INTERVAL == 60.0
    warning = reachability.DropWarning()
    assert not warning.due(0, 1000.0)  # nothing dropped: nothing to say
    assert warning.due(1, 1000.0)  # the first drop: at once
    assert not warning.due(5, 1030.0)
    assert not warning.due(6, 1059.9)
    assert warning.due(9, 1060.0)  # a minute after the first: the second, count so far
    assert not warning.due(9, 1200.0)  # nothing new dropped: quiet however long after
    assert warning.due(10, 1200.5)


def test_a_drop_is_logged_by_the_flusher_never_in_the_recording_thread(
    short_tmp: Path,
) -> None:
    """record_server() never blocks: a log handler that blocks (a full pipe, a stalled
    syslog) holds up the background thread's warning, never the caller. If the
    caller logged, its first drop would wait in emit() below."""
    release = threading.Event()
    warnings: list[tuple[str, str]] = []

    class Blocking(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "records dropped" in record.getMessage():
                warnings.append((threading.current_thread().name, record.getMessage()))
                release.wait(30)

    handler = Blocking()
    logger = logging.getLogger("servertracker")
    logger.addHandler(handler)
    client = Client(short_tmp / "nobody-home.sock", max_buffered=10)
    try:
        for i in range(1000):
            client.record_server(f"192.0.2.{i % 250}", "a@example.com")
        assert client.stats().dropped == 990
        wait_for(lambda: warnings, 30, "the drop warning")
        name, text = warnings[0]
        assert name == "servertracker-flusher", warnings
        assert "990 records dropped so far: the queue of 10 was full" in text
        assert "192.0.2" not in text and "example.com" not in text  # no recorded value
    finally:
        release.set()
        logger.removeHandler(handler)
        client.close(timeout=0.1)


class TimestampedNotifications:
    """A stand-in for systemd's notification socket that notes when each datagram
    arrived, by the kernel's clock (SO_TIMESTAMPNS): when the test reads it does not
    matter, so the gaps measured are the daemon's own."""

    def __init__(self, path: Path) -> None:
        self.address = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.bind(self.address)
        self.sock.settimeout(0.2)
        self.received: list[tuple[float, str]] = []

    def collect(self) -> list[tuple[float, str]]:
        space = socket.CMSG_SPACE(struct.calcsize("qq"))
        try:
            while True:
                data, ancillary, _, _ = self.sock.recvmsg(4096, space)
                for level, kind, raw_time in ancillary:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                        seconds, nanoseconds = array.array("q", raw_time)
                        self.received.append((seconds + nanoseconds / 1e9, data.decode()))
        except TimeoutError:
            pass
        return self.received


def test_watchdog_pings_at_half_of_watchdog_sec(short_tmp: Path) -> None:
    """docs/install.md: with WatchdogSec=30s trackerd pings every 15 s. Pings never come
    sooner than half the timeout; and, as systemd needs, come before the timeout."""
    notifications = TimestampedNotifications(short_tmp / "notify")
    watchdog_sec = 1.0
    env = dict(
        os.environ,
        NOTIFY_SOCKET=notifications.address,
        WATCHDOG_USEC=str(int(watchdog_sec * 1_000_000)),
    )
    process = subprocess.Popen(
        [*TRACKERD, "--runtime-dir", str(short_tmp / "rt")], env=env, stderr=subprocess.DEVNULL
    )

    def pings() -> list[float]:
        return [when for when, text in notifications.collect() if text == "WATCHDOG=1"]

    try:
        times = wait_for(lambda: len(p := pings()) >= 5 and p, 60, "five WATCHDOG=1 pings")
    finally:
        process.terminate()
        process.wait(30)
        notifications.sock.close()
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= watchdog_sec / 2 - 0.005, gaps  # not sooner than half
    # Not later than the timeout: the smallest of four gaps, so a loaded moment or
    # two cannot fail it; a daemon pinging at the full timeout would.
    assert min(gaps) < watchdog_sec, gaps
