"""A real redis-server for the fleet tests, on a Unix socket in a short temp dir.

Skips when Debian's redis-server is not installed (CI installs it, .ci/run).
MonitorCapture records the raw MONITOR stream of a whole run, to search later.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest
import redis

from tests.conftest import wait_for

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket_path = directory / "redis.sock"
        self.url = f"unix://{self.socket_path}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        if not Path(REDIS_SERVER).exists():
            pytest.skip("redis-server is not installed (Debian package redis-server)")
        self.directory.mkdir(exist_ok=True)
        with open(self.directory / "redis.log", "ab") as log:
            self.process = subprocess.Popen(
                [
                    REDIS_SERVER,
                    "--port", "0",
                    "--unixsocket", str(self.socket_path),
                    "--unixsocketperm", "700",
                    "--save", "",
                    "--appendonly", "yes",
                    "--appendfsync", "always",
                    "--dir", str(self.directory),
                ],
                stdout=log,
                stderr=log,
            )  # fmt: skip
        wait_for(self._answers, 15, "redis-server to answer")
        return self

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"redis-server exited with {self.process.returncode}")
        try:
            return bool(self.client().ping())
        except redis.exceptions.ConnectionError:
            return False

    def client(self, **credentials: str) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket_path), socket_timeout=10, **credentials)

    def aof_bytes(self) -> bytes:
        """Everything Redis wrote to its append-only files."""
        return b"".join(
            path.read_bytes()
            for path in sorted(self.directory.rglob("*"))
            if path.is_file() and path.name not in ("redis.log",) and not path.is_socket()
        )

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            self.process.wait(15)


class MonitorCapture:
    """The raw bytes of a MONITOR connection, until the server goes away or stop()."""

    def __init__(self, server: RedisServer) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(str(server.socket_path))
        self._sock.sendall(b"MONITOR\r\n")
        self.data = bytearray()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        wait_for(lambda: self.data.startswith(b"+OK"), 10, "MONITOR to start")

    def _read(self) -> None:
        while True:
            try:
                chunk = self._sock.recv(1 << 16)
            except OSError:
                return
            if not chunk:
                return
            self.data += chunk

    def stop(self) -> bytes:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(10)
        self._sock.close()
        return unescape_monitor(bytes(self.data))


_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"a": b"\a", b"b": b"\b", b'"': b'"'}


def unescape_monitor(data: bytes) -> bytes:
    """MONITOR shows arguments quoted, binary bytes as \\xHH: turn them back into bytes."""
    out = bytearray()
    i = 0
    while i < len(data):
        byte = data[i : i + 1]
        if byte == b"\\" and i + 1 < len(data):
            nxt = data[i + 1 : i + 2]
            if nxt == b"x" and i + 3 < len(data):
                out += bytes([int(data[i + 2 : i + 4], 16)])
                i += 4
                continue
            out += _ESCAPES.get(nxt, nxt)
            i += 2
            continue
        out += byte
        i += 1
    return bytes(out)
