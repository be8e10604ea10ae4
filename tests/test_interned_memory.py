"""Idle interned grants cost no memory: the value tables' pages are mapped only
when an id is defined (docs/threat-model.md). np.zeros did not promise it: glibc's
calloc memsets what it serves from free heap, and 16 idle grants of 262,144 ids
moved a daemon's RSS by 13 MiB."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import Daemon
from tests.test_interned_daemon import Peer

#: Far below what the grants below would touch if initialised (168 MiB of tables
#: in the first test, 104 MiB in the second), far above what the test itself moves.
MIB = 1 << 20
BOUND = 4 * MIB


def rss_of(pid: int | str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_tables_touch_no_page_even_when_the_heap_has_untouched_slack() -> None:
    """In a fresh process whose heap holds 24 MiB never touched (the state in which
    calloc memsets), making 32 tables of 262,144 ids leaves RSS where it was."""
    script = textwrap.dedent(
        """
        import numpy as np
        from tests.test_interned_memory import rss_of
        from trackerd.core.value_table import ValueTables
        big = np.ones(32 << 20, dtype=np.uint8); del big      # glibc: mmap threshold 32 MiB
        slack = np.zeros(24 << 20, dtype=np.uint8); del slack  # heap top: 24 MiB untouched
        before = rss_of("self")
        tables = [ValueTables(262144, windowed=True, fleet=True) for _ in range(16)]
        print(rss_of("self") - before, sum(2 * t.ips.nbytes for t in tables))
        tables[0].ips.codes[5] = 3  # written: still an ordinary, writable array
        assert tables[0].ips.codes[5] == 3 and not tables[1].ips.codes.any()
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    grown, address_space = map(int, result.stdout.split())
    assert address_space == 168 * MIB
    assert grown < BOUND, f"RSS grew by {grown / MIB:.1f} MiB for idle tables"


def test_idle_grants_leave_the_daemons_rss_alone(daemon: Daemon) -> None:
    assert daemon.process is not None
    with Peer(daemon) as warm:  # the first connection's one-off costs, before measuring
        assert warm.intern(4096) == 4096
    before = rss_of(daemon.process.pid)
    peers = [Peer(daemon) for _ in range(16)]
    try:
        assert [peer.intern(1 << 20) for peer in peers] == [262_144] * 16  # the cap each
        grown = rss_of(daemon.process.pid) - before
        assert grown < BOUND, f"16 idle grants moved RSS by {grown / MIB:.1f} MiB"
    finally:
        for peer in peers:
            peer.close()
