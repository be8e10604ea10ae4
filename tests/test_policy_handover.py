"""The policy thread's hand-over to the event loop (edges/policy_loop.py), on real
daemons: a burst from many connections is counted whole, a status reply reflects
every request answered before it however long the hand-over would wait, nothing
queued is lost at shutdown, and a busy event loop makes the thread stop reading
(back-pressure) without losing or dropping anything.

Each knob that would make a case rare is turned in the daemon (python_prelude);
nothing here asserts speed.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from servertracker import read_status_file
from tests.conftest import Daemon, wait_for
from tests.test_policy_transport import connect, read_replies, request, start
from trackerd.core.policy_protocol import DUNNO_RESPONSE
from trackerd.edges import policy_loop
from trackerd.edges.policy_loop import MAX_QUEUED

#: The hand-over waits an hour for a batch that never fills: only a flush at the
#: status snapshot (or at shutdown) can count what was answered.
NEVER_ON_ITS_OWN = (
    "import trackerd.edges.policy_loop as p\np.HANDOVER_DELAY = 3600.0\np.BATCH = 10**9\n"
)


def costly_domains(
    gate: Path | None = None, seconds: float = 0.001, hold: Path | None = None
) -> str:
    """A prelude: every sender's domain takes the exact path and costs `seconds`
    (while the file `gate` exists, if given), as hostile 255-character ones do:
    the Tracker's deadline cuts the slices short. Each slice is logged. Slices are
    withheld (a turn of the loop that would count one counts nothing) while the
    file `hold` exists, and after the first while `gate` exists: what the test
    wants queued stays queued whatever the machine's speed."""
    exists = f"os.path.exists({str(gate)!r})" if gate else "True"
    withheld = ["False"]
    if hold:
        withheld.append(f"os.path.exists({str(hold)!r})")
    if gate:
        withheld.append(f"(self.counted and os.path.exists({str(gate)!r}))")
    held = " or ".join(withheld)
    return (
        "import logging, os, time\n"
        "import trackerd.core.keyed_hash as k\n"
        "import trackerd.core.tracker as t\n"
        "import trackerd.edges.policy_loop as p\n"
        # The C first sightings would take these domains without the Python below.
        "k._cfirst = None\n"
        "classify = t.classify_domain_part\n"
        "def costly(part):\n"
        f"    if {exists}:\n"
        f"        time.sleep({seconds})\n"
        "    return classify(part)\n"
        "t.classify_domain_part = costly\n"
        "t.plain_domains = lambda parts: [b''] * len(parts)\n"
        "count_slice = p.Handover.count_slice\n"
        "def count_and_say(self):\n"
        f"    if {held}:\n"
        "        time.sleep(0.001)\n"  # a turn of the loop spent, none counted
        "        return\n"
        "    count_slice(self)\n"
        "    logging.getLogger('trackerd').info('test: a slice counted')\n"
        "p.Handover.count_slice = count_and_say\n"
    )


def burst(path: Path, connections: int, each: int, *, pipelined: bool) -> list[bytes]:
    """Requests from many connections at once, each answered; the replies of each."""
    replies: list[bytes] = [b""] * connections
    errors: list[BaseException] = []

    def peer(number: int) -> None:
        try:
            with connect(path) as sock:
                first = number * each
                if pipelined:
                    sock.sendall(b"".join(request(first + n) for n in range(each)))
                    replies[number] = read_replies(sock, each)
                else:
                    for n in range(each):
                        sock.sendall(request(first + n))
                        replies[number] += read_replies(sock, 1)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=peer, args=(n,)) for n in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    return replies


def test_a_burst_from_many_connections_is_counted_whole(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    daemon, path = start(make_daemon, short_tmp)
    pipelining = burst(path, 12, 150, pipelined=True)
    one_at_a_time = burst(path, 12, 25, pipelined=False)
    assert pipelining == [DUNNO_RESPONSE * 150] * 12
    assert one_at_a_time == [DUNNO_RESPONSE * 25] * 12
    # request(n) numbers overlap between the two bursts: 12 x 150 distinct in all.
    status = daemon.status()
    assert status.records == 12 * 150 + 12 * 25
    assert status.unique_conn_ips == 12 * 150


def test_a_status_reply_reflects_every_request_answered_before_it(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    daemon, path = start(
        make_daemon, short_tmp, "--status-interval", "3600", prelude=NEVER_ON_ITS_OWN
    )
    with connect(path) as sock:
        for n in range(1, 6):
            sock.sendall(request(n))
            assert read_replies(sock, 1) == DUNNO_RESPONSE
            status = daemon.status()  # on the msgpack socket, right after the answer
            assert (status.records, status.unique_conn_ips) == (n, n)


def test_a_costly_queue_is_counted_in_slices_and_the_loop_serves_others_between(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    """4,000 answered requests of costly values wait: the event loop counts them a
    slice at a time, and a ping is answered between two slices. Nothing is counted
    until all are answered, then one slice (2 ms a value: the deadline cuts it
    short), then nothing until the test has its pong: the state the test wants
    holds on any machine, and counting all at once leaves no slice after the pong.
    A status waits until all those answered before it count."""
    gate, hold = short_tmp / "costly", short_tmp / "hold"
    gate.touch()
    hold.touch()
    prelude = costly_domains(gate, seconds=0.002, hold=hold)
    daemon, path = start(make_daemon, short_tmp, "--status-interval", "3600", prelude=prelude)
    count = 4000
    assert count < MAX_QUEUED  # else the thread stops reading until a slice is counted
    with connect(path) as sock:  # sent while the replies are read: the daemon pauses otherwise
        sender = threading.Thread(
            target=sock.sendall, args=(b"".join(request(n) for n in range(count)),)
        )
        sender.start()
        assert read_replies(sock, count) == DUNNO_RESPONSE * count
        sender.join(60)
    hold.unlink()  # all 4,000 queued (fewer than MAX_QUEUED: all read): one slice now
    slices = lambda: daemon.log().count("test: a slice counted")  # noqa: E731
    wait_for(slices, what="the first slice")
    with daemon.connect() as conn:
        conn.ping()
    at_the_pong = slices()
    assert at_the_pong == 1  # the rest withheld: still queued at the pong
    gate.unlink()
    status = daemon.status()
    assert (status.records, status.unique_domains) == (count, count)
    assert slices() > at_the_pong  # the ping came between two slices


def test_nothing_queued_or_read_is_lost_at_shutdown(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    daemon, path = start(
        make_daemon, short_tmp, "--status-interval", "3600", prelude=NEVER_ON_ITS_OWN
    )
    assert daemon.process is not None
    socks = [connect(path) for _ in range(8)]
    for number, sock in enumerate(socks):
        sock.sendall(b"".join(request(number * 100 + n) for n in range(100)))
    # Wait for the first answers of each, so that SIGTERM finds requests answered
    # and queued in the hand-over, and maybe some not read yet.
    for sock in socks:
        assert read_replies(sock, 1).startswith(DUNNO_RESPONSE)
    daemon.process.send_signal(15)
    assert daemon.process.wait(60) == 0
    for sock in socks:
        sock.close()
    assert read_status_file(daemon.runtime_dir).records == 800
    assert "internal error" not in daemon.log()


#: A prelude: the event loop is held (blocked, as by a long computation) in its
#: first count of the hand-over while the file named GATE exists, and says so once;
#: each time the policy thread waits for room it logs how many pairs are queued,
#: and once it reads again, how many were left (the queue must then be empty).
HOLD_THE_LOOP = """
import logging, os, time
import trackerd.edges.policy_loop as p
say = logging.getLogger('trackerd').info
count_slice = p.Handover.count_slice
def held_count_slice(self):
    if os.path.exists(GATE):
        say('test: the event loop is held')
        while os.path.exists(GATE):
            time.sleep(0.01)
    count_slice(self)
p.Handover.count_slice = held_count_slice
wait = p.PolicyLoop._wait_for_room
def wait_and_say(self, now):
    say('test: waiting for room, %d queued', len(self.handover._senders))
    wait(self, now)
    if not self.handover.want_room:
        say('test: reading again, %d queued', len(self.handover._senders))
p.PolicyLoop._wait_for_room = wait_and_say
"""


def test_a_busy_event_loop_stops_the_reading_and_loses_nothing(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    """The test holds the event loop (it counts nothing while a gate file exists)
    and fills the hand-over past its bound: the thread stops reading and answering
    while the peers' requests wait (in their sockets, or read in one turn and held
    by their Sessions past REQUESTS_PER_TURN), and once the loop is let go
    every request is answered and counted. The queue's bound is lowered to 8 so
    that the requests sent are many times what one turn of the thread may read
    past it (connections x 2 x REQUESTS_PER_TURN); nothing waits on time."""
    connections, each = 6, 300
    gate = short_tmp / "hold"
    gate.touch()
    # The first count is asked for once a request of each connection waits
    # (BATCH): only then is the loop held, when it has adopted all of them.
    prelude = (
        NEVER_ON_ITS_OWN.replace("10**9", str(connections))
        + "p.MAX_QUEUED = 8\n"
        + f"GATE = {str(gate)!r}\n"
        + HOLD_THE_LOOP
    )
    daemon, path = start(make_daemon, short_tmp, "--status-interval", "3600", prelude=prelude)
    socks = [connect(path, timeout=60) for _ in range(connections)]
    try:
        # One request on each, answered by the thread: every socket is adopted.
        for number, sock in enumerate(socks):
            sock.sendall(request(connections * each + number))
            assert read_replies(sock, 1) == DUNNO_RESPONSE
        wait_for(lambda: "test: the event loop is held" in daemon.log(), what="the hold")
        # All sent at once (42 kB a socket: its buffer holds them, read or not).
        for number, sock in enumerate(socks):
            sock.sendall(b"".join(request(number * each + n) for n in range(each)))
        waits = lambda: re.findall(r"test: waiting for room, (\d+) queued", daemon.log())  # noqa: E731
        # The thread paused, and was still waiting after its 1-second poll for
        # room ended: the queue did not grow meanwhile, so it read nothing.
        queued = wait_for(lambda: len(waits()) >= 2 and waits(), what="two waits for room")
        log = daemon.log()
        assert log.count("the event loop is behind: reading paused") == 1, log[-3000:]
        assert len(set(queued)) == 1, queued
        assert 8 <= int(queued[0]) < connections * (each + 1), queued
        assert "test: reading again" not in log
    finally:
        gate.unlink()
    for sock in socks:
        with sock:
            assert read_replies(sock, each) == DUNNO_RESPONSE * each
    log = daemon.log()
    # Each pause that ended inside _wait_for_room found the queue empty. (A pause
    # can also end between two turns, which logs no line.)
    assert set(re.findall(r"test: reading again, (\d+) queued", log)) <= {"0"}, log[-3000:]
    status = daemon.status()
    total = connections * (each + 1)
    assert (status.records, status.unique_conn_ips) == (total, total)
    assert "internal error" not in log


def test_the_policy_thread_ends_with_the_daemon(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    daemon, path = start(make_daemon, short_tmp)
    assert daemon.process is not None
    idle = connect(path)  # open, quiet: drained and closed at SIGTERM
    with connect(path) as sock:
        sock.sendall(request(1))
        assert read_replies(sock, 1) == DUNNO_RESPONSE
    daemon.process.send_signal(15)
    assert daemon.process.wait(60) == 0
    assert idle.recv(100) == b""
    idle.close()
    log = daemon.log()
    assert "internal error" not in log and "still open at shutdown" not in log
    assert "the policy thread did not end" not in log
    assert read_status_file(daemon.runtime_dir).records == 1


#: A prelude: the hand-over runs out of memory taking the first two batches the C
#: loop hands back, at put_many()'s worst place: the connection IPs queued, the
#: senders not.
SHORT_OF_MEMORY = """
import trackerd.edges.policy_loop as p
class Failing(list):
    left = 2
    def __iadd__(self, other):
        if Failing.left:
            Failing.left -= 1
            raise MemoryError
        return list.__iadd__(self, other)
init = p.Handover.__init__
def init_failing(self, *args):
    init(self, *args)
    self._senders = Failing()
p.Handover.__init__ = init_failing
"""


@pytest.mark.skipif(policy_loop._cpolicy_loop is None, reason="the C extension is not built")
def test_a_hand_over_out_of_memory_keeps_the_pairs_and_loses_nothing(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    """The requests are answered (so they must be counted) when the C loop hands
    their pairs back; a MemoryError queueing them in the hand-over keeps them in
    the thread, which queues them first at its next turn: every pair counted once,
    none misaligned (each connection IP with its own sender), and a log line says
    so. (The C side keeps its queue when its own results fail:
    test_policy_c_loop.py.)"""
    daemon, path = start(make_daemon, short_tmp, prelude=SHORT_OF_MEMORY)
    with connect(path) as sock:
        for n in range(1, 31):
            sock.sendall(request(n))
            assert read_replies(sock, 1) == DUNNO_RESPONSE
    # Counted once memory allows (here, after two failures); a status meanwhile may
    # not count them yet.
    wait_for(lambda: daemon.status().records == 30, what="every answered request counted")
    status = daemon.status()
    assert (status.records, status.unique_conn_ips, status.unique_domains) == (30, 30, 30)
    assert "answered policy requests wait to be counted" in daemon.log()
    assert "internal error" not in daemon.log()
