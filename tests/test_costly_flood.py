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
    """Sends costly frames until told to stop, then a ping; notes its pong."""

    def __init__(self, socket_path: Path) -> None:
        super().__init__(daemon=True)
        self.socket_path = socket_path
        self.stop = threading.Event()
        self.frames_sent = 0
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(120)
                sock.connect(os.fspath(self.socket_path))
                while not self.stop.is_set() and self.frames_sent < MAX_FRAMES:
                    sock.sendall(flood_frame(self.frames_sent))
                    self.frames_sent += 1
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
    sent = flood.frames_sent * PAIRS_PER_FRAME
    assert status.records == sent
    assert status.unique_conn_ips == sent
    assert mid_frame and watchdogs_during_flood >= 3
