"""The policy thread's C loop (trackerd/edges/_cpolicy_loop.c) on real sockets.

Loop.serve() waits on an epoll and serves each ready connection marked for the
short way and opened: a read that is one whole request is parsed, its pair queued
(unless its instance is one of the connection's recent ones), and answered; everything
else goes back to the Python code (policy_loop.py), which the daemon tests exercise on
both paths. Here each of its outcomes is checked alone: the pairs equal the Python
decoder's values, the buffer holds nothing of a request afterwards, a read that is not
one whole request (several, a piece, the peer's close, a non-ASCII instance), a
connection not marked or not opened, or other events come back untouched for the Python
code; a reply not taken whole is named; the instances' memory is the Python way's.
"""

from __future__ import annotations

import errno
import importlib
import os
import select
import socket
import threading
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
from trackerd.edges.policy_server import RECENT_INSTANCES, RecentInstances

c_loop = policy_loop._cpolicy_loop

NAMES = tuple(name.encode("ascii") for name in USED_ATTRIBUTES)
DELAY = 0.02


class Harness:
    def __init__(self) -> None:
        assert c_loop is not None
        self.poller = select.epoll()
        self.buffer = bytearray(policy_loop.READ_SIZE)
        self.fast = bytearray(policy_loop.SHORT_WAY_FDS)
        self.loop = c_loop.Loop(
            self.poller.fileno(),
            NAMES,
            MAX_LINE,
            MAX_ATTRIBUTES,
            self.buffer,
            self.fast,
            DUNNO_RESPONSE,
            DELAY,
        )
        self.pairs: list[tuple[socket.socket, socket.socket]] = []

    def connection(self, fast: bool = True) -> tuple[socket.socket, socket.socket]:
        """(the daemon's end, registered and opened; the peer's end)."""
        ours, peer = socket.socketpair()
        ours.setblocking(False)
        peer.settimeout(10)
        self.poller.register(ours.fileno(), select.EPOLLIN)
        self.fast[ours.fileno()] = fast
        self.loop.open(ours.fileno())
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


def request(n: int, instance: str | None = None) -> bytes:
    data = ATTRIBUTES.format(ip=f"192.0.2.{n}", n=n, w=1)
    if instance is not None:
        data = data.replace(f"instance=1.{n}\n", f"instance={instance}\n")
    return data.encode()


def python_values(data: bytes) -> tuple[str | None, ...]:
    decoder = PolicyDecoder()
    decoder.receive_data(data)
    values = decoder.next_request()
    assert isinstance(values, tuple)
    return values


def test_whole_requests_are_served_and_nothing_of_them_kept(harness: Harness) -> None:
    connections = [harness.connection() for _ in range(3)]
    sent = {}
    for n, (ours, peer) in enumerate(connections):
        data = request(n)
        if n == 1:  # CRLF, and a kept name given twice: the last wins
            data = data.replace(b"\n", b"\r\n")[:-2] + b"sender=<x@late.example>\r\n\r\n"
        peer.sendall(data)
        sent[ours.fileno()] = data
    before = time.monotonic()
    served, others, pending, troubles, pairs = harness.loop.serve(1000, 3)
    assert pending is None and others == [] and troubles == []
    assert sorted(fd for fd, _, _ in served) == sorted(sent)
    assert all(count == 1 and last_read >= before for _, count, last_read in served)
    assert pairs is not None
    conn_ips, senders, since = pairs
    expected = sorted(python_values(data)[:2] for data in sent.values())
    assert sorted(zip(conn_ips, senders, strict=True)) == expected
    assert "<x@late.example>" in senders
    assert before <= since <= time.monotonic()
    assert not any(harness.buffer)
    for _, peer in connections:  # each answered once
        assert peer.recv(100) == DUNNO_RESPONSE


def test_serve_goes_on_until_its_limit_or_the_oldest_pair_is_due(harness: Harness) -> None:
    """One call serves request after request (one at a time, as smtpd asks); it
    returns at limit pairs, or once the oldest has waited the delay."""
    ours, peer = harness.connection()
    answered: list[bytes] = []

    def ask(n: int) -> None:
        peer.sendall(request(n))

    ask(0)
    served, _, _, _, pairs = harness.loop.serve(0, 10)
    assert pairs is not None and len(pairs[0]) == 1 and served[0][:2] == (ours.fileno(), 1)
    answered.append(peer.recv(100))
    # A limit of 1: back at the first pair, however long the timeout.
    ask(1)
    start = time.monotonic()
    _, _, _, _, pairs = harness.loop.serve(60_000, 1)
    assert pairs is not None and len(pairs[0]) == 1
    answered.append(peer.recv(100))
    # A high limit and a long timeout: back once the pair is DELAY old.
    ask(2)
    _, _, _, _, pairs = harness.loop.serve(60_000, 1000)
    assert pairs is not None and len(pairs[0]) == 1
    assert time.monotonic() - pairs[2] >= DELAY
    assert time.monotonic() - start < 30
    answered.append(peer.recv(100))
    assert answered == [DUNNO_RESPONSE] * 3


def test_a_read_that_is_not_one_whole_request_goes_back_with_its_bytes(
    harness: Harness,
) -> None:
    ours, peer = harness.connection()
    two = request(1) + request(2)
    peer.sendall(two)
    served, others, pending, _, pairs = harness.loop.serve(1000, 10)
    assert served == [] and others == [] and pairs is None
    assert pending is not None
    fd, offset, count = pending
    assert fd == ours.fileno()
    assert bytes(harness.buffer[offset : offset + count]) == two  # the Python code's now
    harness.buffer[offset : offset + count] = bytes(count)
    # A piece of a request, the same way.
    peer.sendall(request(3)[:100])
    _, _, pending, _, _ = harness.loop.serve(1000, 10)
    assert pending is not None and pending[2] == 100
    harness.buffer[:] = bytes(len(harness.buffer))
    # A whole request whose instance is not plain ASCII: its bytes, the same way.
    odd = request(4, instance="\u00e9t\u00e9")
    peer.sendall(odd)
    served, _, pending, _, pairs = harness.loop.serve(1000, 10)
    assert served == [] and pairs is None
    assert pending is not None and bytes(harness.buffer[: pending[2]]) == odd
    harness.buffer[:] = bytes(len(harness.buffer))
    # The peer's close: a read of 0 bytes.
    peer.shutdown(socket.SHUT_WR)
    _, _, pending, _, _ = harness.loop.serve(1000, 10)
    assert pending == (ours.fileno(), 0, 0)
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(100)  # nothing was answered


def test_connections_not_marked_or_not_opened_and_other_events_go_to_the_python_code(
    harness: Harness,
) -> None:
    slow, slow_peer = harness.connection(fast=False)
    fast, fast_peer = harness.connection()
    slow_peer.sendall(request(1))
    fast_peer.sendall(request(2))
    served, others, pending, _, _ = harness.loop.serve(1000, 10)
    assert pending is None
    # The one not marked is left unread, whatever epoll's order.
    assert (slow.fileno(), select.EPOLLIN) in others
    assert slow.recv(65536) == request(1)
    assert [fd for fd, _, _ in served] in ([fast.fileno()], [])
    if not served:  # epoll gave the slow one first: the rest went back too
        assert (fast.fileno(), select.EPOLLIN) in others
        assert fast.recv(65536) == request(2)
    # Marked but closed (its memory freed): the Python code's.
    harness.loop.close(fast.fileno())
    fast_peer.sendall(request(3))
    served, others, _, _, _ = harness.loop.serve(1000, 10)
    assert served == [] and others == [(fast.fileno(), select.EPOLLIN)]
    assert fast.recv(65536) == request(3)
    # Readable and hung up: the Python code's.
    harness.loop.open(fast.fileno())
    fast_peer.sendall(request(4))
    fast_peer.close()
    served, others, pending, _, _ = harness.loop.serve(1000, 10)
    assert served == [] and pending is None
    assert [fd for fd, _ in others] == [fast.fileno()]
    assert others[0][1] & select.EPOLLHUP


def test_a_wait_times_out_with_nothing(harness: Harness) -> None:
    harness.connection()
    assert harness.loop.serve(0, 10) == ([], [], None, [], None)
    assert harness.loop.serve(10, 10) == ([], [], None, [], None)


def test_a_reply_not_taken_whole_is_named_and_the_connection_left_to_python(
    harness: Harness,
) -> None:
    full, full_peer = harness.connection()
    closed, closed_peer = harness.connection()
    # Fill full's send buffer until it takes nothing more.
    full.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    with pytest.raises(BlockingIOError):
        while True:
            full.send(b"x" * 4096)
    full_peer.sendall(request(1))
    closed_peer.sendall(request(2))
    closed_peer.shutdown(socket.SHUT_RD)
    troubles: dict[int, int] = {}
    served_fds: set[int] = set()
    conn_ips: list[str | None] = []
    while len(troubles) < 2:
        served, _, _, more, pairs = harness.loop.serve(1000, 10)
        troubles.update(more)
        served_fds.update(fd for fd, _, _ in served)
        if pairs is not None:
            conn_ips += pairs[0]
    assert served_fds == {full.fileno(), closed.fileno()}
    assert sorted(conn_ips) == ["192.0.2.1", "192.0.2.2"]  # recorded all the same
    assert 0 <= troubles[full.fileno()] < len(DUNNO_RESPONSE)
    assert troubles[closed.fileno()] in (-errno.EPIPE, -errno.ECONNRESET, 0)
    assert not harness.fast[full.fileno()] and not harness.fast[closed.fileno()]


def test_the_memory_of_instances_is_the_python_ways(harness: Harness) -> None:
    """Another recipient of a recent message is answered and not queued, whichever way
    (C or the Python code's first()) saw the message first; the memory holds the last
    RECENT_INSTANCES, as RecentInstances does."""
    ours, peer = harness.connection()
    fd = ours.fileno()
    python = RecentInstances()
    instances = [f"m{n % (RECENT_INSTANCES + 3)}" for n in range(4 * RECENT_INSTANCES)]
    instances += ["m1"] * 3
    for n, instance in enumerate(instances):
        expected = python.first(instance)
        if n % 3 == 0:  # the Python way, through the same memory
            assert harness.loop.first(fd, instance) == expected
            continue
        peer.sendall(request(n, instance=instance))
        served, _, _, _, pairs = harness.loop.serve(1000, 1)
        assert served[0][:2] == (fd, 1)
        assert (pairs is not None) == expected, instance
        assert peer.recv(100) == DUNNO_RESPONSE
    # Non-ASCII through first(): equal strings, equal answers.
    assert harness.loop.first(fd, "\u00e9") and not harness.loop.first(fd, "\u00e9")
    # No instance, or an empty one: always queued.
    for data in (request(1).replace(b"instance=1.1\n", b""), request(1, instance="")):
        for _ in range(2):
            peer.sendall(data)
            _, _, _, _, pairs = harness.loop.serve(1000, 1)
            assert pairs is not None
            assert peer.recv(100) == DUNNO_RESPONSE
    # A connection reopened on the same descriptor starts afresh.
    harness.loop.open(fd)
    assert harness.loop.first(fd, "m1")


def test_a_loop_is_initialised_once(harness: Harness) -> None:
    """serve() reads the names with the lock released, so a second __init__ (from
    another thread, or failing half way) would free them under it: it is refused,
    and the loop keeps its names."""
    _, peer = harness.connection()
    name = bytes(bytearray(b"s" * 200 + b"sender"))  # a new object, held nowhere else
    for names in ((name, 7, name), (name, name, name)):
        with pytest.raises(RuntimeError):
            harness.loop.__init__(  # type: ignore[misc]
                harness.poller.fileno(),
                names,
                MAX_LINE,
                MAX_ATTRIBUTES,
                harness.buffer,
                harness.fast,
                DUNNO_RESPONSE,
                DELAY,
            )
    del name
    peer.sendall(request(1))
    _, _, _, _, pairs = harness.loop.serve(5000, 1)
    assert pairs is not None and (pairs[0], pairs[1]) == (
        [python_values(request(1))[0]],
        [python_values(request(1))[1]],
    )


def test_no_other_call_while_serve_runs_without_the_lock(harness: Harness) -> None:
    """open(), close() and first() touch what serve() reads with the lock released:
    from another thread meanwhile, they are refused."""
    ours, peer = harness.connection()
    outcome: list[BaseException] = []

    def other() -> None:
        # Until serve() waits (it waits 5 s for a request): first() is refused then.
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            try:
                harness.loop.first(ours.fileno(), "probe")
            except RuntimeError as exc:
                outcome.append(exc)
                break
        for call in (
            lambda: harness.loop.open(ours.fileno()),
            lambda: harness.loop.close(ours.fileno()),
        ):
            try:
                call()
            except RuntimeError as exc:
                outcome.append(exc)
        peer.sendall(request(1))

    thread = threading.Thread(target=other)
    thread.start()
    _, _, _, _, pairs = harness.loop.serve(5000, 1)
    thread.join()
    assert pairs is not None
    assert len(outcome) == 3 and all("busy" in str(exc) for exc in outcome)


def test_descriptors_out_of_range_are_refused(harness: Harness) -> None:
    for fd in (-1, policy_loop.SHORT_WAY_FDS):
        with pytest.raises(ValueError):
            harness.loop.open(fd)
        with pytest.raises(ValueError):
            harness.loop.first(fd, "x")
    with pytest.raises(ValueError):
        harness.loop.first(3, "x")  # not opened


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


def test_pairs_are_kept_when_the_results_cannot_be_built(harness: Harness) -> None:
    """No memory while serve() builds what it returns (the lists, the strs, the
    tuples: _testcapi makes every allocation from the k-th on fail, for each k):
    a request it answered has its pair come back exactly once, from that call or,
    after a MemoryError, from the next one; none is lost, none counted twice."""
    testcapi = pytest.importorskip("_testcapi")
    _, peer = harness.connection()
    peer.sendall(request(0))
    assert harness.loop.serve(1000, 1)[4] is not None  # the queue's memory made
    assert peer.recv(100) == DUNNO_RESPONSE
    came_back: list[str | None] = []
    failures = 0
    for k in range(1, 40):
        peer.sendall(request(k))
        # Empty the free lists of floats and small tuples, so that the last steps
        # (the since, the tuples around the pairs) allocate and can fail too.
        kept = [(float(n) + 0.5, tuple([n] * 3), tuple([n] * 5)) for n in range(2100)]
        testcapi.set_nomemory(k, 0)
        try:
            result = harness.loop.serve(1000, 1)
        except MemoryError:
            result = None
        finally:
            testcapi.remove_mem_hooks()
        if result is None:
            failures += 1
            result = harness.loop.serve(1000, 1)  # what was kept, or the request again
        del kept
        pairs = result[4]
        assert pairs is not None
        came_back += pairs[0]
        assert peer.recv(100) == DUNNO_RESPONSE  # answered once
    assert failures > 0  # the allocations failed in each place in turn, up to the last
    assert sorted(came_back) == sorted(python_values(request(k))[0] for k in range(1, 40))
