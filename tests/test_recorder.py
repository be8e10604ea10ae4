"""The worker-side recorder: fork safety, daemon down or restarting, exact counts, exit flush."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

import servertracker
from servertracker import Client, flusher, record_queue, recorder
from servertracker.status import Status
from tests.conftest import Daemon, wait_for


def counts(status: Status) -> tuple[int, int, int, int]:
    return (status.unique_conn_ips, status.unique_domains, status.unique_ip_servers, status.records)


def wait_counts(daemon: Daemon, expected: tuple[int, int, int, int], timeout: float = 60) -> Status:
    last: list[Status] = []

    def reached() -> bool:
        last[:] = [daemon.status()]
        return counts(last[0]) == expected

    try:
        wait_for(reached, timeout, f"counts {expected}")
    except AssertionError:
        raise AssertionError(f"counts stayed at {counts(last[0])}, expected {expected}") from None
    return last[0]


def socket_inodes() -> set[int]:
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            info = os.stat(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if stat.S_ISSOCK(info.st_mode):
            inodes.add(info.st_ino)
    return inodes


def test_fork_records_before_and_after_are_counted_exactly_once(daemon: Daemon) -> None:
    # A long flush interval keeps the parent's records queued across the fork.
    client = Client(daemon.socket_path, flush_interval=30, batch_size=10_000)
    client.record_server("192.0.2.1", "parent@before.example")
    client.record_server("192.0.2.2", "parent@before.example")
    assert client.flush(10)
    client.record_server("192.0.2.3", "queued@at-fork.example")  # still queued when we fork
    parent_sockets = socket_inodes()
    children = []
    for n in range(4):
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                assert client.stats().buffered == 0  # the parent's queue is not ours
                client.record_server(f"198.51.100.{n}", f"child@child{n}.example")
                client.record_server("203.0.113.1", "shared@[203.0.113.9]")
                ok = client.flush(10)
                leaked = socket_inodes() & parent_sockets
                code = 0 if ok and not leaked else 2
            finally:
                os._exit(code)
        children.append(pid)
    for pid in children:
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    client.record_server("192.0.2.4", "parent@after.example")
    assert client.flush(10)
    # conn IPs: 4 parent + 4 children + 1 shared; domains: before, at-fork, after, 4 children;
    # records: 4 from the parent, 2 per child: any resend would show in the records tally.
    wait_counts(daemon, (9, 7, 1, 12))
    assert client.stats().dropped == 0
    client.close()


def _worker(socket_path: str, worker: int, per_worker: int) -> None:
    os.environ["TRACKERD_SOCKET"] = socket_path
    for i in range(per_worker):
        r = worker * per_worker + i
        servertracker.record_server(f"10.1.{r % 50}.{r % 7}", f"user{r}@dom{r % 123}.example")
    # No explicit flush: the recorder must flush at exit on its own.


def test_many_forked_workers_give_exact_counts(daemon: Daemon) -> None:
    context = multiprocessing.get_context("fork")
    workers, per_worker = 8, 5000
    processes = [
        context.Process(target=_worker, args=(str(daemon.socket_path), w, per_worker))
        for w in range(workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    # 50 x 7 combinations of the two octets, coprime: 350 distinct addresses.
    wait_counts(daemon, (350, 123, 0, workers * per_worker))


def test_daemon_down_never_raises_and_bounds_memory(short_tmp: Path) -> None:
    client = Client(short_tmp / "nobody-home.sock", max_buffered=100)
    for i in range(1000):
        client.record_server(f"192.0.2.{i % 250}", "user@example.com")
    stats = client.stats()
    assert stats.recorded == 100
    assert stats.dropped == 900
    assert stats.buffered <= 100
    assert not stats.connected
    assert client.close(timeout=0.2) is False  # could not flush; said so, did not hang


def test_odd_values_never_raise_and_do_not_poison_a_batch(daemon: Daemon) -> None:
    client = Client(daemon.socket_path)
    odd: list[object] = [b"192.0.2.50", 42, None, object(), "x" * 100_000, "\udcff", 3.5]
    for value in odd:
        client.record_server(value, value)  # type: ignore[arg-type]
    client.record_server("192.0.2.51", "good@good.example")
    assert client.flush(10)
    status = wait_counts(daemon, (2, 1, 1, len(odd) + 1))  # b"192.0.2.50" is also an IP literal
    assert status.rejected_conn_ips >= 3
    client.close()


def test_daemon_restart_mid_stream(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon().start()
    client = Client(daemon.socket_path, flush_interval=0.01)
    for i in range(100):
        client.record_server(f"192.0.2.{i}", f"a@first{i}.example")
    wait_counts(daemon, (100, 100, 0, 100))
    assert daemon.stop() == 0
    # Down: these wait in the queue, and the caller notices nothing.
    for i in range(50):
        client.record_server(f"198.51.100.{i}", f"b@second{i}.example")
    # The daemon has gone (its end of the connection closed, so no write can
    # succeed): all 50 wait in the queue, none is lost or dropped.
    stats = client.stats()
    assert (stats.sent, stats.buffered, stats.dropped) == (100, 50, 0), stats
    daemon.start()  # a new daemon: new salt, counts from zero
    wait_counts(daemon, (50, 50, 0, 50))
    for i in range(10):
        client.record_server(f"203.0.113.{i}", f"c@third{i}.example")
    wait_counts(daemon, (60, 60, 0, 60))
    assert client.stats().reconnects >= 1
    assert client.stats().dropped == 0
    client.close()


class CountingClient(Client):
    """Counts the batches the flusher takes and the pauses it makes without the GIL."""

    batches = 0
    pauses = 0
    encoding = False
    pauses_encoding = 0  # of pauses, those made while encoding a batch
    steps_waited = 0  # steps of encoding while a thread waited in flush()
    pauses_waited = 0  # of those, the steps that paused

    def _take_batch(self, size: int) -> None:
        self.batches += 1
        super()._take_batch(size)

    def _encode_batch(self) -> None:
        self.encoding = True
        try:
            super()._encode_batch()
        finally:
            self.encoding = False

    def _between(self) -> None:
        waited = bool(self._waiting)
        pauses = self.pauses
        super()._between()
        self.steps_waited += waited
        self.pauses_waited += waited and self.pauses > pauses

    def _pause(self) -> None:
        self.pauses += 1
        self.pauses_encoding += self.encoding
        super()._pause()


def test_the_flusher_lets_go_of_the_gil_between_batches(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/performance-history.md: a send lets go of the GIL for microseconds only, and the
    flusher took it back before the recording thread could run, batch after batch.
    So between two batches of a backlog it pauses without the GIL once it has held
    it _LONG_HOLD (here at once), and loses nothing."""
    monkeypatch.setattr(flusher, "_LONG_HOLD", 0.0)
    client = CountingClient(daemon.socket_path, batch_size=100)
    # record_many queues all 5,000 before it starts the flusher: a backlog of 50.
    client.record_many((f"10.0.{i // 256}.{i % 256}", f"u@d{i}.example") for i in range(5000))
    assert client.flush(60)
    wait_counts(daemon, (5000, 5000, 0, 5000))
    assert client.batches == 50
    # After every batch but the last, more waited: a pause (partial sends add more).
    assert client.pauses >= client.batches - 1
    client.close()


def test_the_flusher_pauses_within_a_batch_it_has_held_long(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/performance-history.md: encoding a batch of new values held the GIL for
    milliseconds. The flusher pauses between its steps once it has held the GIL
    for _LONG_HOLD, and not before; whichever, nothing is lost or counted twice."""
    pauses_per_batch = []
    for case, hold in enumerate((float("inf"), 0.0)):
        monkeypatch.setattr(flusher, "_LONG_HOLD", hold)
        client = CountingClient(daemon.socket_path, table_entries=4096)
        offset = 4000 * case
        # Queued before the flusher starts: two batches of 2,048 (interned).
        client.record_many(
            (f"10.1.{(offset + i) // 256}.{(offset + i) % 256}", f"u@d{offset + i}.example")
            for i in range(4000)
        )
        # Not flush(): while a thread waits there, the flusher does not pause (below).
        wait_for(lambda c=client: c.stats().buffered == 0, 60, "the queue to be sent")
        assert client.stats().message == "interned"
        wait_counts(daemon, (offset + 4000, offset + 4000, 0, offset + 4000))
        assert client.batches == 2
        pauses_per_batch.append(client.pauses_encoding / client.batches)
        client.close()
    never, always = pauses_per_batch
    assert never == 0  # only between batches (held long), and after a partial send
    assert always >= 8  # at every step of numbering both columns


def test_the_flusher_does_not_pause_within_a_batch_while_flush_waits(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread in flush() (or in record_many(), waiting for room) waits for the
    flusher: pauses within a batch would only slow it (a bulk import took 1.6
    times as long), so there are none while it waits; nothing lost."""
    monkeypatch.setattr(flusher, "_LONG_HOLD", 0.0)  # else, a pause at every step
    client = CountingClient(daemon.socket_path, table_entries=4096)
    client.record_many((f"10.2.{i // 256}.{i % 256}", f"u@e{i}.example") for i in range(20_000))
    assert client.flush(60)
    wait_counts(daemon, (20_000, 20_000, 0, 20_000))
    assert client.steps_waited > 0
    assert client.pauses_waited == 0
    client.close()


class SizingClient(Client):
    """Notes the size of each batch the flusher takes."""

    def _take_batch(self, size: int) -> None:
        self.sizes = [*getattr(self, "sizes", []), size]
        super()._take_batch(size)


def test_columns_batches_are_bigger_where_the_c_queue_makes_their_frame(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The C queue makes a columns frame without the GIL, so its batches are
    C_COLUMNS_BATCH_SIZE (fewer wake-ups, sends and messages); the pure queue
    encodes holding the GIL, so its stay DEFAULT_BATCH_SIZE. Nothing lost."""
    kinds = [(record_queue.PyRecordQueue, flusher.DEFAULT_BATCH_SIZE)]
    c_queue = record_queue._c_queue()
    if c_queue is not None:
        kinds.append((c_queue, flusher.C_COLUMNS_BATCH_SIZE))
    for n, (kind, expected) in enumerate(kinds):
        monkeypatch.setattr(record_queue, "new_queue", kind)
        client = SizingClient(daemon.socket_path)
        client.record_server("192.0.2.1", "warm@up.example")  # connects: columns
        assert client.flush(10)
        pairs = [(f"10.{n}.{i // 256}.{i % 256}", f"u@s{n}x{i}.example") for i in range(5000)]
        client.record_many(pairs)
        assert client.flush(60)
        assert client.stats().message == "columns"
        assert max(client.sizes) == expected
        wait_counts(daemon, (5000 * (n + 1) + 1, 5000 * (n + 1) + 1, 0, 5001 * (n + 1)))
        client.close()


def test_stalled_daemon_does_not_block_and_catches_up(daemon: Daemon) -> None:
    assert daemon.process is not None
    client = Client(daemon.socket_path, max_buffered=500_000)
    client.record_server("192.0.2.1", "warm@up.example")
    assert client.flush(10)
    os.kill(daemon.process.pid, signal.SIGSTOP)
    try:
        # Enough to fill the socket buffers; record() must still return at once.
        for i in range(200_000):
            client.record_server(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", "s@stalled.example")
        assert client.stats().dropped == 0
    finally:
        os.kill(daemon.process.pid, signal.SIGCONT)
    assert client.flush(30)
    wait_counts(daemon, (200_001, 2, 0, 200_001), timeout=60)
    client.close()


def test_flush_waits_for_the_flusher_without_polling(daemon: Daemon) -> None:
    """docs/performance-history.md: flush() looked every millisecond (waking the flusher
    each time), and a worker's final flush burnt ~50 ms of CPU. It now waits for
    the flusher to say it drained, looking again every _FLUSH_LOOK at most."""
    assert daemon.process is not None
    client = Client(daemon.socket_path, max_buffered=500_000)
    client.record_server("192.0.2.1", "warm@up.example")
    assert client.flush(10)
    looks = 0
    wake = client._wake.set

    def counted_wake() -> None:
        nonlocal looks
        looks += 1
        wake()

    client._wake.set = counted_wake  # type: ignore[method-assign]
    os.kill(daemon.process.pid, signal.SIGSTOP)
    try:
        for i in range(200_000):  # more than the socket buffers hold
            client.record_server(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", "s@wait.example")
        assert not client.flush(0.5)
    finally:
        os.kill(daemon.process.pid, signal.SIGCONT)
    # One look, then one every _FLUSH_LOOK (0.05 s) at most: the old loop looked ~500 times.
    assert 1 <= looks <= 0.5 / recorder._FLUSH_LOOK + 2
    assert client.flush(30)
    wait_counts(daemon, (200_001, 2, 0, 200_001), timeout=60)
    client.close()


EXIT_SCRIPT = textwrap.dedent(
    """
    import servertracker
    for i in range(1000):
        servertracker.record_server(f"192.0.2.{i % 200}", f"user@exit{i % 10}.example")
    """
)


def test_flush_at_exit(daemon: Daemon) -> None:
    env = dict(os.environ, TRACKERD_SOCKET=str(daemon.socket_path))
    subprocess.run([sys.executable, "-c", EXIT_SCRIPT], env=env, check=True, timeout=30)
    wait_counts(daemon, (200, 10, 0, 1000))


#: Run first among the exit handlers (atexit is last in, first out, and this is
#: registered before servertracker): reports how the flush at exit went.
EXIT_REPORT = textwrap.dedent(
    """
    import atexit, json, sys, time
    from servertracker import recorder
    seen = {}
    close = recorder.Client.close
    def timed_close(self, timeout=recorder.DEFAULT_EXIT_TIMEOUT):
        start = time.monotonic()
        seen["flushed"] = close(self, timeout)
        seen.update(
            timeout=timeout,
            seconds=time.monotonic() - start,
            thread_ended=not self._thread.is_alive(),
            buffered=self.stats().buffered,
        )
        return seen["flushed"]
    recorder.Client.close = timed_close
    atexit.register(lambda: print(json.dumps(seen), flush=True))
    """
)


def test_exit_is_bounded_when_the_daemon_is_down(short_tmp: Path) -> None:
    """The README: at exit the queue is flushed for at most one second.

    What bounds the exit is the flush's own timeout, not the machine's speed: with
    no daemon it can never succeed, so it must give up at its deadline (1 s by
    default), say so, and leave no flusher thread behind to wait for. The time it
    took is measured but only bounded below: a loaded machine may add to it.
    """
    env = dict(os.environ, TRACKERD_SOCKET=str(short_tmp / "down.sock"))
    result = subprocess.run(
        [sys.executable, "-c", EXIT_REPORT + EXIT_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["timeout"] == 1.0  # the promise, from the default
    assert report["flushed"] is False and report["buffered"] == 1000  # gave up; said so
    assert report["seconds"] >= 1.0  # it did wait for its whole timeout first
    assert report["thread_ended"]  # nothing else left to wait for


def test_a_client_built_to_ask_for_tables_loads_numpy_at_once() -> None:
    """docs/performance-history.md: numpy loaded by the flusher on its first interned
    connection stalled the recording thread for ms, many times. Client() loads it
    when it will ask for value tables (so a pre-fork master pays it once for all
    its workers); a client that asks for none (the default) never does."""
    code = textwrap.dedent(
        """
        import sys
        from servertracker import Client, default_client, record_server
        Client()
        Client(table_entries=0)
        record_server('192.0.2.1', 'a@b.example')
        default_client()
        steps = ['numpy' in sys.modules]
        Client(table_entries=16384)
        steps.append('numpy' in sys.modules)
        print(steps)
        """
    )
    env = dict(os.environ, TRACKERD_SOCKET="/nonexistent/x.sock")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.stdout.split() == ["[False,", "True]"], result.stdout + result.stderr


DEFAULT_WORKER = textwrap.dedent(
    """
    import sys
    import servertracker
    servertracker.record_server('192.0.2.1', 'a@b.example')
    client = servertracker.default_client()
    client.record_many([('192.0.2.2', '<c@d.example>')] * 3000)
    assert client.flush(30)
    print(client.stats().message, client.stats().table_entries, 'numpy' in sys.modules)
    """
)


def test_the_default_client_sends_columns_and_never_loads_numpy(daemon: Daemon) -> None:
    """The library's default (batch_encoder.DEFAULT_TABLE_ENTRIES, 0): record_server(),
    default_client() and record_many() send "columns" to a daemon that offers
    interned, ask for no tables, and the worker never imports numpy."""
    env = dict(os.environ, TRACKERD_SOCKET=str(daemon.socket_path))
    result = subprocess.run(
        [sys.executable, "-c", DEFAULT_WORKER], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.split() == ["columns", "0", "False"], result.stdout + result.stderr
    wait_counts(daemon, (2, 2, 0, 3001))
    health = daemon.status().health
    assert health is not None and health.interned_messages == 0


def test_import_is_cheap() -> None:
    """Workers load the standard library and msgpack only: no numpy, no anyio, ..."""
    code = textwrap.dedent(
        """
        import sys
        before = set(sys.modules)
        import servertracker
        servertracker.record_server('192.0.2.1', 'a@b.example')
        heavy = ('numpy', 'anyio', 'typer', 'trackerd', 'idna', 'click', 'rich')
        bad = [m for m in heavy if m in sys.modules]
        # msgpack's C extension is built with Cython, which registers these two.
        allowed = set(sys.stdlib_module_names) | {'msgpack', 'servertracker', 'cython_runtime'}
        new = [m for m in set(sys.modules) - before if not m.startswith('_cython_')]
        bad += [m for m in new if m.split('.')[0] not in allowed]
        print(sorted(bad)); sys.exit(1 if bad else 0)
        """
    )
    env = dict(os.environ, TRACKERD_SOCKET="/nonexistent/x.sock")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
