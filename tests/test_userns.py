"""Allow-lists in a user namespace, as systemd's PrivateUsers= makes one.

PrivateUsers=yes maps only root and the service's own user: every other peer is
shown to the daemon as nobody (65534), and an allow-listed group could never
match. trackerd is run here in user namespaces made with unshare(2), mapped as
that setting would and as an identity mapping of the relevant ids would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import Daemon
from tests.test_hostile import open_up, ping_as_nobody
from trackerd.edges.access import AllowLists, IdMaps

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to write id maps")

WORKERS_GROUP = 4242
SERVICE_USER = 4321  # what the unit's User= would be

#: Unshares a user namespace, says so, waits for its maps, then becomes trackerd.
UNSHARE_THEN_EXEC = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
    sys.exit("unshare: " + os.strerror(ctypes.get_errno()))
print("unshared", flush=True)
sys.stdin.readline()
os.execv(sys.executable, [sys.executable, "-m", "trackerd", *sys.argv[1:]])
"""


@contextmanager
def in_user_namespace(
    daemon: Daemon, uid_map: Sequence[int], gid_map: Sequence[int]
) -> Iterator[Daemon]:
    """Start daemon (not waiting) in a user namespace mapping each listed id to itself."""
    args = ["--runtime-dir", str(daemon.runtime_dir), "--log-level", "debug", *daemon.extra_args]
    with open(daemon.log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", UNSHARE_THEN_EXEC, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
        )
    daemon.process = process
    try:
        assert process.stdout is not None and process.stdin is not None
        assert process.stdout.readline() == b"unshared\n"
        for name, ids in (("uid_map", uid_map), ("gid_map", gid_map)):
            Path(f"/proc/{process.pid}/{name}").write_text("".join(f"{i} {i} 1\n" for i in ids))
        process.stdin.write(b"go\n")
        process.stdin.close()
        yield daemon
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(15)


def test_private_users_mapping_makes_a_group_allow_list_a_clear_startup_error(
    short_tmp: Path,
) -> None:
    daemon = Daemon(short_tmp / "rt", ["--allow-gid", str(WORKERS_GROUP)])
    # What PrivateUsers=yes maps: root and the service's own user and group.
    with in_user_namespace(daemon, [0, SERVICE_USER], [0, SERVICE_USER]):
        assert daemon.process is not None
        assert daemon.process.wait(30) == 1
    log = daemon.log()
    assert f"--allow-gid {WORKERS_GROUP}: trackerd runs in a user namespace" in log
    assert "PrivateUsers=yes" in log
    assert "Traceback" not in log


def test_allow_lists_work_when_the_namespace_maps_the_listed_ids(short_tmp: Path) -> None:
    daemon = Daemon(short_tmp / "rt", ["--allow-gid", str(WORKERS_GROUP), "--socket-mode", "0666"])
    with in_user_namespace(daemon, [0, SERVICE_USER], [0, SERVICE_USER, WORKERS_GROUP]):
        daemon.wait_ready()
        open_up(daemon)
        assert ping_as_nobody(daemon.socket_path, groups=[WORKERS_GROUP]) == 0
        assert ping_as_nobody(daemon.socket_path, groups=[WORKERS_GROUP + 1]) == 3
        assert ping_as_nobody(daemon.socket_path) == 3
        assert daemon.stop() == 0


def test_the_overflow_id_in_an_allow_list_is_refused_in_a_namespace() -> None:
    maps = IdMaps(((0, 0, 1),), ((0, 0, 1), (65534, 65534, 1)))
    assert AllowLists(gids=frozenset({65534})).unseeable(maps) == ["--allow-gid 65534"]
    assert AllowLists(gids=frozenset({0}), uids=frozenset({7})).unseeable(maps) == ["--allow-uid 7"]
    everything = ((0, 0, 4294967295),)
    assert AllowLists(gids=frozenset({65534})).unseeable(IdMaps(everything, everything)) == []


def test_the_shipped_unit_does_not_hide_peers_from_the_allow_lists() -> None:
    unit = (Path(__file__).parent.parent / "systemd" / "trackerd.service").read_text()
    settings = [line.split("=", 1) for line in unit.splitlines() if "=" in line]
    private_users = [value for key, value in settings if key.strip() == "PrivateUsers"]
    # "yes" maps only root and trackerd: --allow-gid could never match (see above).
    assert private_users in ([], ["no"], ["identity"])


def test_without_a_namespace_nothing_is_unseeable() -> None:
    assert AllowLists(gids=frozenset({WORKERS_GROUP})).unseeable() == []
