"""What a connection's protocol is to the transport that serves it: a Session.

The transport (policy_loop.py, the policy listener's own thread) reads, keeps
the timers and the flow control, and calls the Session with each read; the
Session parses, answers with ``write`` and says what to do next. Also: how an
unexpected error in serving one connection is logged (by type and place, never
by its text, which may hold what a peer sent).
"""

from __future__ import annotations

import logging
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


class Session(ABC):
    """One connection's protocol: what to do with the bytes that arrive."""

    #: Sends a reply (the transport's write; set before the first byte arrives).
    write: Callable[[bytes], object]
    #: True while a reply waits for the peer to read it: handle no more frames
    #: (what is received meanwhile waits in the decoder) until resume().
    paused = False
    #: True when a call stopped at its cap of frames with more perhaps complete:
    #: nothing more is read, and resume() goes on in a later turn of the loop, so
    #: that a peer that pipelines cannot keep the others waiting.
    backlog = False
    #: Its reply to each request the C loop serves (policy_loop.py's C loop reads,
    #: parses, records and answers a read that is one whole Postfix policy request
    #: on an idle connection, and calls served()), or None: every read goes to
    #: received().
    short_reply: bytes | None = None

    def served(self, count: int) -> None:
        """count reads, each one whole request, were served by the C loop (recorded
        and answered with short_reply): count them as received() would."""
        raise NotImplementedError

    def served_by_c(self, first_instance: Callable[[str], bool]) -> None:
        """The C loop serves this connection; first_instance(instance) is its memory
        of the connection's recent messages, which received() must use too: False
        if the instance was seen, else True (and it is remembered)."""
        raise NotImplementedError

    @abstractmethod
    def received(self, data: memoryview) -> bool:
        """Copy data in and handle what it completes; False closes the connection.

        data is overwritten as soon as this returns."""

    @abstractmethod
    def resume(self) -> bool:
        """The peer read the replies (paused is False again), or frames wait past the
        cap (backlog): handle the frames that waited; False closes the connection."""

    @abstractmethod
    def ended(self) -> None:
        """The peer closed its side: handle what is left, paused or not."""

    @abstractmethod
    def in_progress(self) -> bool:
        """Whether a frame is unfinished."""

    @abstractmethod
    def finished(self) -> int:
        """How many frames have been finished."""

    @abstractmethod
    def closed(self) -> None:
        """The connection is gone: deal with the complete frames not handled yet
        (the peer sent them), overwrite what is left of an unfinished one."""


def log_failure(exc: BaseException) -> None:
    """Log an unexpected error by its type and where it happened, never by its text."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    log.error("closing a connection after an internal error: %s%s", type(exc).__name__, where)
