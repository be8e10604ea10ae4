"""Redis's best use as bench.compare's competitor: what an expert would write with
Redis, made as strong as we can (see run_redis). Needs Debian's redis-server and
hiredis (the bench extra: ``pip install -e '.[bench]'``).

The workers speak RESP on a Unix socket themselves and parse the replies with
hiredis's Reader (C), rather than through redis-py's connection: that leaves
redis-py's per-command Python out of the workers' CPU, and makes hiredis's use
certain rather than a matter of which parser redis-py picked.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.workload import Run, Workload, cpu_seconds, fork_workers, hashers
from servertracker.batch_encoder import BULK_TABLE_ENTRIES

SET_NAMES = ("conn_ips", "domains", "ip_servers")
RECORDS_NAME = "records"
_UNSEEN = (-1, b"")  # a sender memo's default: not hashed yet
REDIS_SLICE = 1_000  # records hashed per multi-member SADD
#: Entries of each of a Redis worker's digest memos (trackerd's bulk table size).
REDIS_MEMO = BULK_TABLE_ENTRIES
#: How many slices' replies a worker may leave unread while it goes on: 0 is no bound
#: (read at the end: the socket's buffers and redis-server's output buffer hold a few
#: bytes a command); 1 waits for each slice's replies before hashing the next.
PIPELINED = 0
WAITS = 1


def hiredis_available() -> bool:
    """Whether hiredis (redis-py's C reply parser, which the workers use) imports."""
    try:
        import hiredis  # noqa: F401  (a benchmark-only dependency)
    except ImportError:
        return False
    return True


class Connection:
    """A RESP connection on a Unix socket, replies parsed by hiredis (C)."""

    def __init__(self, path: Path) -> None:
        import hiredis  # a benchmark-only dependency

        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.reader = hiredis.Reader()
        self.error = hiredis.ReplyError

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def replies(self, count: int) -> list[object]:
        """The next ``count`` replies, waiting for them; raise on an error reply."""
        got: list[object] = []
        while len(got) < count:
            reply = self.reader.gets()
            if reply is False:  # hiredis: not a whole reply yet
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("redis-server closed the connection")
                self.reader.feed(data)
                continue
            if isinstance(reply, self.error):
                raise RuntimeError(f"redis-server: {reply}")
            got.append(reply)
        return got

    def call(self, *args: bytes) -> object:
        """One command, its reply."""
        self.send(command(*args))
        return self.replies(1)[0]

    def close(self) -> None:
        self.sock.close()


def command(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


class RedisServer:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="stbr-", dir="/tmp"))
        self.socket = self.dir / "redis.sock"
        self.process = subprocess.Popen(
            [
                *("redis-server", "--port", "0", "--unixsocket", str(self.socket)),
                *("--unixsocketperm", "700", "--save", "", "--appendonly", "no"),
                *("--dir", str(self.dir)),
            ],
            stdout=subprocess.DEVNULL,
        )
        # The socket file appears at bind(), a moment before listen(): wait for
        # a PING to be answered, not merely for the file.
        deadline = time.monotonic() + 10
        while True:
            try:
                conn = Connection(self.socket)
                try:
                    if conn.call(b"PING") == b"PONG":
                        break
                finally:
                    conn.close()
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.01)

    def counts(self) -> tuple[tuple[int, ...], int]:
        """SCARD of each set, and the records count."""
        conn = Connection(self.socket)
        try:
            cards = tuple(int(str(conn.call(b"SCARD", name.encode()))) for name in SET_NAMES)
            records = conn.call(b"GET", RECORDS_NAME.encode())
            return cards, int(records) if isinstance(records, bytes) else 0
        finally:
            conn.close()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def run_redis(load: Workload, window: int = PIPELINED, repeats: bool = False) -> Run:
    """Redis's best use, as an expert would write it: the competitor at its strongest.

    Each worker hashes the domain part, lowercased (no other normalising, as the
    original's callers pass it), and the connection IP with keyed BLAKE2b, in slices
    of 1,000 records, in a loop with its methods bound once and one branch per
    sender. A digest is memoised per worker (connection IPs and senders apart),
    keyed by hash() of the connection IP and of the sender's domain part (a sender
    with an "@" is cut to what follows its last "@" first, one without is keyed as
    it is), never by the text itself, as trackerd's worker tables (its worker too
    cuts a sender to its domain part before numbering it), in dicts of at most
    REDIS_MEMO entries, cleared when full. Keying by the part, not the whole
    sender, is what lets the memo hit on the ``user@domain`` forms, whose whole
    senders are nearly all distinct (of the variants timed in one process with no
    send, this one loop was the fastest over the forms taken together). Every
    member is an 8-byte digest, so the slice's multi-member SADDs (one per
    category) and one INCRBY of the records count are written as RESP bytes
    directly, with no per-argument packing, and sent in one send on one
    Unix-socket connection: at most four commands per 1,000 records, no
    transaction. A digest the memo already holds was sent already, and SADD of a
    member a set holds changes nothing, so a repeat is not sent again (its record
    still counts in the INCRBY): redis-server inserts each worker's distinct
    values once, not every record's (``repeats=True`` sends every record's
    digests, as this competitor did before 2026-11-26's bench work). The worker
    does not wait for a slice's replies before hashing the next (``window``:
    PIPELINED, the default, reads them all at the end and checks each; WAITS, one
    round trip per slice, as before); hiredis parses them (C). redis-server (no
    persistence) does only the set insertions and the sum.

    Side by side (docs/performance-history.md, "bench.compare's harness"), not resending
    repeats took redis-server's CPU from 0.5-0.8 to 0.2-0.3 µs a record, and
    pipelining alone made no difference beyond the noise; both are kept, the
    strongest Redis this harness knows.
    """
    server = RedisServer()
    salt = secrets.token_bytes(32)
    try:
        cpu_before = cpu_seconds(server.process.pid)
        start = time.perf_counter()

        def work(w: int) -> bool:
            return _redis_worker(server.socket, salt, load.shares[w], window, repeats)

        worker_cpu = fork_workers(work)
        got, records = server.counts()
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds(server.process.pid) - cpu_before
        assert got == load.distinct, f"redis counted {got}, expected {load.distinct}"
        assert records == load.total, f"redis counted {records} records"
        return Run(elapsed, cpu, worker_cpu)
    finally:
        server.stop()


def _redis_worker(
    path: Path,
    salt: bytes,
    share: Sequence[tuple[str, str]],
    window: int = PIPELINED,
    repeats: bool = False,
) -> bool:
    """One worker of run_redis: hash (memoised), then SADD and INCRBY each slice in
    a single send; read the replies after every ``window`` slices (0: at the end).
    A digest found in the memo was sent already, and is sent again only if
    ``repeats``."""
    conn = Connection(path)
    send, replies = conn.send, conn.replies
    unread: list[int] = []  # each sent slice's count of commands, replies not read yet
    ip_hasher, domain_hasher, literal_hasher = hashers(salt)
    ip_copy, domain_copy, literal_copy = ip_hasher.copy, domain_hasher.copy, literal_hasher.copy
    names = [name.encode() for name in SET_NAMES]
    records = RECORDS_NAME.encode()
    # hash() of the IP or domain part -> its digest; a sender's also says its set
    # (None: no set).
    ip_memo: dict[int, bytes] = {}
    sender_memo: dict[int, tuple[int, bytes] | None] = {}
    for first in range(0, len(share), REDIS_SLICE):
        members: tuple[list[bytes], list[bytes], list[bytes]] = ([], [], [])
        add_ip = members[0].append
        if len(ip_memo) > REDIS_MEMO - REDIS_SLICE:
            ip_memo.clear()
        if len(sender_memo) > REDIS_MEMO - REDIS_SLICE:
            sender_memo.clear()
        get_ip, get_sender = ip_memo.get, sender_memo.get
        chunk = share[first : first + REDIS_SLICE]
        for ip, value in chunk:
            key = hash(ip)
            digest = get_ip(key)
            if digest is None:
                h = ip_copy()
                h.update(ip.encode())
                digest = ip_memo[key] = h.digest()
                add_ip(digest)
            elif repeats:
                add_ip(digest)
            # As trackerd's worker, cut to the domain part before the memo (whole
            # senders are nearly all distinct; their domains repeat): what follows
            # the last "@" (a bracketed sender's ">" kept, to spare a call), or the
            # value as it is when it has no "@" (the domain form, a literal, "<>").
            if "@" in value:
                value = value.rpartition("@")[2]
            key = hash(value)
            found = get_sender(key, _UNSEEN)
            if found is _UNSEEN:
                found = None
                # The original's callers pass the domain part; take it, unnormalised.
                part = value.rstrip(">")
                if part and part != "<":
                    if part[0] == "[":
                        h = literal_copy()
                        h.update(part.encode())
                        found = (2, h.digest())
                    else:
                        h = domain_copy()
                        h.update(part.lower().rstrip(".").encode())
                        found = (1, h.digest())
                sender_memo[key] = found
                if found is not None:
                    members[found[0]].append(found[1])
            elif repeats and found is not None:
                members[found[0]].append(found[1])
        out: list[bytes] = []
        for name, digests in zip(names, members, strict=True):
            if digests:
                # SADD name member...: every member is an 8-byte digest.
                out.append(
                    b"*%d\r\n$4\r\nSADD\r\n$%d\r\n%s\r\n" % (len(digests) + 2, len(name), name)
                )
                out.append(b"$8\r\n" + b"\r\n$8\r\n".join(digests) + b"\r\n")
        count = b"%d" % len(chunk)
        out.append(
            b"*3\r\n$6\r\nINCRBY\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
            % (len(records), records, len(count), count)
        )
        send(b"".join(out))
        unread.append(len(out) // 2 + 1)
        if window and len(unread) >= window:
            replies(sum(unread))
            unread.clear()
    replies(sum(unread))
    conn.close()
    return True
