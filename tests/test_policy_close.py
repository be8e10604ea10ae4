"""A Postfix policy connection closed by the daemon while its replies wait unread
(shed at the connection limit, drained at SIGTERM, timed out), on real daemons:
the daemon keeps running (asyncio's transport is gone once the peer read the
replies), the requests it read but did not answer are recorded, a timeout is
counted once; and a fault in one connection's handling closes only that one.
Also, at unit level, the cap of requests handled in one call from the loop.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from servertracker import read_status_file
from tests.conftest import Daemon, send_until_closed, wait_for
from tests.test_policy_transport import connect, read_replies, request, start
from trackerd.core.policy_protocol import DUNNO_RESPONSE, PolicyProtocolError, Request
from trackerd.edges import policy_server

# Each test on both of the policy thread's paths: the C loop and the Python code.
pytestmark = pytest.mark.usefixtures("both_paths")

#: More replies than a Unix socket's buffers take (about 208 KiB): the daemon pauses.
FLOOD = 20_000


class Flood:
    """A peer that pipelines FLOOD requests and reads nothing until told to."""

    def __init__(self, path: Path) -> None:
        self.sock = connect(path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        data = b"".join(request(n) for n in range(1, FLOOD + 1))
        self.sender = threading.Thread(target=self._send, args=(data,), daemon=True)
        self.sender.start()

    def _send(self, data: bytes) -> None:
        # Blocks while the daemon reads nothing; ends when it closes the connection
        # (what it read is what counts).
        with contextlib.suppress(OSError):
            self.sock.sendall(data)

    def read_all(self) -> int:
        """Read until the daemon closes the connection: the number of replies."""
        replies = b""
        try:
            while chunk := self.sock.recv(65536):
                replies += chunk
        except ConnectionResetError:
            pass
        self.sock.close()
        assert replies == DUNNO_RESPONSE * (len(replies) // len(DUNNO_RESPONSE))
        return len(replies) // len(DUNNO_RESPONSE)


def paused(daemon: Daemon, count: int = 1) -> bool:
    return daemon.log().count("reading from it paused") >= count


def held(daemon: Daemon) -> int:
    """The requests read but not answered that the daemon recorded at a close.

    Almost always some (the daemon pauses in the middle of a read), but not
    always: the unit tests below are the ones that must see some."""
    found = re.findall(r"closed with (\d+) requests read, not answered: recorded", daemon.log())
    return sum(int(n) for n in found)


def dropped(daemon: Daemon) -> int:
    """The replies the daemon dropped unsent when it shed a connection."""
    found = re.findall(r"shed: dropping (\d+) bytes of replies not read", daemon.log())
    return sum(int(n) for n in found) // len(DUNNO_RESPONSE)


def hung_up(sock: socket.socket) -> bool:
    """Whether the daemon closed its end, seen without reading anything."""
    poller = select.poll()
    poller.register(sock, select.POLLRDHUP)
    return bool(poller.poll(0))


def answered(path: Path) -> bool:
    try:
        with connect(path) as sock:
            sock.sendall(request(FLOOD + 1))
            return read_replies(sock, 1) == DUNNO_RESPONSE
    except OSError:
        return False  # turned away: the connections just closed are still counted


def test_a_shed_peer_that_reads_later_leaves_the_daemon_running(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    # Shed as soon as it holds a request in progress, however slow the machine.
    prelude = "import trackerd.edges.stream_server as s\ns.SHED_AFTER = 0.0"
    daemon, path = start(make_daemon, short_tmp, "--max-connections", "3", prelude=prelude)
    assert daemon.process is not None
    flood = Flood(path)
    wait_for(lambda: paused(daemon), what="the daemon to pause the flood")
    others = [connect(path) for _ in range(4)]
    wait_for(lambda: "closed the one whose frame began first" in daemon.log(), what="a shed")
    replies = flood.read_all()  # asyncio's transport lets go of its loop once they are read
    for sock in others:
        sock.close()
    wait_for(lambda: answered(path), what="an answer after the shed")
    assert daemon.process.poll() is None
    assert "internal error" not in daemon.log()
    assert daemon.status().records == replies + dropped(daemon) + held(daemon) + 1


def test_a_shed_peer_is_closed_at_once_without_its_replies(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    """Shedding frees the slot now: the replies the peer did not read are dropped
    (the send timeout is an hour here: only that can close it), and the requests
    the daemon read are recorded all the same."""
    prelude = (
        "import trackerd.edges.stream_server as s\ns.SHED_AFTER = 0.0\ns.SEND_TIMEOUT = 3600.0"
    )
    daemon, path = start(make_daemon, short_tmp, "--max-connections", "2", prelude=prelude)
    flood = Flood(path)
    wait_for(lambda: paused(daemon), what="the daemon to pause the flood")
    others = [connect(path) for _ in range(2)]
    wait_for(lambda: "closed the one whose frame began first" in daemon.log(), what="a shed")
    wait_for(lambda: hung_up(flood.sock), what="the shed connection to close, unread")
    assert dropped(daemon) > 0  # replies were waiting: the case this test is about
    replies = flood.read_all()
    for sock in others:
        sock.close()
    wait_for(lambda: answered(path), what="an answer after the shed")
    assert "internal error" not in daemon.log()
    assert daemon.status().records == replies + dropped(daemon) + held(daemon) + 1


def test_a_malformed_request_or_one_cut_short_is_one_protocol_error(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    daemon, path = start(make_daemon, short_tmp)
    cut = b"request=smtpd_access_policy\nclient_address=192.0.2.9\n"  # no empty line

    def errors() -> dict[str, int]:
        health = daemon.status().health
        assert health is not None
        return health.protocol_errors

    # The daemon counts before it closes: once the close is seen, so is the count.
    sock = connect(path)
    sock.sendall(b"request=smtpd_access_policy\nno equals sign\n\n")
    assert read_replies(sock, 1) == b""
    sock.close()
    assert errors() == {"policy": 1}
    sock = connect(path)
    sock.sendall(request(1) + cut)
    sock.shutdown(socket.SHUT_WR)  # ended inside a request: the daemon sees the end
    assert read_replies(sock, 2) == DUNNO_RESPONSE
    sock.close()
    assert errors() == {"policy": 2}
    sock = connect(path)
    sock.sendall(cut)
    sock.close()  # gone inside a request
    wait_for(lambda: errors().get("policy", 0) >= 3, what="a third one")
    # Counted once each, not just late: nothing more comes.
    with connect(path) as sock:
        sock.sendall(request(2))
        assert read_replies(sock, 1) == DUNNO_RESPONSE
    assert errors() == {"policy": 3}
    assert daemon.status().records == 2


def test_peers_that_do_not_read_their_replies_are_logged_throttled(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    """Each is a timeout; the log line comes once per interval (an hour here)."""
    prelude = (
        "import trackerd.edges.stream_server as s\ns.SEND_TIMEOUT = 1.0\n"
        "import trackerd.edges.policy_loop as p\n"
        "from trackerd.edges.access import LogThrottle\n"
        "p.LogThrottle = lambda interval: LogThrottle(3600.0)\n"
    )
    daemon, path = start(make_daemon, short_tmp, prelude=prelude)
    for _ in range(3):
        greedy = connect(path)
        greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        assert send_until_closed(greedy, request(1) * 1000)
        greedy.close()
    health = daemon.status().health
    assert health is not None
    assert health.connection_timeouts == 3
    assert daemon.log().count("did not read its reply within 1s") == 1


def test_a_peer_drained_at_sigterm_that_reads_later_is_counted_whole(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    # Only the peer's reading can end the drain, not its cap.
    prelude = "import trackerd.edges.stream_server as s\ns.DRAIN_DEADLINE = 600.0"
    daemon, path = start(make_daemon, short_tmp, "--status-interval", "3600", prelude=prelude)
    assert daemon.process is not None
    flood = Flood(path)
    wait_for(lambda: paused(daemon), what="the daemon to pause the flood")
    daemon.process.send_signal(15)
    wait_for(lambda: "drained: closing a connection" in daemon.log(), what="the drain's close")
    replies = flood.read_all()
    assert daemon.process.wait(60) == 0
    assert "internal error" not in daemon.log()
    assert read_status_file(daemon.runtime_dir).records == replies + held(daemon)


def test_a_timed_out_peer_that_reads_later_is_counted_once(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    # Only the idle timeout can close it before it reads.
    prelude = "import trackerd.edges.stream_server as s\ns.SEND_TIMEOUT = 600.0"
    daemon, path = start(make_daemon, short_tmp, "--idle-timeout", "1", prelude=prelude)
    assert daemon.process is not None
    flood = Flood(path)
    wait_for(lambda: paused(daemon), what="the daemon to pause the flood")
    wait_for(lambda: "closing a connection: idle" in daemon.log(), what="the idle timeout")
    replies = flood.read_all()
    wait_for(lambda: answered(path), what="an answer after the timeout")
    assert daemon.process.poll() is None
    assert "internal error" not in daemon.log()
    status = daemon.status()
    assert status.records == replies + held(daemon) + 1
    assert status.health is not None
    assert status.health.connection_timeouts == 1


def test_a_peer_that_never_reads_is_one_timeout(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    """Closed at the idle timeout with replies queued, then dropped at the (shortened)
    send timeout: one connection, one timeout."""
    prelude = "import trackerd.edges.stream_server as s\ns.SEND_TIMEOUT = 3.0"
    daemon, path = start(make_daemon, short_tmp, "--idle-timeout", "1", prelude=prelude)
    flood = Flood(path)
    wait_for(lambda: paused(daemon), what="the daemon to pause the flood")
    flood.sender.join(60)  # ends when the daemon drops the connection, replies and all
    assert not flood.sender.is_alive()
    assert "closing a connection: idle" in daemon.log()  # the idle timer closed it first
    flood.sock.close()
    health = daemon.status().health
    assert health is not None
    assert health.connection_timeouts == 1


def test_a_fault_in_one_connection_closes_it_alone_and_logs_no_input(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    prelude = (
        "import trackerd.edges.policy_server as p\n"
        "received = p.PolicySession.received\n"
        "def faulty(self, data):\n"
        "    if b'fault.example' in bytes(data):\n"
        "        raise ValueError(bytes(data).decode())\n"
        "    return received(self, data)\n"
        "p.PolicySession.received = faulty\n"
    )
    daemon, path = start(make_daemon, short_tmp, prelude=prelude)
    assert daemon.process is not None
    with connect(path) as bystander, connect(path) as victim:
        bystander.sendall(request(1))
        assert read_replies(bystander, 1) == DUNNO_RESPONSE
        # A non-ASCII instance: the C loop, which serves whole requests with no Python
        # code to fault, hands this one to the session's received() too.
        victim.sendall(
            request(2)
            .replace(b"sender2.example", b"fault.example")
            .replace(b"\ninstance=", b"\ninstance=\xc3\xa9")
        )
        assert read_replies(victim, 1) == b""  # closed, nothing said
        bystander.sendall(request(3))
        assert read_replies(bystander, 1) == DUNNO_RESPONSE
    assert daemon.process.poll() is None
    log = daemon.log()
    assert "closing a connection after an internal error: ValueError" in log
    assert "fault.example" not in log and "10.0.0.2" not in log


class CountingServer:
    """What a PolicySession asks of its server, kept in a list."""

    def __init__(self) -> None:
        self.recorded: list[str | None] = []

    def record(self, request: Request, first_instance: Callable[[str], bool]) -> None:
        self.recorded.append(request[0])  # client_address

    def protocol_error(self, exc: PolicyProtocolError) -> None:
        raise AssertionError("no malformed request was sent")


def test_one_call_handles_at_most_its_cap_and_every_request_once() -> None:
    cap = policy_server.REQUESTS_PER_TURN
    count = 10 * cap + 5
    server = CountingServer()
    session = policy_server.PolicySession(server)  # type: ignore[arg-type]
    written: list[bytes] = []
    session.write = written.append
    data = b"".join(request(n) for n in range(count))
    assert session.received(memoryview(data))  # one read holds them all
    calls = 1
    assert len(written) == cap and session.backlog
    while session.backlog:
        before = len(written)
        assert session.resume()
        calls += 1
        assert len(written) - before <= cap
    assert written == [DUNNO_RESPONSE] * count  # each answered once
    assert server.recorded == [f"10.0.{n // 256}.{n % 256}" for n in range(count)]  # in order
    assert calls >= count / cap


def test_a_reply_left_waiting_stops_the_answers_and_the_rest_is_recorded_at_close() -> None:
    server = CountingServer()
    session = policy_server.PolicySession(server)  # type: ignore[arg-type]
    written: list[bytes] = []

    def write(reply: bytes) -> None:
        written.append(reply)
        if len(written) == 3:
            session.paused = True  # what the transport's pause_writing() does

    session.write = write
    assert session.received(memoryview(b"".join(request(n) for n in range(10))))
    assert len(written) == 3 and not session.backlog
    assert session.resume() and len(written) == 3  # still paused: nothing more
    session.closed()  # shed, say: the other 7 are recorded, not answered
    assert len(written) == 3
    assert server.recorded == [f"10.0.0.{n}" for n in range(10)]
