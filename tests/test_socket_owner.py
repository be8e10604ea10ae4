"""Socket files' owner, group and mode: set by options, at every bind, restarts included."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Daemon, run_as_nobody, wait_for
from trackerd.edges.socket_files import SocketFileSettings, bind_unix_socket
from trackerd.errors import StartupError

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root may give a file away")


def owner_group_mode(path: Path) -> tuple[int, int, int]:
    info = os.lstat(path)
    return info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)


@needs_root
def test_both_sockets_get_their_owner_group_and_mode_at_every_bind(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    policy = short_tmp / "policy.sock"
    daemon = make_daemon(
        extra_args=[
            "--socket-group", "nogroup", "--socket-mode", "0660",
            "--postfix-policy-socket", str(policy),
            "--postfix-policy-socket-owner", "nobody", "--postfix-policy-socket-mode", "600",
        ]
    ).start()  # fmt: skip
    main_expected = (0, NOBODY, 0o660)
    policy_expected = (NOBODY, 0, 0o600)
    assert owner_group_mode(daemon.socket_path) == main_expected
    assert owner_group_mode(policy) == policy_expected
    # Removed, and bound again by upkeep: the same owner, group and mode.
    inode = os.lstat(policy).st_ino
    policy.unlink()
    wait_for(lambda: policy.exists() and os.lstat(policy).st_ino != inode, 15, "a new socket")
    assert owner_group_mode(policy) == policy_expected
    daemon.socket_path.unlink()
    daemon.wait_ready(15)
    assert owner_group_mode(daemon.socket_path) == main_expected
    # And after a restart, which is what docs/postfix.md's recipe needs.
    assert daemon.stop() == 0
    daemon.start()
    assert owner_group_mode(daemon.socket_path) == main_expected
    assert owner_group_mode(policy) == policy_expected
    assert daemon.stop() == 0


@needs_root
def test_nobody_cannot_give_a_socket_away_and_is_told_why(short_tmp: Path) -> None:
    os.chown(short_tmp, NOBODY, NOBODY)
    path = short_tmp / "s.sock"

    def bind_for_root() -> int:
        try:
            bind_unix_socket(path, SocketFileSettings(owner=0))
        except StartupError as exc:
            text = f"cannot give socket {path} to user 0: only root can give a socket to another"
            ok = str(exc).startswith(text) and not path.exists()
            return 0 if ok else 2
        return 1

    assert run_as_nobody(bind_for_root) == 0
