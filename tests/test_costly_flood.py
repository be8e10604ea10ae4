"""1 MiB frames of the costliest names on one connection (issue 12 §1): another
connection is answered while a frame is being counted, the watchdog keeps coming,
and every record of every frame counts exactly once."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from fuzz.hostile_names import flood_pairs
from servertracker import protocol
from tests.conftest import Daemon, wait_for
from tests.test_systemd import NotifyListener

PAIRS_PER_FRAME = 2000
#: Frames sent at most; the test stops the flood as soon as it has seen enough.
MAX_FRAMES = 40


def flood_frame(number: int) -> bytes:
    """A frame of distinct costly senders (no cache hit) from distinct IPs."""
    frame = protocol.encode(protocol.Record(flood_pairs(number, PAIRS_PER_FRAME)))
    assert len(frame) <= protocol.MAX_MESSAGE_SIZE + 4
    assert len(frame) > protocol.MAX_MESSAGE_SIZE // 2  # a large frame, as the issue's
    return frame


class Flood(threading.Thread):
    """Sends data(n) for n = 0, 1, ... (at most `most` sends) until told to stop,
    then a ping; notes its pong. By default costly frames (flood_frame)."""

    def __init__(
        self,
        socket_path: Path,
        data: Callable[[int], bytes] = flood_frame,
        most: int = MAX_FRAMES,
    ) -> None:
        super().__init__(daemon=True)
        self.socket_path = socket_path
        self.data = data
        self.most = most
        self.stop = threading.Event()
        self.sent = 0
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(120)
                sock.connect(os.fspath(self.socket_path))
                while not self.stop.is_set() and self.sent < self.most:
                    sock.sendall(self.data(self.sent))
                    self.sent += 1
                sock.sendall(protocol.encode(protocol.Ping()))
                decoder = protocol.MessageDecoder(sent_by=protocol.Peer.DAEMON)
                while (message := decoder.next_message()) is protocol.NEED_DATA:
                    decoder.receive_data(sock.recv(65536))
                assert isinstance(message, protocol.Pong), message
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.done.set()


def received(listener: NotifyListener) -> list[str]:
    """Every notification so far, without waiting for a quiet moment (the pings
    come more often than NotifyListener.collect() waits for one)."""
    listener.sock.setblocking(False)
    try:
        while True:
            listener.messages.append(listener.sock.recv(4096).decode())
    except BlockingIOError:
        return listener.messages
    finally:
        listener.sock.settimeout(0.2)


def test_a_costly_flood_leaves_others_served_and_the_watchdog_fed(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    listener = NotifyListener(str(short_tmp / "notify"))
    env = dict(os.environ, NOTIFY_SOCKET=listener.address, WATCHDOG_USEC="300000")
    daemon = make_daemon(env=env).start()
    wait_for(lambda: "READY=1" in "".join(received(listener)), 60, "READY=1")
    flood = Flood(daemon.socket_path)
    mid_frame: list[int] = []
    watchdogs_during_flood = 0
    try:
        with daemon.connect(timeout=60) as other:
            flood.start()
            wait_for(lambda: other.status().records > 0, 60, "the flood to be counted")
            listener.messages.clear()

            def served_while_flooding() -> bool:
                nonlocal watchdogs_during_flood
                other.ping()  # answered while the flood goes on
                records = other.status().records
                if records % PAIRS_PER_FRAME:
                    mid_frame.append(records)  # a frame partly counted: it yielded
                watchdogs_during_flood = received(listener).count("WATCHDOG=1")
                assert not flood.done.is_set(), f"the flood ended first: {flood.error!r}"
                return bool(mid_frame) and watchdogs_during_flood >= 3

            wait_for(served_while_flooding, 120, "answers and watchdog pings during the flood")
            flood.stop.set()
            assert flood.done.wait(120), "the flood's own ping was never answered"
            assert flood.error is None, flood.error
            status = other.status()
    finally:
        flood.stop.set()
        listener.sock.close()
    # Each record of each frame counted once: every IP is distinct.
    sent = flood.sent * PAIRS_PER_FRAME
    assert status.records == sent
    assert status.unique_conn_ips == sent
    assert mid_frame and watchdogs_during_flood >= 3


#: A priming frame: the same cheap pair again and again, all cache hits after the
#: first (issue 12 §1: such a frame once grew the slice for the frames after it).
PRIME_PAIRS = 40_000
PRIME_PAIR = ("192.0.2.1", "a@example.com")
#: Rounds of (priming frame, costly frame) sent at most.
MAX_ROUNDS = 8


def test_a_costly_frame_after_a_frame_of_cheap_repeats_is_still_sliced(
    make_daemon: Callable[..., Daemon],
) -> None:
    """Another connection is answered while a costly frame that follows a frame of
    cheap repeats is counted: its status shows that frame partly counted."""
    prime = protocol.encode(protocol.Record([PRIME_PAIR] * PRIME_PAIRS))
    assert len(prime) <= protocol.MAX_MESSAGE_SIZE + 4
    round_size = PRIME_PAIRS + PAIRS_PER_FRAME
    daemon = make_daemon().start()
    with daemon.connect(timeout=60) as other, socket.socket(socket.AF_UNIX) as sender:
        sender.settimeout(60)
        sender.connect(os.fspath(daemon.socket_path))
        mid_costly: list[int] = []
        for number in range(MAX_ROUNDS):
            # One round at a time: the priming frame counted whole first.
            sender.sendall(prime)
            primed = number * round_size + PRIME_PAIRS
            wait_for(
                lambda primed=primed: other.status().records >= primed,
                60,
                "the priming frame to be counted",
            )
            sender.sendall(flood_frame(number))
            while (records := other.status().records) < (number + 1) * round_size:
                if records % round_size > PRIME_PAIRS:
                    mid_costly.append(records)  # answered between two slices of it
            if mid_costly:
                break
        assert mid_costly, "no reply came while a costly frame was counted"
        assert other.status().records == (number + 1) * round_size


#: Connections that each send one large frame of costly values.
LARGE_SENDERS = 4
#: A client library's batch (recorder.DEFAULT_BATCH_SIZE pairs): about 17 KiB.
BATCH_PAIRS = 512


def test_a_batch_is_counted_before_large_costly_frames_queued_before_it(
    make_daemon: Callable[..., Daemon],
) -> None:
    """Batch-sized frames do not wait for their turn behind every large frame."""
    daemon = make_daemon().start()
    batch = [(f"192.0.2.{i % 250 + 1}", f"u@host{i}.example") for i in range(BATCH_PAIRS)]
    frame = protocol.encode(protocol.Record(batch))
    assert 1024 < len(frame) <= 64 * 1024
    senders = [socket.socket(socket.AF_UNIX) for _ in range(LARGE_SENDERS)]
    try:
        with daemon.connect(timeout=60) as honest:
            for number, sender in enumerate(senders):
                sender.settimeout(60)
                sender.connect(os.fspath(daemon.socket_path))
                sender.sendall(flood_frame(number))
            wait_for(lambda: honest.status().records > 0, 60, "the large frames to be counted")
            with socket.socket(socket.AF_UNIX) as worker:
                worker.settimeout(60)
                worker.connect(os.fspath(daemon.socket_path))
                # The status reply comes after the batch is counted (one connection,
                # in order).
                worker.sendall(frame + protocol.encode(protocol.StatusRequest()))
                decoder = protocol.MessageDecoder(sent_by=protocol.Peer.DAEMON)
                while (reply := decoder.next_message()) is protocol.NEED_DATA:
                    decoder.receive_data(worker.recv(65536))
            assert isinstance(reply, protocol.StatusReply), reply
            records = reply.status.records
            large = LARGE_SENDERS * PAIRS_PER_FRAME
            assert records < large + BATCH_PAIRS, "the batch waited for every large frame"
            wait_for(lambda: honest.status().records == large + BATCH_PAIRS, 120, "all counted")
    finally:
        for sender in senders:
            sender.close()
