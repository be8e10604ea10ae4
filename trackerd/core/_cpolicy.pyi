"""Types of the C extension module trackerd/core/_cpolicy.c (built optional)."""

from typing_extensions import Buffer

class Parser:
    """The policy decoder's short way for one set of kept names."""

    def __init__(self, names: tuple[bytes, ...], max_line: int, max_attributes: int) -> None: ...
    def parse(self, data: Buffer) -> tuple[str | None, ...] | None: ...
