"""A real trackerd process on a real socket: exact counts, the status file, bad input, shutdown."""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import multiprocessing
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest

from servertracker import STATUS_FILE_NAME, protocol, read_status_file
from servertracker.connection import DaemonConnection
from servertracker.status import Status
from tests.conftest import Daemon, run_as_nobody, trackerctl, wait_for
from trackerd.edges.socket_files import bind_unix_socket
from trackerd.errors import StartupError

WORKERS = 8
TOTAL = 40_000
EXPECTED = (3000, 997, 100)  # conn IPs, domains, IP servers in workload()


def workload(r: int) -> tuple[str, str]:
    """Record r of a workload with known distinct counts, in varied spellings."""
    conn_ip = str(ipaddress.ip_address(0x0A000000 + r % 3000))
    if r % 3 == 0:
        conn_ip = f"[::ffff:{conn_ip}]"
    if r % 5 == 0:
        return conn_ip, f"<u{r}@[198.51.100.{(r // 5) % 100}]>"
    domain = f"d{r % 997}.example"
    return conn_ip, (f"User{r}@{domain.upper()}." if r % 2 else domain)


def send_share(socket_path: str, worker: int) -> None:
    pairs = [workload(r) for r in range(worker, TOTAL, WORKERS)]
    with DaemonConnection(socket_path, timeout=30) as conn:
        for start in range(0, len(pairs), 500):
            conn.record(pairs[start : start + 500])
        conn.ping()  # replies come after every earlier record on this connection is applied


def counts(status: Status) -> tuple[int, int, int]:
    return (status.unique_conn_ips, status.unique_domains, status.unique_ip_servers)


def test_starts_with_a_zero_status_file_and_private_modes(daemon: Daemon) -> None:
    status = read_status_file(daemon.runtime_dir)
    assert counts(status) == (0, 0, 0)
    assert stat.S_IMODE((daemon.runtime_dir / STATUS_FILE_NAME).stat().st_mode) == 0o640
    assert stat.S_IMODE(daemon.socket_path.stat().st_mode) == 0o660
    assert abs(status.boot_time - daemon.status().boot_time) == 0


def test_concurrent_processes_give_exact_counts_via_socket_and_file(daemon: Daemon) -> None:
    bad_reads: list[str] = []
    records_read: set[int] = set()
    stop = threading.Event()

    def poll_status_file() -> None:
        path = daemon.runtime_dir / STATUS_FILE_NAME
        while not stop.is_set():
            raw = path.read_bytes()
            try:
                records_read.add(json.loads(raw)["records"])
            except ValueError:
                bad_reads.append(raw.decode(errors="replace"))

    reader = threading.Thread(target=poll_status_file)
    reader.start()
    try:
        context = multiprocessing.get_context("fork")
        workers = [
            context.Process(target=send_share, args=(str(daemon.socket_path), w))
            for w in range(WORKERS)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
            assert worker.exitcode == 0
        live = daemon.status()
        assert counts(live) == EXPECTED
        assert live.records == TOTAL
        assert (live.rejected_conn_ips, live.rejected_senders) == (0, 0)
        on_disk = wait_for(
            lambda: (s := read_status_file(daemon.runtime_dir)).records == TOTAL and s,
            what="the status file to catch up",
        )
        assert counts(on_disk) == EXPECTED
        # The reader went on reading throughout, up to the last file.
        wait_for(lambda: TOTAL in records_read, what="the reader to read the last file")
    finally:
        stop.set()
        reader.join()
    assert bad_reads == []


def raw_connection(daemon: Daemon) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(daemon.socket_path))
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def frame(obj: object) -> bytes:
    body = msgpack.packb(obj)
    return struct.pack(">I", len(body)) + body


BAD_INPUTS = {
    "garbage": (b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1", protocol.ERR_BAD_MSGPACK),
    "random-header": (b"GET / HTTP/1.1\r\n\r\n", protocol.ERR_TOO_LARGE),
    "oversized": (
        struct.pack(">I", protocol.MAX_MESSAGE_SIZE + 1) + b"x" * 1000,
        protocol.ERR_TOO_LARGE,
    ),
    "wrong-types": (frame([1, "record", [["192.0.2.1", 42]]]), protocol.ERR_BAD_MESSAGE),
    "unknown-type": (frame([1, "user@leak.example"]), protocol.ERR_UNKNOWN_TYPE),
    "bad-version": (
        frame([99, "record", [["192.0.2.1", "a@b.example"]]]),
        protocol.ERR_UNSUPPORTED_VERSION,
    ),
    "reply-from-client": (frame([1, "pong"]), protocol.ERR_UNEXPECTED),
    "deep": (struct.pack(">I", 200001) + b"\x91" * 200000 + b"\xc0", protocol.ERR_BAD_MSGPACK),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_gets_an_error_reply_and_changes_nothing(daemon: Daemon, name: str) -> None:
    data, code = BAD_INPUTS[name]
    with daemon.connect() as good:
        good.record([("192.0.2.1", "user@example.com")])
        before = good.status()
        bad = raw_connection(daemon)
        # A valid record first, in the same write: it counts, what follows does not.
        bad.sendall(frame([1, "record", [["192.0.2.2", "user@example.org"]]]) + data)
        reply = read_until_closed(bad)
        bad.close()
        decoder = protocol.MessageDecoder(sent_by=protocol.Peer.DAEMON)
        decoder.receive_data(reply)
        message = decoder.next_message()
        assert isinstance(message, protocol.Error)
        assert message.code == code
        after = good.status()  # the other connection is still served
    assert counts(after) == (counts(before)[0] + 1, counts(before)[1] + 1, 0)
    assert after.records == before.records + 1
    assert "user@leak.example" not in daemon.log()


def test_truncated_message_and_half_close_change_nothing(daemon: Daemon) -> None:
    full = frame([1, "record", [["192.0.2.9", "user@truncated.example"]]])
    for cut in (2, 4, len(full) - 1):
        sock = raw_connection(daemon)
        sock.sendall(full[:cut])
        sock.shutdown(socket.SHUT_WR)
        read_until_closed(sock)
        sock.close()
    assert counts(daemon.status()) == (0, 0, 0)
    assert daemon.process is not None and daemon.process.poll() is None


def test_sigterm_applies_what_was_sent_and_writes_the_final_status(
    make_daemon: Callable[..., Daemon],
) -> None:
    # A long interval: only the shutdown write can carry these records to the file.
    daemon = make_daemon(extra_args=["--status-interval", "3600"]).start()
    with daemon.connect() as conn:
        conn.ping()
        conn.record([workload(r) for r in range(TOTAL)])
        assert daemon.stop(signal.SIGTERM) == 0
    status = read_status_file(daemon.runtime_dir)
    assert counts(status) == EXPECTED
    assert status.records == TOTAL
    assert not daemon.socket_path.exists()
    assert "SIGTERM received" in daemon.log()


def test_sigint_stops_cleanly_too(daemon: Daemon) -> None:
    assert daemon.stop(signal.SIGINT) == 0


SALT = bytes(range(100, 132))


def test_no_salt_and_no_cleartext_in_logs_or_status_file(
    make_daemon: Callable[..., Daemon],
) -> None:
    prelude = f"import secrets\nsecrets.token_bytes = lambda n=32: {SALT!r}[:n]"
    daemon = make_daemon(python_prelude=prelude).start()
    secret_values = [
        ("203.0.113.77", "someone@very-secret-domain.example"),
        ("not-an-ip-secret", "malformed@secret-garbage here!"),
        ("2001:db8::77", "x@[203.0.113.78]"),
    ]
    with daemon.connect() as conn:
        conn.record(secret_values)
        assert counts(conn.status()) == (2, 1, 1)
    bad = raw_connection(daemon)
    bad.sendall(frame([1, "very-secret-domain.example"]))
    read_until_closed(bad)
    assert daemon.stop() == 0
    written = (daemon.runtime_dir / STATUS_FILE_NAME).read_bytes() + daemon.log().encode()
    for leak in (SALT, SALT.hex().encode(), base64.b64encode(SALT), SALT.hex().upper().encode()):
        assert leak not in written
    for cleartext in (
        "203.0.113.77",
        "very-secret-domain",
        "not-an-ip-secret",
        "secret-garbage",
        "2001:db8::77",
        "203.0.113.78",
    ):
        assert cleartext.encode() not in written
    assert "DEBUG" in daemon.log()  # debug logging was on, so the check had something to read


def test_restart_after_sigkill_replaces_stale_socket_and_temp_files(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon().start()
    with daemon.connect() as conn:
        conn.record([("192.0.2.1", "a@b.example")])
        conn.ping()
    first_boot = daemon.status()
    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    assert daemon.socket_path.exists()  # stale
    leftover = daemon.runtime_dir / f".{STATUS_FILE_NAME}.crash.tmp"
    leftover.write_text("{")
    daemon.start()
    assert not leftover.exists()
    status = daemon.status()
    assert counts(status) == (0, 0, 0)  # a new salt: counts reset by design
    assert status.boot_time >= first_boot.boot_time


def test_second_daemon_on_the_same_socket_refuses_clearly(
    daemon: Daemon, make_daemon: Callable[..., Daemon]
) -> None:
    second = make_daemon("rt2", extra_args=["--socket", str(daemon.socket_path)])
    second.start(wait=False)
    assert second.process is not None
    assert second.process.wait(60) == 1
    assert "another trackerd is already listening" in second.log()
    assert "Traceback" not in second.log()
    daemon.status()  # the first one is untouched


def test_second_daemon_on_the_same_runtime_dir_refuses_naming_the_holder(
    daemon: Daemon, short_tmp: Path
) -> None:
    assert daemon.process is not None
    with daemon.connect() as conn:
        conn.record([("192.0.2.1", "a@example.com")])
        conn.ping()
    wait_for(lambda: read_status_file(daemon.runtime_dir).records == 1, what="the status file")
    second = Daemon(daemon.runtime_dir, extra_args=["--socket", str(short_tmp / "other.sock")])
    second.log_path = short_tmp / "second.log"
    second.socket_path = short_tmp / "other.sock"
    second.start(wait=False)
    assert second.process is not None
    assert second.process.wait(60) == 1
    assert f"is in use by another trackerd (pid {daemon.process.pid}" in second.log()
    assert "Traceback" not in second.log()
    assert not (short_tmp / "other.sock").exists()
    # The first daemon's file was never overwritten with the second one's zeros.
    assert read_status_file(daemon.runtime_dir).records == 1
    assert daemon.status().records == 1
    assert daemon.stop() == 0
    # The lock goes with the process, however it ends: the next daemon starts.
    second.start()
    assert second.stop(signal.SIGKILL) == -signal.SIGKILL
    third = Daemon(daemon.runtime_dir)
    third.log_path = short_tmp / "third.log"
    third.start()
    assert third.stop() == 0


def test_unusable_runtime_dir_is_a_clear_startup_error(short_tmp: Path) -> None:
    blocker = short_tmp / "file"
    blocker.write_text("")
    daemon = Daemon(blocker / "rt")
    daemon.log_path = short_tmp / "daemon.log"
    daemon.start(wait=False)
    assert daemon.process is not None
    assert daemon.process.wait(60) == 1
    assert "cannot create runtime directory" in daemon.log()
    assert "Traceback" not in daemon.log()


def test_a_runtime_dir_that_is_a_file_is_said_to_be_no_directory(short_tmp: Path) -> None:
    """mkdir()'s own words were "File exists", which hid what is wrong."""
    blocker = short_tmp / "file"
    blocker.write_text("")
    daemon = Daemon(blocker)
    daemon.log_path = short_tmp / "daemon.log"
    daemon.start(wait=False)
    assert daemon.process is not None
    assert daemon.process.wait(60) == 1
    assert f"runtime directory {blocker} is not a directory" in daemon.log()
    assert "File exists" not in daemon.log() and "Traceback" not in daemon.log()


def test_too_long_socket_path_is_a_clear_startup_error(short_tmp: Path) -> None:
    daemon = Daemon(short_tmp / "rt", extra_args=["--socket", str(short_tmp / ("s" * 120))])
    daemon.start(wait=False)
    assert daemon.process is not None
    assert daemon.process.wait(60) == 1
    assert "Unix sockets allow 107" in daemon.log()


def test_socket_under_a_regular_file_is_a_clear_startup_error(short_tmp: Path) -> None:
    blocker = short_tmp / "file"
    blocker.write_text("")
    daemon = Daemon(short_tmp / "rt", extra_args=["--socket", str(blocker / "x.sock")])
    daemon.start(wait=False)
    assert daemon.process is not None
    assert daemon.process.wait(60) == 1
    assert f"cannot listen on {blocker / 'x.sock'}: Not a directory" in daemon.log()
    assert "Traceback" not in daemon.log()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as nobody")
def test_socket_in_a_directory_nobody_may_not_search_is_a_clear_error(short_tmp: Path) -> None:
    closed = short_tmp / "closed"
    closed.mkdir(mode=0o700)
    path = closed / "x.sock"

    def bind_as_nobody() -> int:
        try:
            bind_unix_socket(path)
        except StartupError as exc:
            return 0 if str(exc) == f"cannot listen on {path}: Permission denied" else 2
        return 1

    assert run_as_nobody(bind_as_nobody) == 0


def test_python_m_trackerd_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trackerd", "--help"], capture_output=True, text=True, check=True
    )
    assert "--runtime-dir" in result.stdout and "TRACKERD_RUNTIME_DIR" in result.stdout


def test_environment_chooses_the_runtime_dir_and_the_socket(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    """$TRACKERD_RUNTIME_DIR and $TRACKERD_SOCKET, end to end: the daemon, a worker
    and trackerctl all started with no option, and all finding one another."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKERD_")}
    env["TRACKERD_RUNTIME_DIR"] = str(short_tmp / "env-rt")
    worker = "import servertracker; servertracker.record_server('192.0.2.1', 'a@env.example')"

    # The runtime directory alone: the socket goes in it.
    daemon = make_daemon("env-rt", env=env, runtime_dir_option=False).start()
    assert daemon.socket_path == short_tmp / "env-rt" / "trackerd.sock"  # where it answered
    subprocess.run([sys.executable, "-c", worker], env=env, check=True, timeout=60)
    wait_for(lambda: daemon.status().unique_domains == 1, what="the worker's record")
    status = trackerctl("status", "--json", "--timeout", "60", env=env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["source"] == "live"
    assert json.loads(status.stdout)["socket"] == str(daemon.socket_path)
    assert daemon.stop() == 0
    assert read_status_file(short_tmp / "env-rt").unique_domains == 1

    # And the socket elsewhere, by $TRACKERD_SOCKET; the status file stays in the directory.
    env["TRACKERD_SOCKET"] = str(short_tmp / "env.sock")
    daemon = make_daemon("env-rt", env=env, runtime_dir_option=False)
    daemon.socket_path = short_tmp / "env.sock"
    daemon.start()
    assert not (short_tmp / "env-rt" / "trackerd.sock").exists()
    subprocess.run([sys.executable, "-c", worker], env=env, check=True, timeout=60)
    wait_for(lambda: daemon.status().unique_domains == 1, what="the worker's record")
    ping = trackerctl("ping", "--timeout", "60", env=env)
    assert ping.returncode == 0, ping.stderr
    assert ping.stdout.startswith(f"pong from {short_tmp / 'env.sock'} in ")
    assert daemon.stop() == 0
    assert read_status_file(short_tmp / "env-rt").unique_domains == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as nobody")
def test_a_user_sent_to_root_s_runtime_dir_is_told_why(short_tmp: Path) -> None:
    short_tmp.chmod(0o755)
    system_dir = short_tmp / "run"
    system_dir.mkdir(mode=0o750)  # what root's daemon leaves: 0750 root
    log_path = short_tmp / "nobody.log"
    log_path.touch()
    os.chown(log_path, 65534, 65534)

    # Imported here, as root: nobody cannot read this interpreter's standard library
    # under /root (trackerd.main imports resource), so the child must find it loaded.
    import trackerd.main

    def trackerd_as_nobody() -> int:
        import servertracker.paths

        servertracker.paths.SYSTEM_RUNTIME_DIR = system_dir
        for name in ("TRACKERD_RUNTIME_DIR", "RUNTIME_DIRECTORY", "TRACKERD_SOCKET"):
            os.environ.pop(name, None)
        sys.stderr = open(log_path, "a", buffering=1)  # noqa: SIM115  (the child's whole life)
        logging.getLogger().handlers.clear()  # pytest's, which would keep trackerd's away
        return trackerd.main.main([])

    assert run_as_nobody(trackerd_as_nobody) == 1
    text = log_path.read_text()
    assert f"runtime directory {system_dir} is not writable by this user" in text
    assert f"{system_dir} is not writable by this user (chosen because it exists: " in text
    assert "Traceback" not in text
