"""A worker that cannot reach trackerd's socket says so: one WARNING a minute, with the cause."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import servertracker.value_tables  # noqa: F401  (see below)
from servertracker import Client, reachability
from servertracker.reachability import UnreachableWarning, cause
from tests.conftest import Daemon, run_as_nobody, wait_for
from tests.test_hostile import open_up

# A Client that asks for tables loads value_tables.py (and the standard library
# modules it imports), which a worker forked and turned into nobody could not read
# here, under /root: loaded above, before any fork, should a test ask for them.

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


def test_a_worker_warns_once_about_a_path_that_is_no_socket(short_tmp: Path) -> None:
    """A file or a directory at the socket path used to be called "a stale socket
    file" (connect() says refused): the path is wrong, not the daemon."""
    a_file = short_tmp / "a-file"
    a_file.write_text("")
    for path, kind in [(a_file, "a file"), (short_tmp, "a directory")]:
        _, warnings = run_worker(path)
        assert len(warnings) == 1, warnings
        assert str(path) in warnings[0], warnings
        assert f"the path is {kind}, not a socket (is the socket path right?)" in warnings[0]


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


def capture_library_log() -> list[logging.LogRecord]:
    """In a forked worker: every record the library logs, from DEBUG up, with the
    warning's grace cut to 0.2 s."""
    reachability.GRACE_SECONDS = 0.2
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("servertracker")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    return records


def failed_sends(records: list[logging.LogRecord]) -> int:
    """How many sends (connects included) the library logged as failed."""
    return sum("cannot send" in r.getMessage() for r in records)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a worker as another user")
def test_a_worker_outside_trackerd_s_group_warns_once(daemon: Daemon) -> None:
    # Traversable directories, so that the socket's own mode (0660) is what refuses.
    daemon.runtime_dir.chmod(0o755)
    daemon.runtime_dir.parent.chmod(0o755)

    def worker_as_nobody() -> int:
        # A forked worker (nobody cannot run this venv's interpreter under /root).
        records = capture_library_log()
        client = Client(daemon.socket_path)

        def failures() -> int:
            return failed_sends(records)

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


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a worker as another user")
def test_a_worker_kept_out_by_a_private_runtime_dir_names_the_directory(daemon: Daemon) -> None:
    """Another user's private runtime directory (0700) refuses this user before the
    socket's mode does: the warning used to ask "is this user in trackerd's group?",
    which would not help. It names the directory, its owner and its mode."""
    daemon.runtime_dir.chmod(0o700)
    daemon.runtime_dir.parent.chmod(0o755)
    owner = "(owner root, group root, mode 0700)"

    def worker_as_nobody() -> int:
        records = capture_library_log()
        client = Client(daemon.socket_path)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(
            r.levelno == logging.WARNING for r in records
        ):
            client.record_server(SECRET_IP, SECRET_SENDER)
            time.sleep(0.01)
        warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
        if len(warnings) != 1:
            return 10 + len(warnings)
        named = f"may not enter the directory {daemon.runtime_dir} {owner}" in warnings[0]
        return 0 if named and "trackerd's group" not in warnings[0] else 20

    assert run_as_nobody(worker_as_nobody) == 0


def test_causes_name_a_closed_directory_not_the_group() -> None:
    closed = "the directory /tmp/trackerd-65534 (owner nobody, group nogroup, mode 0700)"
    text = cause(PermissionError(errno.EACCES, "x"), None, closed)
    assert f"may not enter {closed}" in text and "group?" not in text


def test_causes_name_the_daemon_s_refusals() -> None:
    assert "not in trackerd's allow-lists" in cause(reachability.Refused("forbidden"))
    assert "busy" in cause(reachability.Refused("busy"))


def refused_worker(socket_path: Path, exit_flush: bool) -> int:
    """As nobody, in a forked worker: record until six connects failed, or (exit_flush)
    record one and close as at exit. Returns 100 + failed connects + 1000 * warnings
    naming the allow-lists, or a small code for anything else."""
    records = capture_library_log()
    client = Client(socket_path)

    def failures() -> int:
        return failed_sends(records)

    if exit_flush:
        client.record_server(SECRET_IP, SECRET_SENDER)
        client.close(1.0)  # what the atexit hook does, with its 1 s
    else:
        deadline = time.monotonic() + 30
        while failures() < 6 and time.monotonic() < deadline:
            client.record_server(SECRET_IP, SECRET_SENDER)
            time.sleep(0.01)
    texts = " ".join(r.getMessage() for r in records)
    if SECRET_IP in texts or client.stats().sent != 0:
        return 2
    warnings = [
        r.getMessage()
        for r in records
        if r.levelno == logging.WARNING
        and str(socket_path) in r.getMessage()
        and "this user or group is not in trackerd's allow-lists" in r.getMessage()
    ]
    return min(100 + failures() + 1000 * len(warnings), 255 * 255)


def nobody_result(socket_path: Path, exit_flush: bool) -> tuple[int, int]:
    """(warnings, failed connects) of refused_worker, run as nobody; exit codes are a
    byte, so the numbers travel in a file."""
    out = socket_path.parent / "result"
    out.touch()
    os.chown(out, 65534, 65534)

    def worker() -> int:
        out.write_text(str(refused_worker(socket_path, exit_flush)))
        return 0

    assert run_as_nobody(worker) == 0
    value = int(out.read_text())
    assert value >= 100, value
    return divmod(value - 100, 1000)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a worker as another user")
def test_a_worker_refused_by_the_allow_lists_warns_once(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon(extra_args=["--allow-uid", "12345"]).start()
    open_up(daemon)
    warnings, failures = nobody_result(daemon.socket_path, exit_flush=False)
    assert failures >= 6 and warnings == 1
    assert daemon.status().records == 0


EXITING_WORKER = textwrap.dedent(
    """
    import logging, sys
    from servertracker import Client

    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(levelname)s %(message)s")
    client = Client(sys.argv[1], exit_timeout=1.0)
    client.record_server(sys.argv[2], sys.argv[3])
    """
)

#: With the backoff (0.05 s, doubling to 1 s), a 1 s exit flush tries a handful of
#: times on any machine; without it, it spun hundreds of times.
MAX_EXIT_ATTEMPTS = 10


def exit_flush_attempts(socket_path: Path) -> int:
    result = subprocess.run(
        [sys.executable, "-c", EXITING_WORKER, str(socket_path), SECRET_IP, SECRET_SENDER],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return sum("cannot send" in line for line in result.stderr.splitlines())


def test_the_exit_flush_keeps_the_backoff_without_a_socket(short_tmp: Path) -> None:
    attempts = exit_flush_attempts(short_tmp / "trackerd.sock")
    assert 1 <= attempts <= MAX_EXIT_ATTEMPTS


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a worker as another user")
def test_the_exit_flush_keeps_the_backoff_against_a_refusing_daemon(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon(extra_args=["--allow-uid", "12345"]).start()
    open_up(daemon)
    _, attempts = nobody_result(daemon.socket_path, exit_flush=True)
    assert 1 <= attempts <= MAX_EXIT_ATTEMPTS


LOGGING_WORKER = textwrap.dedent(
    """
    import io, json, logging, sys, time
    import servertracker.reachability as reachability
    from servertracker import Client

    reachability.GRACE_SECONDS = 0.2
    captured = sys.stderr = io.StringIO()  # the last resort writes to sys.stderr as it is
    mode = sys.argv[2]
    if mode == "app-format":
        logging.basicConfig(format="%(name)s %(levelname)s %(message)s")
    elif mode == "no-last-resort":
        logging.lastResort = None
    elif mode == "own-handler":
        handler = logging.StreamHandler(captured)
        handler.setFormatter(logging.Formatter("mine: %(message)s"))
        library = logging.getLogger("servertracker")
        library.addHandler(handler)
        library.propagate = False

    warnings = []
    def seen(record):  # a filter: it sees each record, and is no handler
        if record.levelno == logging.WARNING:
            warnings.append(record)
        return True
    logging.getLogger("servertracker").addFilter(seen)

    client = Client(sys.argv[1])
    deadline = time.monotonic() + 30
    while not warnings and time.monotonic() < deadline:
        client.record_server("198.51.100.77", "someone@secret-domain.example")
        time.sleep(0.01)
    root = logging.getLogger()
    print(json.dumps({
        "warnings": len(warnings),
        "stderr": captured.getvalue(),
        "root_handlers": len(root.handlers) - (mode == "app-format"),
        "root_level": root.level,
        "library_level": logging.getLogger("servertracker").level,
    }))
    """
)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        # No logging set up: Postfix's "program: warning: text", not the bare text.
        ("unconfigured", "servertracker: warning: cannot reach trackerd at {path} for "),
        # The application's format, applied once; the name is not repeated.
        ("app-format", "servertracker WARNING cannot reach trackerd at {path} for "),
        # The application turned the last resort off: nothing.
        ("no-last-resort", None),
        # The application's handler on the library's logger alone.
        ("own-handler", "mine: cannot reach trackerd at {path} for "),
    ],
)
def test_the_warning_reads_cleanly_and_leaves_the_application_s_logging_alone(
    short_tmp: Path, mode: str, expected: str | None
) -> None:
    path = short_tmp / "trackerd.sock"
    result = subprocess.run(
        [sys.executable, "-c", LOGGING_WORKER, str(path), mode],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["warnings"] == 1
    lines = report["stderr"].splitlines()
    if expected is None:
        assert lines == []
    else:
        assert len(lines) == 1, lines
        assert lines[0].startswith(expected.format(path=path)), lines
        assert lines[0].endswith("; records are queued, then dropped when the queue is full")
    # A library sets up no handler and no level outside its own logger, nor a level on it.
    assert (report["root_handlers"], report["root_level"]) == (0, logging.WARNING)
    assert report["library_level"] == logging.NOTSET
    assert "198.51.100.77" not in result.stdout + result.stderr


class DropLines(logging.Handler):
    """The drop warnings the library logs, as the operator reads them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "records dropped" in record.getMessage():
            self.lines.append(record.getMessage())


@pytest.fixture
def drop_lines() -> Iterator[DropLines]:
    handler = DropLines()
    logger = logging.getLogger("servertracker")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def first_line(handler: DropLines) -> str:
    return wait_for(lambda: handler.lines, 30, "the drop warning")[0]


def test_a_drop_past_the_long_value_budget_names_that_budget(
    daemon: Daemon, drop_lines: DropLines
) -> None:
    """Case A of the review: trackerd is up and idle, yet long values are dropped by
    the worker's own budget. The warning says so, and does not blame trackerd."""
    client = Client(daemon.socket_path, max_long_chars=1000, flush_interval=5.0)
    try:
        for i in range(4):  # each cut to 513 characters: only the first fits in 1000
            client.record_server(SECRET_IP, f"{i}{SECRET_SENDER}" + "x" * 600)
        assert client.stats().dropped == 3
        assert client.flush(30)  # wakes the flusher, which warns before it sends
        text = first_line(drop_lines)
    finally:
        client.close(5)
    assert text == (
        "3 records dropped so far: values over 64 characters exceeded the "
        "long-value budget (max_long_chars=1000)"
    )


def test_a_process_outrunning_its_sender_is_told_so(daemon: Daemon, drop_lines: DropLines) -> None:
    """Case B: a tight loop against an idle trackerd fills the queue faster than the
    sender thread empties it. The warning names the queue's bound and the process."""
    client = Client(daemon.socket_path, max_buffered=10, flush_interval=5.0)
    try:
        for i in range(1000):  # the flusher gathers for flush_interval: 990 dropped
            client.record_server(f"192.0.2.{i % 250}", SECRET_SENDER)
        assert client.stats().dropped == 990
        assert client.flush(30)
        text = first_line(drop_lines)
        wait_for(lambda: daemon.status().records >= 10, 30, "the queued records counted")
    finally:
        client.close(5)
    assert text.startswith(
        "990 records dropped so far: the queue of 10 was full (this process records "
        "faster than its sender thread sends, or trackerd at "
    ), text
    assert "not keeping up" not in text and "long-value" not in text
    assert "192.0.2" not in text and "secret-domain" not in text


def test_a_drop_with_no_daemon_names_both_bounds_it_hit(
    short_tmp: Path, drop_lines: DropLines
) -> None:
    client = Client(
        short_tmp / "nobody.sock", max_buffered=5, max_long_chars=1000, flush_interval=5.0
    )
    try:
        client.record_server(SECRET_IP, SECRET_SENDER + "x" * 600)
        client.record_server(SECRET_IP, SECRET_SENDER + "y" * 600)  # over the budget
        for _ in range(10):
            client.record_server(SECRET_IP, SECRET_SENDER)  # 4 fit, 6 find the queue full
        client.flush(0)  # wakes the flusher, which warns, then fails to connect
        text = first_line(drop_lines)
    finally:
        client.close(0)
    assert text.startswith("7 records dropped so far: the queue of 5 was full (")
    assert text.endswith(
        "for 6; values over 64 characters exceeded the long-value budget "
        "(max_long_chars=1000) for 1"
    ), text
    assert SECRET_IP not in text and "secret-domain" not in text


def test_a_drop_while_the_daemon_is_stalled_is_told_before_it_resumes(
    daemon: Daemon, drop_lines: DropLines
) -> None:
    """The flusher blocked in a send to a stalled trackerd (SIGSTOP) still warns of
    the drops meanwhile: each send timeout goes back to its loop, which warns."""
    assert daemon.process is not None
    client = Client(daemon.socket_path, max_buffered=20_000, table_entries=0)
    try:
        client.record_server(SECRET_IP, SECRET_SENDER)
        assert client.flush(30)  # connected
        os.kill(daemon.process.pid, signal.SIGSTOP)
        try:
            # Far more than the socket's buffers and the queue hold: the flusher
            # blocks in send() and the queue fills, then drops.
            for i in range(400_000):
                client.record_server(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", SECRET_SENDER)
                if client.stats().dropped:
                    break
            assert client.stats().dropped
            text = first_line(drop_lines)  # told while trackerd is still stopped
        finally:
            os.kill(daemon.process.pid, signal.SIGCONT)
    finally:
        client.close(5)
    assert "records dropped so far: the queue of 20000 was full" in text, text
    assert SECRET_IP not in text and "secret-domain" not in text
