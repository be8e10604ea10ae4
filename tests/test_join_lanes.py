"""Which turn (lane) the daemon counts columns messages in, and what it joins
(msgpack_server._join_following()): issue 12's guarantee that a batch never waits
behind large frames holds with the join (rev-hostile findings 1 and 4), on both
paths. The real server's dispatch on a real decoder, observed where it counts."""

from __future__ import annotations

import struct
from collections.abc import Sequence

import anyio
import msgpack
import pytest

from servertracker import protocol
from tests.test_accel import both_trackers, counted, needs_c
from trackerd.core.tracker import Tracker
from trackerd.edges import msgpack_server
from trackerd.edges.msgpack_server import BATCH_FRAME, JOIN_PAIRS, Interned, TrackerServer
from trackerd.edges.stream_server import Connection

pytestmark = needs_c


class _Writer:
    """What _dispatch_all() asks of the status writer."""

    def notify_changed(self) -> None:
        pass


class Observed(TrackerServer):
    """A TrackerServer noting, for each message it counts, its pairs and the turn held."""

    def __init__(self, tracker: Tracker) -> None:
        super().__init__(tracker, _Writer())  # type: ignore[arg-type]
        self.counts: list[tuple[int, str]] = []

    def _lane(self) -> str:
        if self._counting.locked():
            return "large"
        return "batch" if self._counting_batch.locked() else "none"

    async def _record_scanned(
        self, connection: Connection, columns: msgpack_server.Columns
    ) -> None:
        self.counts.append((len(columns), self._lane()))
        await super()._record_scanned(connection, columns)

    async def _record(
        self,
        connection: Connection,
        conn_ips: Sequence[str | None],
        senders: Sequence[str | None],
    ) -> None:
        self.counts.append((len(conn_ips), self._lane()))
        await super()._record(connection, conn_ips, senders)


def columns_frame(pairs: int, tag: str, wide: bool = True) -> bytes:
    """A columns message of pairs pairs: about 28 bytes a pair if wide, else 4."""
    if wide:
        ips = [f"192.0.2.{i % 250}" for i in range(pairs)]
        senders = [f"u{i}@{tag}{i % 97}.example" for i in range(pairs)]
    else:
        ips, senders = ["a"] * pairs, ["b"] * pairs
    body = msgpack.packb([1, "columns", ips, senders])
    return struct.pack(">I", len(body)) + body


def dispatch(tracker: Tracker, frames: list[bytes]) -> list[tuple[int, str]]:
    """The frames read at once by one connection and dispatched: each count's pairs
    and turn."""
    server = Observed(tracker)
    decoder = protocol.MessageDecoder()
    decoder.receive_data(b"".join(frames))
    anyio.run(server._dispatch_all, None, decoder, Interned(), Connection())  # type: ignore[arg-type]
    return server.counts


def test_a_batch_turn_joins_only_within_a_batch_and_large_frames_take_their_own() -> None:
    """Two small frames joined in the batch turn (together within BATCH_FRAME); a
    frame larger than BATCH_FRAME after them counted in the large frames' turn (and
    joined there with the next, within JOIN_PAIRS); batch-sized ones that two would
    exceed BATCH_FRAME counted one by one."""
    frames = [
        columns_frame(300, "f"),
        columns_frame(301, "g"),
        columns_frame(2500, "d"),
        columns_frame(1200, "a"),
        columns_frame(1201, "b"),
        columns_frame(1202, "c"),
    ]
    sizes = [len(f) - 4 for f in frames]
    assert sizes[0] + sizes[1] + sizes[2] > BATCH_FRAME > sizes[0] + sizes[1]
    assert sizes[2] > BATCH_FRAME > sizes[3] and sizes[4] + sizes[5] > BATCH_FRAME
    c_tracker, python_tracker = both_trackers()
    c_counts = dispatch(c_tracker, frames)
    assert c_counts == [
        (601, "batch"),
        (3700, "large"),
        (1201, "large"),  # taken to join, past JOIN_PAIRS: counted alone, in that turn
        (1202, "batch"),
    ]
    assert dispatch(python_tracker, frames) == [
        (300, "batch"),
        (301, "batch"),
        (2500, "large"),
        (1200, "batch"),
        (1201, "batch"),
        (1202, "batch"),
    ]
    assert counted(c_tracker) == counted(python_tracker)


@pytest.mark.parametrize("lane_pairs", [3000, 20_000])
def test_a_joined_message_never_holds_more_than_join_pairs(lane_pairs: int) -> None:
    """Frames of many short pairs (small in bytes): one that would take a joined
    message past JOIN_PAIRS is counted on its own, in the same turn, in order; a
    frame larger than JOIN_PAIRS by itself is never joined to."""
    frames = [columns_frame(lane_pairs, "x", wide=False) for _ in range(3)]
    lane = "batch" if len(frames[0]) - 4 <= BATCH_FRAME else "large"
    c_tracker, python_tracker = both_trackers()
    c_counts = dispatch(c_tracker, frames)
    assert c_counts == [(lane_pairs, lane)] * 3
    assert all(pairs <= max(JOIN_PAIRS, lane_pairs) for pairs, _ in c_counts)
    assert dispatch(python_tracker, frames) == [(lane_pairs, lane)] * 3
    assert counted(c_tracker) == counted(python_tracker)
