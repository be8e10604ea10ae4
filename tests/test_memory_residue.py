"""What a peer sent is not left behind in the daemon's memory once its connection is gone.

A real daemon is sent a marked record (msgpack) and a marked Postfix policy request,
each on a connection that is then closed; other traffic follows; then the daemon's
writable anonymous memory (heap and mmap arenas) is read through /proc/PID/mem and
searched for the markers (docs/threat-model.md, issue 12 §7). Root, or the parent
with ptrace rights, can read it; elsewhere the test is skipped. It runs on both
paths: the C extension's and the pure-Python reference's.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from servertracker import protocol
from tests.conftest import Daemon, read_policy_reply, wait_for

#: Other traffic after the marked connections: enough to run the allocator through
#: its free lists, bounded so the test takes seconds.
OTHER_RECORDS = 10_000
OTHER_REQUESTS = 500
CHUNK = 1 << 20
#: Writable anonymous regions larger than this are not searched: no process here
#: holds that much, but a sanitizer reserves its shadow so (AddressSanitizer's
#: high shadow is 14 TiB on x86-64, touched a few pages at a time), and it holds
#: the addressability of memory, never its contents.
MAX_REGION = 1 << 36


def _anonymous_writable(pid: int) -> Iterator[tuple[int, int]]:
    """(start, end) of the process's writable memory not backed by a file (but a
    sanitizer's shadow: MAX_REGION)."""
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        perms = fields[1]
        name = fields[5] if len(fields) == 6 else ""
        if not perms.startswith("rw") or (name and name != "[heap]"):
            continue
        start, end = (int(part, 16) for part in fields[0].split("-"))
        if end - start <= MAX_REGION:
            yield start, end


def _found(pid: int, markers: list[bytes]) -> set[bytes]:
    """The markers found in the process's writable anonymous memory."""
    found: set[bytes] = set()
    overlap = max(len(marker) for marker in markers)
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for start, end in _anonymous_writable(pid):
            at, tail = start, b""
            while at < end:
                size = min(CHUNK, end - at)
                try:
                    mem.seek(at)
                    chunk = tail + mem.read(size)
                except OSError:
                    break  # unmapped meanwhile (an arena let go): nothing to find there
                found.update(marker for marker in markers if marker in chunk)
                tail = chunk[-overlap:]
                at += size
    return found


def _policy_request(sender: str, instance: str, recipient: str) -> bytes:
    return (
        f"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=198.51.100.7\n"
        f"sender={sender}\ninstance={instance}\nrecipient={recipient}\n\n"
    ).encode()


def _ask(sock: socket.socket, request: bytes) -> None:
    sock.sendall(request)
    assert read_policy_reply(sock).endswith(b"\n\n"), "the policy listener closed the connection"


def _other_traffic(daemon: Daemon, policy_path: Path) -> None:
    """Records and policy requests, with values shaped like the marked ones."""
    with daemon.connect() as conn:
        batch: list[protocol.Pair] = []
        for number in range(OTHER_RECORDS):
            ip = f"10.{number >> 16 & 255}.{number >> 8 & 255}.{number & 255}"
            batch.append((ip, f"u@o{secrets.token_hex(10)}.example"))
            if len(batch) == 500:
                conn.record(batch)
                batch = []
        conn.ping()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(policy_path))
        for number in range(OTHER_REQUESTS):
            token = secrets.token_hex(10)
            _ask(sock, _policy_request(f"u@q{token}.example", f"I{number}", f"s{token}@x"))


def test_received_bytes_are_not_left_in_memory(
    make_daemon: Callable[..., Daemon], short_tmp: Path, both_paths: str
) -> None:
    policy_path = short_tmp / "policy.sock"
    daemon = make_daemon(extra_args=["--postfix-policy-socket", str(policy_path)]).start()
    if both_paths == "pure Python":  # the path this run checks is the daemon's
        wait_for(lambda: "hot path: pure Python" in daemon.log(), what="the pure-Python path")
    assert daemon.process is not None
    pid = daemon.process.pid
    try:
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            mem.seek(next(_anonymous_writable(pid))[0])
            mem.read(1)
    except (OSError, StopIteration):
        pytest.skip("cannot read the daemon's memory here (needs root or ptrace rights)")

    # Made here, sent only over the sockets: nowhere else could the daemon get them.
    record_marker = f"m{secrets.token_hex(10)}"
    policy_marker = f"p{secrets.token_hex(10)}"
    recipient_marker = f"r{secrets.token_hex(10)}"
    # As the reviewer did: the marked connections stay open (idle) while others
    # send, are closed, and more traffic follows.
    with daemon.connect() as marked, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as policy:
        marked.record([("203.0.113.77", f"u@{record_marker}.example")])
        marked.ping()
        policy.settimeout(10)
        policy.connect(str(policy_path))
        _ask(policy, _policy_request(f"u@{policy_marker}.example", "AB12", f"{recipient_marker}@x"))
        _other_traffic(daemon, policy_path)
    _other_traffic(daemon, policy_path)
    status = daemon.status()
    assert status.records >= 2 + 2 * OTHER_RECORDS  # every marked value was counted

    markers = [m.encode() for m in (record_marker, policy_marker, recipient_marker)]
    # The search works: the runtime directory's path (from argv) is in the heap.
    known = str(daemon.runtime_dir).encode()
    assert _found(pid, [*markers, known]) == {known}
    assert daemon.process.poll() is None  # read from the live daemon
