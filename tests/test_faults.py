"""Faults: the daemon killed again and again under load; its runtime directory,
socket or status file gone or full."""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import signal
import socket
import stat
import threading
from collections.abc import Callable
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

import pytest

from servertracker import Client, read_status_file
from servertracker.status import STATUS_FILE_NAME
from tests.conftest import Daemon, remove_tree, wait_for

KILLS = 50
WORKERS = 4


def busy_worker(
    socket_path: str, worker: int, stop: EventType, results: multiprocessing.Queue
) -> None:  # type: ignore[type-arg]
    """Record without pause until told to stop, flush, and report what the client saw.

    Each worker's senders share one domain of its own, so a daemon's count of
    domains tells how many workers have reached it.
    """
    calls = 0
    try:
        client = Client(socket_path, flush_interval=0.02)
        while not stop.is_set():
            for _ in range(200):
                calls += 1
                client.record_server(
                    f"10.{worker}.{calls // 256 % 256}.{calls % 256}", f"u{calls}@w{worker}.example"
                )
            stop.wait(0.01)
        flushed = client.flush(60)
        stats = client.stats()
        results.put((worker, "ok", calls, flushed, stats))
    except BaseException as exc:  # the point of the test: this must never happen
        results.put((worker, f"raised {exc!r}", calls, False, None))


# Fifty daemon start-ups take a minute on an idle machine and several on a busy one:
# each step has its own deadline, and the whole test more time than the default.
@pytest.mark.timeout(900)
def test_sigkill_fifty_times_under_load(make_daemon: Callable[..., Daemon]) -> None:
    """Workers never raise, keep running, and reach every daemon that comes up;
    what they could not send is accounted for, and a status file is never torn."""
    daemon = make_daemon()
    status_file = daemon.runtime_dir / STATUS_FILE_NAME
    invalid: list[bytes] = []
    reads = 0
    reading = threading.Event()

    def read_status_file_forever() -> None:
        nonlocal reads
        while not reading.is_set():
            try:
                raw = status_file.read_bytes()
            except FileNotFoundError:
                continue  # before the very first start only
            try:
                json.loads(raw)
            except ValueError:
                invalid.append(raw)
            reads += 1

    def every_worker_reached_it() -> bool:
        # A new daemon has a new salt and counts from zero: each worker's domain
        # counted here was sent to this daemon.
        return daemon.status().unique_domains == WORKERS

    context = multiprocessing.get_context("fork")
    stop = context.Event()
    results: multiprocessing.Queue = context.Queue()  # type: ignore[type-arg]
    workers = [
        context.Process(target=busy_worker, args=(str(daemon.socket_path), w, stop, results))
        for w in range(WORKERS)
    ]
    for worker in workers:
        worker.start()  # before the daemon: they must find it by themselves
    reader = threading.Thread(target=read_status_file_forever)
    daemon.start()
    reader.start()
    reports = []
    try:
        for life in range(KILLS + 1):
            if life:
                daemon.start()
            reads_before = reads
            # Every worker finds the new daemon by itself and goes on sending: kill
            # only when each one has, however long its backoff made it wait.
            wait_for(every_worker_reached_it, 60, f"every worker to reach daemon {life}")
            wait_for(lambda r=reads_before: reads > r, 30, f"a read of daemon {life}'s file")
            assert all(worker.is_alive() for worker in workers)
            if life < KILLS:
                assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
        # The last daemon lives: everything still queued must reach it.
        stop.set()
        reports = [results.get(timeout=90) for _ in workers]
    finally:
        stop.set()
        for worker in workers:
            worker.join(90)
        reading.set()
        reader.join()
    assert invalid == []
    for worker, outcome, calls, flushed, stats in reports:
        assert outcome == "ok", f"worker {worker}: {outcome}"
        assert flushed and stats.buffered == 0, f"worker {worker}: {stats}"
        # Every call is accounted for: queued and written, or dropped and counted.
        assert calls == stats.recorded + stats.dropped, f"worker {worker}: {calls}, {stats}"
        assert stats.sent == stats.recorded, f"worker {worker}: {stats}"
        # It reached each of the KILLS + 1 daemons, each over a connection of its own.
        assert stats.reconnects >= KILLS, f"worker {worker}: {stats}"
    assert all(worker.exitcode == 0 for worker in workers)
    final = daemon.status()
    assert final.unique_domains == WORKERS and final.rejected_senders == 0


def test_runtime_directory_removed_is_made_again_with_its_socket(daemon: Daemon) -> None:
    """What a /tmp cleaner or logind at logout does: the directory goes, socket and all."""
    with daemon.connect() as before:
        before.record([("192.0.2.1", "a@example.com")])
        before.ping()
        remove_tree(daemon.runtime_dir)
        daemon.wait_ready(15)  # a ping through the socket made again
        before.record([("192.0.2.2", "b@example.com")])  # made before: unaffected
        before.ping()
    with daemon.connect() as after:
        after.record([("192.0.2.3", "c@example.com")])
        assert after.status().unique_conn_ips == 3  # nothing was lost
    status_file = daemon.runtime_dir / STATUS_FILE_NAME
    wait_for(
        lambda: status_file.exists() and read_status_file(daemon.runtime_dir).unique_conn_ips == 3,
        what="the status file to be written again, with every record",
    )
    assert stat.S_IMODE(daemon.runtime_dir.stat().st_mode) == 0o750
    assert stat.S_IMODE(status_file.stat().st_mode) == 0o640
    log = daemon.log()
    assert "was removed; made it again" in log
    assert "was removed; listening on it again" in log
    # The lock file went with the directory and was taken again: no second daemon there.
    second = Daemon(daemon.runtime_dir, extra_args=["--socket", f"{daemon.runtime_dir}2.sock"])
    second.log_path = daemon.runtime_dir.parent / "second.log"
    assert second.start(wait=False).process is not None
    assert second.process.wait(60) == 1
    assert "is in use by another trackerd" in second.log()
    assert daemon.stop() == 0
    assert not daemon.socket_path.exists()  # the new socket file is ours to remove


def test_runtime_directory_gone_with_its_parent_until_the_parent_is_back(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    # The socket lives elsewhere, so that the daemon stays reachable.
    daemon = make_daemon(
        "p/rt", extra_args=["--socket", str(short_tmp / "d.sock")], log_to_pipe=True
    )
    daemon.socket_path = short_tmp / "d.sock"
    daemon.start()
    remove_tree(short_tmp / "p")  # a missing parent is not the daemon's to make
    with daemon.connect() as conn:
        conn.record([("192.0.2.1", "a@example.com")])
        conn.ping()
        wait_for(lambda: "cannot write the status file" in daemon.log(), what="the write error")
        wait_for(
            lambda: "cannot put the runtime files back" in daemon.log(), what="the upkeep error"
        )
        assert conn.status().unique_conn_ips == 1  # still counting
        conn.record([("192.0.2.2", "b@example.com")])
        conn.ping()
    (short_tmp / "p").mkdir()
    status = wait_for(
        lambda: (
            (daemon.runtime_dir / STATUS_FILE_NAME).exists()
            and read_status_file(daemon.runtime_dir)
        ),
        15,
        what="the status file to come back",
    )
    assert status.unique_conn_ips == 2
    wait_for(lambda: "runtime files back in place" in daemon.log(), what="the recovery log")
    assert daemon.log().count("cannot put the runtime files back") == 1  # not every 2 s


def test_a_socket_path_taken_by_someone_else_is_left_alone(daemon: Daemon) -> None:
    daemon.socket_path.unlink()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(str(daemon.socket_path))  # another program's socket, now at our path
        other.listen()
        identity = daemon.socket_path.stat().st_ino
        wait_for(lambda: "is no longer our socket" in daemon.log(), 60, what="the log line")
        assert daemon.stop() == 0
        assert daemon.socket_path.stat().st_ino == identity  # neither replaced nor removed


@pytest.mark.skipif(os.getuid() != 0, reason="prlimit on the non-dumpable daemon needs root")
def test_status_file_cannot_grow_then_can(make_daemon: Callable[..., Daemon]) -> None:
    # RLIMIT_FSIZE makes every write of the status file fail (EFBIG), as a full disk would.
    # The daemon logs to a pipe here: a log file could not grow either.
    daemon = make_daemon(log_to_pipe=True).start()
    assert daemon.process is not None
    pid = daemon.process.pid
    original = resource.prlimit(
        pid, resource.RLIMIT_FSIZE, (16, resource.prlimit(pid, resource.RLIMIT_FSIZE)[1])
    )
    with daemon.connect() as conn:
        conn.record([("192.0.2.1", "a@example.com")])
        conn.ping()
        wait_for(
            lambda: "cannot write the status file" in daemon.log(), what="the error in the log"
        )
        assert conn.status().unique_conn_ips == 1  # still counting
        assert read_status_file(daemon.runtime_dir).unique_conn_ips == 0  # the old file, intact
        assert list(daemon.runtime_dir.glob(".*.tmp")) == []  # no temp file left behind
    resource.prlimit(pid, resource.RLIMIT_FSIZE, original)
    wait_for(
        lambda: read_status_file(daemon.runtime_dir).unique_conn_ips == 1,
        what="the file to be written",
    )
    wait_for(lambda: "status file written again after" in daemon.log(), what="the log line")
