"""Types of the C extension module trackerd/edges/_cpolicy_loop.c (built optional)."""

class Loop:
    """The policy thread's common case: a wait, and the reads that are one whole request."""

    def __init__(
        self,
        epfd: int,
        names: tuple[bytes, ...],
        max_line: int,
        max_attributes: int,
        buffer: bytearray,
        fast: bytearray,
    ) -> None: ...
    def serve(
        self, timeout_ms: int
    ) -> tuple[
        list[tuple[int, tuple[str | None, ...]]],
        list[tuple[int, int]],
        tuple[int, int, int] | None,
    ]: ...
    def reply(self, fds: list[int], data: bytes) -> list[tuple[int, int]]: ...
