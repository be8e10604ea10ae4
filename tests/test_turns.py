"""A connection whose bytes are always there (a peer that sends faster than the
daemon counts) reads and counts them without a turn of the event loop each, but
lets the others in at least every SLICE_SECONDS (stream_server.take_turn): another
connection is answered and the watchdog fed while it floods, and every record
counts exactly once, on both paths."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from anyio.abc import UNIXSocketStream

from servertracker import protocol
from tests.conftest import Daemon, wait_for
from tests.test_costly_flood import Flood, received
from tests.test_systemd import NotifyListener
from trackerd.core.tracker import Tracker
from trackerd.edges.msgpack_server import TrackerServer
from trackerd.edges.status_writer import StatusWriter
from trackerd.edges.stream_server import SLICE_SECONDS

#: Small frames of the same few cheap pairs: all cache hits after the first.
PAIRS_PER_FRAME = 16
FRAMES_PER_WRITE = 512
#: Writes sent at most; the test stops the flood as soon as it has seen enough.
MAX_WRITES = 400


def chunk() -> bytes:
    """FRAMES_PER_WRITE columns frames of PAIRS_PER_FRAME pairs, in one write."""
    ips = [f"192.0.2.{i % 4}" for i in range(PAIRS_PER_FRAME)]
    senders = [f"user{i}@example.com" for i in range(PAIRS_PER_FRAME)]
    frame = protocol.encode(protocol.RecordColumns(tuple(ips), tuple(senders)))
    return frame * FRAMES_PER_WRITE


@pytest.mark.usefixtures("both_paths")
def test_a_peer_whose_bytes_are_always_there_lets_the_others_in(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    listener = NotifyListener(str(short_tmp / "notify"))
    env = dict(os.environ, NOTIFY_SOCKET=listener.address, WATCHDOG_USEC="300000")
    daemon = make_daemon(env=env).start()
    wait_for(lambda: "READY=1" in "".join(received(listener)), 60, "READY=1")
    data = chunk()
    flood = Flood(daemon.socket_path, lambda _: data, MAX_WRITES)
    answered_mid_flood = 0
    watchdogs = 0
    try:
        with daemon.connect(timeout=60) as other:
            flood.start()
            wait_for(lambda: other.status().records > 0, 60, "the flood to be counted")
            listener.messages.clear()

            def served_while_flooding() -> bool:
                nonlocal answered_mid_flood, watchdogs
                other.ping()
                other.status()
                # Answered while the flood's bytes were there to read (the peer is
                # still writing): its task let the event loop go.
                assert not flood.done.is_set(), f"the flood ended first: {flood.error!r}"
                answered_mid_flood += 1
                watchdogs = received(listener).count("WATCHDOG=1")
                return answered_mid_flood >= 3 and watchdogs >= 3

            wait_for(served_while_flooding, 120, "answers and watchdog pings during the flood")
            flood.stop.set()
            assert flood.done.wait(120), "the flood's own ping was never answered"
            assert flood.error is None, flood.error
            status = other.status()
    finally:
        flood.stop.set()
        listener.sock.close()
    assert status.records == flood.sent * FRAMES_PER_WRITE * PAIRS_PER_FRAME
    assert (status.unique_conn_ips, status.unique_domains) == (4, 1)


#: Frames of the in-process test, all in the socket's buffer before serving starts.
QUEUED_FRAMES = 120
#: What each frame's counting is made to cost (a busy wait): the frames keep its
#: task busy for QUEUED_FRAMES x this, with the next frame always there to read.
FRAME_COST = 0.001


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_a_connection_whose_frames_are_all_there_takes_turns(tmp_path: Path) -> None:
    """In process, deterministic: every frame is in the socket before the server
    reads, and each costs FRAME_COST to count, so its task never waits to read; it
    must still let another task run, turn after turn, before the last is counted."""
    tracker = Tracker()
    server = TrackerServer(tracker, StatusWriter(tracker, tmp_path))
    for name in ("record_columns", "record_scanned"):  # whichever path this process runs
        counting = getattr(tracker, name)

        def slow(*args: Any, counting: Callable[..., int] = counting) -> int:
            _spin(FRAME_COST)
            return counting(*args)

        setattr(tracker, name, slow)
    ips, senders = ("192.0.2.1",) * PAIRS_PER_FRAME, ("a@example.com",) * PAIRS_PER_FRAME
    frames = protocol.encode(protocol.RecordColumns(ips, senders)) * QUEUED_FRAMES
    total = QUEUED_FRAMES * PAIRS_PER_FRAME
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    turns_while_counting = 0

    async def main() -> None:
        nonlocal turns_while_counting
        stream = await UNIXSocketStream.from_socket(ours)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(server.serve_connection, stream)
            while tracker.records < total:
                await anyio.lowlevel.checkpoint()  # another task's turn
                turns_while_counting += tracker.records > 0
            peer.close()  # end of stream: serve_connection returns

    with peer:
        peer.settimeout(5)
        peer.sendall(frames)  # fits in the socket's buffer: no reader needed yet
        anyio.run(main)
    assert tracker.records == total
    # Counting takes QUEUED_FRAMES x FRAME_COST of the loop's time at least, and a
    # turn ends every SLICE_SECONDS of it: a task that kept the loop while its bytes
    # were there would give the other one a turn or two at most.
    assert turns_while_counting >= QUEUED_FRAMES * FRAME_COST / SLICE_SECONDS / 4
