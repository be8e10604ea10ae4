"""The policy thread's C loop (trackerd/edges/_cpolicy_loop.c) on real sockets.

Loop.serve() waits on an epoll, reads each ready connection marked for the short
way, and parses a read that is one whole request; everything else goes back to the
Python code (policy_loop.py), which the daemon tests exercise on both paths. Here
each of its outcomes is checked alone: the values equal the Python decoder's, the
buffer holds nothing of a request afterwards, and a read that is not one whole
request (several, a piece, the peer's close), a connection not marked, or other
events come back untouched for the Python code. reply() sends to each and names
those that did not take the reply whole.
"""

from __future__ import annotations

import errno
import importlib
import os
import select
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench.policy_cost import ATTRIBUTES
from servertracker import accel
from tests.conftest import Daemon
from tests.test_accel import compiler_and_headers
from trackerd.core import policy_protocol
from trackerd.core.policy_protocol import (
    DUNNO_RESPONSE,
    MAX_ATTRIBUTES,
    MAX_LINE,
    USED_ATTRIBUTES,
    PolicyDecoder,
)
from trackerd.edges import policy_loop

c_loop = policy_loop._cpolicy_loop

NAMES = tuple(name.encode("ascii") for name in USED_ATTRIBUTES)


class Harness:
    def __init__(self) -> None:
        assert c_loop is not None
        self.poller = select.epoll()
        self.buffer = bytearray(policy_loop.READ_SIZE)
        self.fast = bytearray(policy_loop.SHORT_WAY_FDS)
        self.loop = c_loop.Loop(
            self.poller.fileno(), NAMES, MAX_LINE, MAX_ATTRIBUTES, self.buffer, self.fast
        )
        self.pairs: list[tuple[socket.socket, socket.socket]] = []

    def connection(self, fast: bool = True) -> tuple[socket.socket, socket.socket]:
        """(the daemon's end, registered; the peer's end)."""
        ours, peer = socket.socketpair()
        ours.setblocking(False)
        self.poller.register(ours.fileno(), select.EPOLLIN)
        self.fast[ours.fileno()] = fast
        self.pairs.append((ours, peer))
        return ours, peer

    def close(self) -> None:
        for ours, peer in self.pairs:
            ours.close()
            peer.close()
        self.poller.close()


@pytest.fixture
def harness() -> Iterator[Harness]:
    if c_loop is None:
        pytest.skip("the C extension is not built")
    h = Harness()
    yield h
    h.close()


def request(n: int) -> bytes:
    return ATTRIBUTES.format(ip=f"192.0.2.{n}", n=n, w=1).encode()


def python_values(data: bytes) -> tuple[str | None, ...]:
    decoder = PolicyDecoder()
    decoder.receive_data(data)
    values = decoder.next_request()
    assert isinstance(values, tuple)
    return values


def test_whole_requests_are_read_and_parsed_and_nothing_of_them_kept(harness: Harness) -> None:
    connections = [harness.connection() for _ in range(3)]
    sent = {}
    for n, (ours, peer) in enumerate(connections):
        data = request(n)
        if n == 1:  # CRLF, and a kept name given twice: the last wins
            data = data.replace(b"\n", b"\r\n")[:-2] + b"sender=<x@late.example>\r\n\r\n"
        peer.sendall(data)
        sent[ours.fileno()] = data
    took, others, pending = harness.loop.serve(1000)
    assert pending is None and others == []
    assert sorted(fd for fd, _ in took) == sorted(sent)
    for fd, values in took:
        assert values == python_values(sent[fd])
    assert not any(harness.buffer)
    assert dict(took)[connections[1][0].fileno()][1] == "<x@late.example>"


def test_a_read_that_is_not_one_whole_request_goes_back_with_its_bytes(
    harness: Harness,
) -> None:
    ours, peer = harness.connection()
    two = request(1) + request(2)
    peer.sendall(two)
    took, others, pending = harness.loop.serve(1000)
    assert took == [] and others == []
    assert pending is not None
    fd, offset, count = pending
    assert fd == ours.fileno()
    assert bytes(harness.buffer[offset : offset + count]) == two  # the Python code's now
    harness.buffer[offset : offset + count] = bytes(count)
    # A piece of a request, the same way.
    peer.sendall(request(3)[:100])
    _, _, pending = harness.loop.serve(1000)
    assert pending is not None and pending[2] == 100
    harness.buffer[:] = bytes(len(harness.buffer))
    # The peer's close: a read of 0 bytes.
    peer.shutdown(socket.SHUT_WR)
    _, _, pending = harness.loop.serve(1000)
    assert pending == (ours.fileno(), 0, 0)


def test_connections_not_marked_and_other_events_go_to_the_python_code(
    harness: Harness,
) -> None:
    slow, slow_peer = harness.connection(fast=False)
    fast, fast_peer = harness.connection()
    slow_peer.sendall(request(1))
    fast_peer.sendall(request(2))
    took, others, pending = harness.loop.serve(1000)
    assert pending is None
    # The one not marked is left unread, whatever epoll's order.
    assert (slow.fileno(), select.EPOLLIN) in others
    assert slow.recv(65536) == request(1)
    assert [fd for fd, _ in took] in ([fast.fileno()], [])
    if not took:  # epoll gave the slow one first: the rest went back too
        assert (fast.fileno(), select.EPOLLIN) in others
    # Readable and hung up: the Python code's.
    fast_peer.sendall(request(3))
    fast_peer.close()
    took, others, pending = harness.loop.serve(1000)
    assert took == [] and pending is None
    assert [fd for fd, _ in others] == [fast.fileno()]
    assert others[0][1] & select.EPOLLHUP


def test_a_wait_times_out_with_nothing(harness: Harness) -> None:
    harness.connection()
    assert harness.loop.serve(0) == ([], [], None)
    assert harness.loop.serve(10) == ([], [], None)


def test_reply_names_the_connections_that_did_not_take_it_whole(harness: Harness) -> None:
    fine, fine_peer = harness.connection()
    full, _full_peer = harness.connection()
    closed, closed_peer = harness.connection()
    closed_peer.close()
    # Fill full's send buffer until it takes nothing more.
    full.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    with pytest.raises(BlockingIOError):
        while True:
            full.send(b"x" * 4096)
    fds = [fine.fileno(), full.fileno(), closed.fileno()]
    troubles = dict(harness.loop.reply(fds, DUNNO_RESPONSE))
    assert fine.fileno() not in troubles
    assert fine_peer.recv(100) == DUNNO_RESPONSE
    assert 0 <= troubles[full.fileno()] < len(DUNNO_RESPONSE)
    assert troubles[closed.fileno()] == -errno.EPIPE


def test_a_loop_is_initialised_once(harness: Harness) -> None:
    """serve() reads the names with the lock released, so a second __init__ (from
    another thread, or failing half way) would free them under it: it is refused,
    and the loop keeps its names."""
    ours, peer = harness.connection()
    name = bytes(bytearray(b"s" * 200 + b"sender"))  # a new object, held nowhere else
    for names in ((name, 7), (name,)):
        with pytest.raises(RuntimeError):
            harness.loop.__init__(  # type: ignore[misc]
                harness.poller.fileno(),
                names,
                MAX_LINE,
                MAX_ATTRIBUTES,
                harness.buffer,
                harness.fast,
            )
    del name
    peer.sendall(request(1))
    assert harness.loop.serve(5000) == ([(ours.fileno(), python_values(request(1)))], [], None)


def test_reply_takes_exact_ints_only() -> None:
    """An int subclass's or any other object's __index__ may change the list while
    reply() reads it: only exact ints are taken. In a fresh interpreter: a crash
    there fails this."""
    if c_loop is None:
        pytest.skip("the C extension is not built")
    code = """
        import select
        from trackerd.edges._cpolicy_loop import Loop
        poller = select.epoll()
        loop = Loop(poller.fileno(), (b"sender",), 100, 10, bytearray(200), bytearray(10))
        fds = []
        class Emptying:
            def __index__(self):
                fds.clear()
                return 1
        fds.extend([Emptying()] + [object() for _ in range(40)])
        for given in (fds, [True]):
            try:
                loop.reply(given, b"x")
            except TypeError as exc:
                print("TypeError:", exc)
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONMALLOC": "debug"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["TypeError: reply: the descriptors must be ints"] * 2


# --- the daemon on each path ------------------------------------------------------------

PURE_PYTHON_VARIABLE = accel.PURE_PYTHON_VARIABLE


def test_both_policy_modules_are_built_where_a_compiler_is() -> None:
    """Else every C test here would be skipped and prove nothing (as test_accel's)."""
    if not compiler_and_headers():
        pytest.skip("no C compiler or Python headers here: the pure-Python path runs")
    for name in (policy_protocol.EXTENSION, policy_loop.EXTENSION):
        importlib.import_module(name)


def mixed_stream() -> list[bytes]:
    """What each connection sends, read by read: whole requests (the C loop's), two
    in one read, one in pieces, CRLF, a name given twice, undecodable bytes, repeated
    recipients of one message, a request without instance."""
    reads = [request(n) for n in range(20)]
    reads.append(request(20) + request(21))
    whole = request(22)
    reads += [whole[:50], whole[50:300], whole[300:]]
    reads.append(request(23).replace(b"\n", b"\r\n"))
    reads.append(request(24)[:-1] + b"sender=<late@dup.example>\n\n")
    reads.append(request(25).replace(b"sender=<", b"sender=<\xff"))
    reads += [request(26)] * 3  # one message, three recipients: recorded once
    reads.append(b"client_address=192.0.2.99\nsender=x@noinstance.example\n\n")
    return reads


def run_on(
    make_daemon: Callable[..., Daemon], short_tmp: Path, pure: bool
) -> tuple[tuple[int, ...], bytes]:
    env = {k: v for k, v in os.environ.items() if k != PURE_PYTHON_VARIABLE}
    if pure:
        env[PURE_PYTHON_VARIABLE] = "1"
    name = "pure" if pure else "c"
    path = short_tmp / f"{name}.sock"
    daemon = make_daemon(name, extra_args=["--postfix-policy-socket", str(path)], env=env).start()
    answers = b""
    reads = mixed_stream()
    for _ in range(2):  # two connections, one after the other, the same stream
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(30)
            sock.connect(str(path))
            for data in reads:
                sock.sendall(data)
                expected = data.count(b"\n\n") + data.count(b"\r\n\r\n")
                if expected:
                    got = b""
                    while len(got) < expected * len(DUNNO_RESPONSE):
                        chunk = sock.recv(4096)
                        assert chunk, "closed"
                        got += chunk
                    answers += got
                else:
                    time.sleep(0.01)  # a piece: let the daemon read it alone
            # A malformed request closes the connection without an answer.
            sock.sendall(b"=no name\n\n")
            assert sock.recv(100) == b""
    status = daemon.status()
    health = status.health
    assert health is not None
    counts = (
        status.records,
        status.unique_conn_ips,
        status.unique_domains,
        status.rejected_senders,
        health.protocol_errors.get("policy", 0),
    )
    return counts, answers


def test_the_daemon_answers_and_counts_alike_on_both_paths(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    c_counts, c_answers = run_on(make_daemon, short_tmp, pure=False)
    pure_counts, pure_answers = run_on(make_daemon, short_tmp, pure=True)
    assert c_answers == pure_answers == DUNNO_RESPONSE * (2 * 30)
    assert c_counts == pure_counts
    assert c_counts[0] == 2 * 28  # 30 requests a connection, 2 repeated recipients
    assert c_counts[4] == 2
