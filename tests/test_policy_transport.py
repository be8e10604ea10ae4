"""The Postfix policy listener's connection handling (edges/policy_loop.py), on
real daemons: pipelined and split requests, the idle timeout, the unread-reply
timeout, the drain at shutdown and its cap, and what is left of a request cut
short by a closing peer.

Each limit that would take long is shortened in the daemon (python_prelude) so
that only it can end what the test waits for; nothing here asserts speed.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from servertracker import read_status_file
from tests.conftest import Daemon, send_until_closed, wait_for
from trackerd.core.policy_protocol import DUNNO_RESPONSE, NEED_DATA, PolicyDecoder
from trackerd.edges import stream_server

# Each test on both of the policy thread's paths: the C loop and the Python code.
pytestmark = pytest.mark.usefixtures("both_paths")


def request(n: int, recipient: str = "r@example.net") -> bytes:
    return (
        f"request=smtpd_access_policy\nprotocol_state=RCPT\n"
        f"client_address=10.0.{n // 256}.{n % 256}\n"
        f"sender=u{n}@sender{n}.example\nrecipient={recipient}\ninstance=i{n}\n\n"
    ).encode()


def start(
    make_daemon: Callable[..., Daemon], short_tmp: Path, *args: str, prelude: str | None = None
) -> tuple[Daemon, Path]:
    path = short_tmp / "policy.sock"
    daemon = make_daemon(
        extra_args=[*args, "--postfix-policy-socket", str(path)], python_prelude=prelude
    ).start()
    return daemon, path


def connect(path: Path, timeout: float = 30) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(str(path))
    return sock


def read_replies(sock: socket.socket, count: int) -> bytes:
    replies = b""
    while len(replies) < count * len(DUNNO_RESPONSE):
        chunk = sock.recv(65536)
        if not chunk:
            break
        replies += chunk
    return replies


def test_pipelined_and_split_requests_are_each_answered_once(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    daemon, path = start(make_daemon, short_tmp)
    with connect(path) as sock:
        # Many in one read.
        sock.sendall(b"".join(request(n) for n in range(1, 301)))
        assert read_replies(sock, 300) == DUNNO_RESPONSE * 300
        data = request(301) + request(302)
        for at in range(0, len(data), 7):  # in pieces, some cut inside the empty line
            sock.sendall(data[at : at + 7])
            time.sleep(0.001)
        assert read_replies(sock, 2) == DUNNO_RESPONSE * 2
    status = daemon.status()
    assert (status.records, status.unique_conn_ips, status.unique_domains) == (302, 302, 302)


def test_a_peer_that_reads_late_gets_every_answer_once(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    """While a reply waits to be read, the daemon reads and answers nothing more
    (its memory for a peer that does not read is one read's requests); once the
    peer reads, every request is answered and recorded, once."""
    daemon, path = start(make_daemon, short_tmp)
    # 20,000 replies are 280 KB: more than the socket's buffers take (a Unix
    # socket's are about 208 KiB), so the daemon must pause.
    count = 20_000
    with connect(path) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sender = threading.Thread(
            target=sock.sendall, args=(b"".join(request(n) for n in range(1, count + 1)),)
        )
        sender.start()  # blocks until the daemon reads again, so it waits for the replies
        # Nothing is read until the daemon paused: the case this test is about.
        wait_for(lambda: "reading from it paused" in daemon.log(), what="the daemon to pause")
        assert read_replies(sock, count) == DUNNO_RESPONSE * count
        sender.join(30)
    status = daemon.status()
    assert (status.records, status.unique_conn_ips) == (count, count)


def test_an_idle_policy_connection_is_closed_and_counted(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    daemon, path = start(make_daemon, short_tmp, "--idle-timeout", "1")
    with connect(path) as sock:
        assert read_replies(sock, 1) == b""  # closed by the daemon, nothing said
    assert "closing a connection: idle, or a frame took too long" in daemon.log()
    with connect(path) as sock:  # a busy connection is not idle
        for n in range(1, 4):
            sock.sendall(request(n))
            assert read_replies(sock, 1) == DUNNO_RESPONSE
    health = daemon.status().health
    assert health is not None
    assert health.connection_timeouts == 1


def test_a_policy_reply_left_unread_closes_the_connection(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    assert stream_server.SEND_TIMEOUT == 10.0
    prelude = "import trackerd.edges.stream_server as s\ns.SEND_TIMEOUT = 1.0"
    daemon, path = start(make_daemon, short_tmp, prelude=prelude)
    greedy = connect(path)
    greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    requests = request(1) * 1000
    closed = send_until_closed(greedy, requests)
    greedy.close()
    assert closed, "the daemon never gave up on a peer that does not read"
    assert "closing a connection that did not read its reply within 1s" in daemon.log()
    with connect(path) as sock:  # everyone else is still served
        sock.sendall(request(2))
        assert read_replies(sock, 1) == DUNNO_RESPONSE


def test_requests_sent_before_sigterm_are_answered_and_counted(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    daemon, path = start(make_daemon, short_tmp, "--status-interval", "3600")
    assert daemon.process is not None
    with connect(path) as sock:
        sock.sendall(request(1))
        assert read_replies(sock, 1) == DUNNO_RESPONSE
        sock.sendall(request(2) + request(3))  # sent, maybe not yet read
        daemon.process.send_signal(15)
        assert read_replies(sock, 2) == DUNNO_RESPONSE * 2
        assert sock.recv(100) == b""  # then closed, once quiet
        assert daemon.process.wait(60) == 0
    assert read_status_file(daemon.runtime_dir).records == 3
    assert "still open at shutdown" not in daemon.log()  # closed when quiet, not by the cap


def test_the_policy_drain_is_capped(make_daemon: Callable[..., Daemon], short_tmp: Path) -> None:
    # A quiet connection would be drained for ten minutes: only the cap can end it.
    prelude = "import trackerd.edges.stream_server as s\ns.DRAIN_QUIET_TIME = 600.0"
    daemon, path = start(make_daemon, short_tmp, "--status-interval", "3600", prelude=prelude)
    assert daemon.process is not None
    with connect(path) as sock:
        sock.sendall(request(1))
        assert read_replies(sock, 1) == DUNNO_RESPONSE
        start_time = time.monotonic()
        daemon.process.send_signal(15)
        assert daemon.process.wait(60) == 0, daemon.log()
        took = time.monotonic() - start_time
        assert sock.recv(100) == b""
    assert took >= stream_server.DRAIN_DEADLINE  # it did drain, for the whole cap
    assert "1 connections still open at shutdown; closing them" in daemon.log()
    assert read_status_file(daemon.runtime_dir).records == 1


def test_a_request_cut_short_is_overwritten_when_the_connection_closes() -> None:
    decoder = PolicyDecoder()
    decoder.receive_data(request(1) + b"sender=u@cut-short.example\nrecip")
    assert isinstance(decoder.next_request(), tuple)
    assert decoder.next_request() is NEED_DATA and decoder.in_progress
    decoder.clear()  # what the listener does when the peer goes away
    assert not any(decoder._buffer)
