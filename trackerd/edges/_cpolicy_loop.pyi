"""Types of the C extension module trackerd/edges/_cpolicy_loop.c (built optional)."""

class Loop:
    """The policy thread's common case: the waits, and every whole request of an idle
    connection read, parsed, queued and answered."""

    def __init__(
        self,
        epfd: int,
        names: tuple[bytes, ...],
        max_line: int,
        max_attributes: int,
        buffer: bytearray,
        fast: bytearray,
        reply: bytes,
        delay: float,
    ) -> None: ...
    def serve(
        self, timeout_ms: int, limit: int
    ) -> tuple[
        list[tuple[int, int, float]],
        list[tuple[int, int]],
        tuple[int, int, int] | None,
        list[tuple[int, int]],
        tuple[list[str | None], list[str | None], float] | None,
    ]: ...
    def open(self, fd: int) -> None: ...
    def close(self, fd: int) -> None: ...
    def first(self, fd: int, instance: str, /) -> bool: ...
