"""Hostile peers and floods: estimates past a bound, access control, limits, fuzzing."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fuzz import run as fuzz_run
from servertracker import protocol
from servertracker.cli import app
from servertracker.connection import DaemonConnection
from servertracker.errors import DaemonUnavailable, ProtocolError
from tests.conftest import Daemon, run_as_nobody, wait_for
from tests.sanitizer import REASON, sanitized
from trackerd.edges.access import AllowLists, PeerCredentials, peer_credentials

NOBODY = 65534


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_flood_of_domains_switches_to_an_estimate(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon(extra_args=["--max-exact-entries", "500"]).start()
    with daemon.connect() as conn:
        conn.record([("192.0.2.1", f"spam@random-{i}.example") for i in range(20000)])
        status = conn.status()
    assert status.estimated == ("unique_domains",)
    assert abs(status.unique_domains - 20000) <= 400
    assert status.unique_conn_ips == 1  # the other categories stay exact
    assert "counting from now on with an estimate" in daemon.log()
    where = ["--socket", str(daemon.socket_path), "--timeout", "60"]
    human = CliRunner().invoke(app, ["status", *where])
    assert human.exit_code == 0
    assert "Domain servers: ~" in human.stdout and "(estimate)" in human.stdout
    assert "Connection IPs: 1\n" in human.stdout
    result = CliRunner().invoke(app, ["status", *where, "--json"])
    data = json.loads(result.stdout)
    assert data["estimated"] == ["unique_domains"]
    assert isinstance(data["unique_domains"], int)
    # The status file carries the same news, for readers that only have the file.
    assert daemon.stop() == 0
    on_disk = json.loads((daemon.runtime_dir / "server_tracker.json").read_text())
    assert on_disk["estimated"] == ["unique_domains"]


def open_up(daemon: Daemon) -> None:
    """Let any user reach the socket, so that only the allow-lists decide."""
    for path in (daemon.runtime_dir.parent, daemon.runtime_dir):
        path.chmod(0o755)
    daemon.socket_path.chmod(0o666)


def ping_as_nobody(socket_path: Path, groups: Sequence[int] = ()) -> int:
    """0: answered; 3: refused with "forbidden"; 4: the socket's mode refused the
    connection (permission denied); 5: anything else, a timeout included."""

    def ping() -> int:
        try:
            with DaemonConnection(socket_path, timeout=30) as conn:
                conn.ping()
            return 0
        except ProtocolError as exc:
            return 3 if exc.code == "forbidden" else 5
        except DaemonUnavailable as exc:
            return 4 if exc.reason == "permission-denied" else 5

    return run_as_nobody(ping, groups)


def test_allow_lists_refuse_and_admit_by_uid_and_gid(make_daemon: Callable[..., Daemon]) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to connect as another user")
    refused = make_daemon("a", extra_args=["--allow-uid", "12345"]).start()
    open_up(refused)
    assert ping_as_nobody(refused.socket_path) == 3
    with DaemonConnection(refused.socket_path) as own:
        own.ping()  # the daemon's own user always gets in
    wait_for(
        lambda: "refused a connection from uid 65534 gid 65534" in refused.log(),
        what="the log line",
    )
    assert "more since" not in refused.log()  # the first refusal: none since to count

    by_uid = make_daemon("b", extra_args=["--allow-uid", "nobody"]).start()
    open_up(by_uid)
    assert ping_as_nobody(by_uid.socket_path) == 0

    by_gid = make_daemon("c", extra_args=["--allow-gid", str(NOBODY)]).start()
    open_up(by_gid)
    assert ping_as_nobody(by_gid.socket_path) == 0

    # A supplementary group counts as much as the primary one: that is how
    # `usermod -aG trackerd smtpd` lets the SMTP workers in.
    workers_group = 4242
    by_supplementary = make_daemon("e", extra_args=["--allow-gid", str(workers_group)]).start()
    open_up(by_supplementary)
    assert ping_as_nobody(by_supplementary.socket_path, groups=[workers_group]) == 0
    assert ping_as_nobody(by_supplementary.socket_path, groups=[workers_group + 1]) == 3

    # Without allow-lists the socket's mode decides: nobody cannot even connect.
    plain = make_daemon("d").start()
    plain.runtime_dir.chmod(0o755)
    plain.runtime_dir.parent.chmod(0o755)
    assert ping_as_nobody(plain.socket_path) == 4


def test_peer_credentials_carry_the_supplementary_groups() -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to give a process chosen groups")

    def groups_seen_by_the_peer() -> int:
        left, right = socket.socketpair()  # the kernel records credentials here
        with left, right:
            peer = peer_credentials(left)
        expected = PeerCredentials(os.getpid(), NOBODY, NOBODY, frozenset({4242, 4343}))
        return 0 if peer == expected else 1

    assert run_as_nobody(groups_seen_by_the_peer, groups=[4242, 4343]) == 0


def test_a_gid_allow_list_admits_primary_or_supplementary_groups() -> None:
    policy = AllowLists(gids=frozenset({4242}), own_uid=0)
    assert policy.permits(PeerCredentials(1, 1000, 4242))
    assert policy.permits(PeerCredentials(1, 1000, 1000, frozenset({27, 4242})))
    assert not policy.permits(PeerCredentials(1, 1000, 1000, frozenset({27})))
    assert not policy.permits(None)


def test_unknown_user_is_a_usage_error(short_tmp: Path) -> None:
    daemon = Daemon(short_tmp / "rt", extra_args=["--allow-uid", "no-such-user-here"])
    daemon.start(wait=False)
    assert daemon.process is not None and daemon.process.wait(60) == 2
    assert "no such user: no-such-user-here" in daemon.log()


def test_connection_limit(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon(extra_args=["--max-connections", "5"]).start()
    held = [daemon.connect() for _ in range(5)]
    for conn in held:
        conn.ping()
    extra = daemon.connect()
    try:
        extra.ping()
        raise AssertionError("a sixth connection was served")
    except ProtocolError as exc:
        assert exc.code == "busy"
    except DaemonUnavailable as exc:
        # Closed before the reply could be read: refused all the same. A timeout
        # (or anything else) is not a refusal.
        assert exc.reason == "closed", exc
    extra.close()
    held.pop().close()
    wait_for(lambda: _pings(daemon), what="a free connection slot")
    for conn in held:
        conn.ping()  # the ones inside were never disturbed
        conn.close()


def _pings(daemon: Daemon) -> bool:
    try:
        with daemon.connect() as conn:
            conn.ping()
        return True
    except (ProtocolError, DaemonUnavailable):
        return False


def raw(daemon: Daemon) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(60)
    sock.connect(str(daemon.socket_path))
    return sock


def test_idle_and_slow_senders_are_closed(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon(extra_args=["--idle-timeout", "3", "--frame-timeout", "1"]).start()
    start = time.monotonic()  # before connecting: the daemon's timer starts later
    idle = raw(daemon)
    # Closed by the daemon (raw()'s 60 s timeout is far from the default 600 s idle
    # timeout), and not before its idle timeout.
    assert idle.recv(100) == b""
    assert time.monotonic() - start >= 3
    slow = raw(daemon)
    frame = protocol.encode(protocol.Record([("192.0.2.1", "slow@example.com")]))
    assert len(frame) * 0.2 > 5  # sent whole, it would take longer than the frame timeout
    closed = False
    for byte in frame[:-1]:  # one byte at a time, each well within the idle timeout
        try:
            slow.send(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            closed = True  # by the frame timeout: the idle timeout never came near
            break
        time.sleep(0.2)
    assert closed, "a frame sent slowly was never cut off"
    assert daemon.status().records == 0  # the unfinished frame never counted


def test_a_peer_that_never_reads_replies_cannot_grow_memory(daemon: Daemon) -> None:
    assert daemon.process is not None
    before = rss_kib(daemon.process.pid)
    greedy = raw(daemon)
    request = protocol.encode(protocol.StatusRequest()) * 1000
    greedy.setblocking(False)
    sent = 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and sent < 50_000_000:
        try:
            sent += greedy.send(request)
        except BlockingIOError:
            time.sleep(0.01)  # the daemon stopped reading us: back-pressure works
        except (BrokenPipeError, ConnectionResetError):
            break
    for _ in range(20):
        daemon.status()  # everyone else is still served
    assert rss_kib(daemon.process.pid) - before < 32 * 1024
    greedy.close()


def test_fuzz_with_a_fixed_seed_against_the_decoder_and_a_live_daemon(daemon: Daemon) -> None:
    assert daemon.process is not None
    report = fuzz_run.run(1500, seed_value=20261124, socket_path=daemon.socket_path,
                          daemon_pid=daemon.process.pid, check_every=100)  # fmt: skip
    assert report.inputs == 1500
    # Each check: alive, and the counts exactly the control's. One before the
    # first input, one every 100 inputs, one after the last.
    assert report.daemon_checks == 1 + 1500 // 100 + 1
    assert sum(report.decoder_errors.values()) > 500  # the inputs really were hostile
    if sanitized(daemon.process.pid):
        pytest.skip(f"the memory bound is not checked: {REASON}")
    assert max(report.rss_kib) - report.rss_kib[0] < 32 * 1024
