"""Types of the C extension module _record_queue.c (record_queue.py's RecordQueue and
protocol/encoding.py's columns frame); it may be absent (servertracker/accel.py)."""

from collections.abc import Callable, Sequence
from typing import Any, Final

LONG_VALUE: Final[int]
MAX_MESSAGE_SIZE: Final[int]
MAX_PAIRS: Final[int]

class RecordQueue:
    batch_size: int
    sleeping: bool
    idle: bool
    started: bool
    @property
    def max_buffered(self) -> int: ...
    @property
    def max_long_chars(self) -> int: ...
    @property
    def recorded(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    @property
    def dropped_full(self) -> int: ...
    @property
    def dropped_long(self) -> int: ...
    @property
    def long_queued(self) -> int: ...
    @property
    def long_sent(self) -> int: ...
    def __init__(
        self,
        max_buffered: int,
        max_long_chars: int,
        batch_size: int,
        wake: Callable[[], object],
        start: Callable[[], object],
        clean: Callable[[Any], str | None],
        cut: Callable[[str], str],
    ) -> None: ...
    def record(self, conn_ip: str | None, sender: str | None) -> None: ...
    def extend(self, conn_ips: list[str | None], senders: list[str | None]) -> None: ...
    def take(self, count: int) -> tuple[list[str | None], list[str | None]]: ...
    def snapshot(self) -> tuple[list[str | None], list[str | None]]: ...
    def __len__(self) -> int: ...

def encode_columns(
    conn_ips: Sequence[str | None], senders: Sequence[str | None]
) -> bytes | None: ...
