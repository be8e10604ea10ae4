"""Shared fixtures: short temp dirs, and real trackerd processes."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, TypeVar

import pytest

from servertracker.accel import PURE_PYTHON_VARIABLE
from servertracker.connection import DaemonConnection
from servertracker.errors import DaemonUnavailable
from servertracker.status import Status

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 30.0, what: str = "condition") -> T:
    """Poll until condition() is truthy and return it; fail after timeout seconds.

    The default is generous: only a broken promise should reach it, never a busy machine.
    """
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


class LineReader:
    """The lines of a child's pipe, each awaited with a deadline.

    A thread does the blocking reads, so a child that falls silent fails the
    test at its deadline instead of hanging it; the pipe is drained meanwhile.
    """

    def __init__(self, stream: IO[str]) -> None:
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put("")  # end of file

    def readline(self, timeout: float = 30.0, what: str = "a line") -> str:
        """The next line; "" at end of file."""
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None

    def rest(self, timeout: float = 30.0) -> str:
        """Everything until end of file."""
        lines = []
        while line := self.readline(timeout, "the end of the output"):
            lines.append(line)
        return "".join(lines)


#: trackerctl's console script, as a command line for a real process.
TRACKERCTL = [sys.executable, "-m", "servertracker.cli"]


def trackerctl(
    *args: str | bytes,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = 90,
) -> subprocess.CompletedProcess[str]:
    """trackerctl as an operator runs it: a real process (standard input empty unless
    given). Whatever happens, it never prints a traceback."""
    result = subprocess.run(
        [*TRACKERCTL, *args],
        capture_output=True,
        text=True,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        timeout=timeout,
        env=env,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def read_policy_reply(sock: socket.socket) -> bytes:
    """One Postfix policy reply, up to the empty line that ends it; less if the peer
    closed the connection first (a caller that expects a reply asserts on its end)."""
    reply = b""
    while not reply.endswith(b"\n\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        reply += chunk
    return reply


def send_until_closed(sock: socket.socket, data: bytes, timeout: float = 60.0) -> bool:
    """Send data again and again on a non-blocking socket, never reading, until the
    peer closes it (True) or timeout seconds pass (False). When the peer stops
    reading, its replies wait for us and the sends block: poll until it gives up."""
    sock.setblocking(False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            sock.send(data)  # and never a read
        except BlockingIOError:
            time.sleep(0.01)
        except (BrokenPipeError, ConnectionResetError):
            return True
    return False


def remove_tree(path: Path) -> None:
    """rm -rf, again if the daemon wrote a file into the tree meanwhile."""

    def removed() -> bool:
        try:
            shutil.rmtree(path)
            return True
        except OSError:
            return False

    wait_for(removed, what=f"{path} to be removed")


def run_as_nobody(function: Callable[[], int], groups: Sequence[int] = ()) -> int:
    """Run function in a forked child with nobody's uid and gid, and these
    supplementary groups; return its result."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.setgroups(list(groups))
            os.setgid(65534)
            os.setuid(65534)
            code = function()
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temp dir with a short path: AF_UNIX socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="st-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Daemon:
    """A real trackerd process."""

    def __init__(
        self,
        runtime_dir: Path,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        python_prelude: str | None = None,
        log_to_pipe: bool = False,
        runtime_dir_option: bool = True,
        log_level: str | None = "debug",
    ) -> None:
        self.runtime_dir = runtime_dir
        # False: the daemon finds its runtime directory by itself (say from env).
        self.runtime_dir_option = runtime_dir_option
        # None: no --log-level on the command line (say, to set it in a config file).
        self.log_level = log_level
        self.socket_path = runtime_dir / "trackerd.sock"
        self.log_path = runtime_dir.parent / f"{runtime_dir.name}.log"
        self.extra_args = list(extra_args)
        self.env = env
        self.python_prelude = python_prelude
        # A pipe, not a file, when a test limits the daemon's file sizes.
        self.log_to_pipe = log_to_pipe
        self._piped_log: list[bytes] = []
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> Daemon:
        where = ["--runtime-dir", str(self.runtime_dir)] if self.runtime_dir_option else []
        level = ["--log-level", self.log_level] if self.log_level else []
        args = [*where, *level, *self.extra_args]
        if self.python_prelude:
            code = "\n".join(
                [
                    self.python_prelude,
                    "import sys, trackerd.main",
                    f"sys.exit(trackerd.main.main({args!r}))",
                ]
            )
            command = [sys.executable, "-c", code]
        else:
            command = [sys.executable, "-m", "trackerd", *args]
        env = dict(os.environ if self.env is None else self.env)
        if self.log_to_pipe:
            self.process = subprocess.Popen(command, stderr=subprocess.PIPE, env=env)
            pipe = self.process.stderr
            assert pipe is not None
            threading.Thread(
                target=lambda: self._piped_log.extend(iter(pipe.readline, b"")), daemon=True
            ).start()
        else:
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(command, stderr=log, stdout=log, env=env)
        if wait:
            self.wait_ready()
        return self

    # Deadlines here are generous: a loaded machine starts Python slowly, and
    # how fast is never what a test asserts.
    def wait_ready(self, timeout: float = 60.0) -> None:
        def answers() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(
                    f"trackerd exited with {self.process.returncode}:\n{self.log()}"
                )
            try:
                with DaemonConnection(self.socket_path, timeout=1) as conn:
                    conn.ping()
                return True
            except DaemonUnavailable:
                return False

        wait_for(answers, timeout, "trackerd to answer a ping")

    def connect(self, timeout: float = 30.0) -> DaemonConnection:
        return DaemonConnection(self.socket_path, timeout=timeout)

    def status(self) -> Status:
        with self.connect() as conn:
            return conn.status()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)

    def log(self) -> str:
        if self.log_to_pipe:
            return b"".join(self._piped_log).decode(errors="replace")
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@pytest.fixture
def make_daemon(short_tmp: Path) -> Iterator[Callable[..., Daemon]]:
    """Factory for daemons under short_tmp; all are killed at teardown."""
    daemons: list[Daemon] = []

    def make(name: str = "rt", **kwargs: object) -> Daemon:
        daemon = Daemon(short_tmp / name, **kwargs)  # type: ignore[arg-type]
        daemons.append(daemon)
        return daemon

    yield make
    for daemon in daemons:
        if daemon.process and daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait(10)


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    """A running trackerd with its own runtime directory."""
    return make_daemon().start()


@pytest.fixture(params=["C", "pure Python"])
def both_paths(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The test runs twice: its daemons on the C extension's path (where built), and
    on the pure-Python one (SERVERTRACKER_PURE_PYTHON=1 in their environment).
    Use with ``pytestmark = pytest.mark.usefixtures("both_paths")``."""
    if request.param == "C":
        monkeypatch.delenv(PURE_PYTHON_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(PURE_PYTHON_VARIABLE, "1")
    return str(request.param)


def protocol_md_example_frames(heading: str) -> list[bytes]:
    """The frames of one "## heading" section of docs/protocol.md: each example is
    an indented hex dump (its annotation after a run of 3+ spaces), one frame per
    paragraph of indented lines."""
    doc = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    section = doc.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    blocks: list[str] = []
    for line in section.splitlines():
        if line.startswith("    "):
            blocks[-1] += re.split(r"\s{3,}", line.strip())[0].replace(" ", "")
        elif line.strip():
            blocks.append("")
    return [bytes.fromhex(b) for b in blocks if b]
