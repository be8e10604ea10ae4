"""SIGHUP reloads and never ends the daemon; statistics lines; journald priorities."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from servertracker import read_status_file
from tests.conftest import Daemon, wait_for
from tests.test_hostile import open_up, ping_as_nobody
from tests.test_systemd import NotifyListener

WORKERS_GROUP = 4242
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as other users")


def hup(daemon: Daemon) -> None:
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGHUP)


def count_in_log(daemon: Daemon, text: str) -> int:
    return daemon.log().count(text)


def hup_and_wait(daemon: Daemon, what: str = "SIGHUP: ") -> None:
    """Send SIGHUP; wait until the daemon has logged one more line containing what."""
    before = count_in_log(daemon, what)
    hup(daemon)
    wait_for(lambda: count_in_log(daemon, what) > before, 15, f"a new {what!r} line")


def test_sighup_never_ends_the_daemon_and_loses_nothing(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon(extra_args=["--status-interval", "3600"]).start()
    with daemon.connect() as conn:
        conn.record([("192.0.2.1", "a@example.com")])
        conn.ping()
        for _ in range(5):  # a burst, as a careless logrotate script might send
            hup(daemon)
        hup_and_wait(daemon, "SIGHUP: reloaded")
        conn.record([("192.0.2.2", "b@example.com")])  # the same connection still works
        assert conn.status().records == 2
    assert daemon.process is not None and daemon.process.poll() is None
    assert daemon.stop() == 0  # and SIGTERM still drains and writes the final status
    assert read_status_file(daemon.runtime_dir).records == 2
    assert not daemon.socket_path.exists()
    assert "Traceback" not in daemon.log()


@needs_root
def test_sighup_rereads_the_config_file_allow_lists_and_log_level(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    config = short_tmp / "trackerd.conf"
    config.write_text("# nothing restricted yet\nlog-level = debug\n")
    daemon = make_daemon(
        extra_args=["--config", str(config), "--socket-mode", "0666"], log_level=None
    )
    daemon.start()
    open_up(daemon)
    assert ping_as_nobody(daemon.socket_path) == 0  # no allow-lists

    config.write_text(f"allow-gid = {WORKERS_GROUP}   # the SMTP workers\n")
    hup_and_wait(daemon, "statistics:")  # the last line a reload logs
    assert "allow-lists of 0 users and 1 group" in daemon.log()
    assert ping_as_nobody(daemon.socket_path) == 3  # refused: not in the group
    assert ping_as_nobody(daemon.socket_path, groups=[WORKERS_GROUP]) == 0
    # At level warning, neither the reload line nor the statistics line (both info) shows.
    statistics = count_in_log(daemon, "statistics:")
    config.write_text(f"allow-gid = {WORKERS_GROUP}\nlog-level = warning\nmax-connections = 5\n")
    hup_and_wait(daemon, "applied only at a restart: --max-connections")  # a warning
    hup_and_wait(daemon, "applied only at a restart: --max-connections")
    assert count_in_log(daemon, "statistics:") == statistics

    config.write_text("log-level = info\n")  # allow-lists off again
    hup_and_wait(daemon, "statistics:")
    assert "allow-lists off" in daemon.log()
    assert ping_as_nobody(daemon.socket_path) == 0
    assert daemon.stop() == 0


@needs_root
def test_a_bad_config_at_sighup_changes_nothing_and_says_which_line(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    config = short_tmp / "trackerd.conf"
    config.write_text(f"allow-gid = {WORKERS_GROUP}\n")
    daemon = make_daemon(extra_args=["--config", str(config), "--socket-mode", "0666"])
    daemon.start()
    open_up(daemon)
    assert ping_as_nobody(daemon.socket_path) == 3
    config.write_text("\n\nallow-gid = 4242\nsecret-value-pasted-here\n")
    hup_and_wait(daemon, "cannot reload")
    assert f"{config}, line 4: not a trackerd option" in daemon.log()
    assert "secret-value-pasted-here" not in daemon.log()
    config.write_text("allow-gid = no-such-group-here\n")
    hup_and_wait(daemon, "cannot reload")
    assert ping_as_nobody(daemon.socket_path) == 3  # the running allow-lists stay
    assert ping_as_nobody(daemon.socket_path, groups=[WORKERS_GROUP]) == 0
    config.unlink()
    hup_and_wait(daemon, "cannot reload")
    assert "cannot read the config file" in daemon.log()
    assert "Traceback" not in daemon.log()
    assert daemon.stop() == 0


def test_a_bad_config_file_at_start_is_a_usage_error(short_tmp: Path) -> None:
    config = short_tmp / "trackerd.conf"
    config.write_text("max-connections = 0\n")
    result = subprocess.run(
        [sys.executable, "-m", "trackerd", "--runtime-dir", str(short_tmp / "rt"),
         "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"{config}: argument --max-connections: must be between 1" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_command_line_wins_over_the_config_file(short_tmp: Path) -> None:
    from trackerd.options import parse_config

    config = short_tmp / "trackerd.conf"
    config.write_text("status-interval = 2\nallow-gid = 1\nmax-connections = 7\n")
    parsed = parse_config(["--config", str(config), "--status-interval", "3", "--allow-gid", "2"])
    assert parsed.status_interval == 3
    assert parsed.allow.gids == frozenset({1, 2})  # lists add up
    assert parsed.limits.max_connections == 7


def test_sighup_tells_systemd_it_is_reloading_then_ready(short_tmp: Path) -> None:
    notify = NotifyListener(str(short_tmp / "notify"))
    daemon = Daemon(short_tmp / "rt", env=dict(os.environ, NOTIFY_SOCKET=notify.address))
    try:
        daemon.start()
        notify.wait_for("READY=1")
        hup(daemon)
        reloading = notify.wait_for("RELOADING=1")
        assert re.search(r"^MONOTONIC_USEC=\d+$", reloading, re.M)
        after = notify.messages.index(reloading)
        wait_for(
            lambda: any("READY=1" in m for m in notify.collect()[after + 1 :]),
            15,
            "READY=1 after the reload",
        )
        assert daemon.stop() == 0
    finally:
        if daemon.process and daemon.process.poll() is None:
            daemon.process.kill()
        notify.sock.close()


def test_statistics_line_at_its_interval_with_counts_only(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon(extra_args=["--stats-interval", "0.2"]).start()
    with daemon.connect() as conn:
        conn.record([("203.0.113.77", "someone@very-secret-domain.example")])
        conn.ping()
    wait_for(
        lambda: "statistics: 1 connection IP, 1 domain, 0 IP servers; 1 record" in daemon.log(),
        15,
        "a statistics line with the record",
    )
    wait_for(lambda: count_in_log(daemon, "statistics:") >= 3, 15, "more statistics lines")
    assert daemon.stop() == 0
    log = daemon.log()
    assert "very-secret-domain" not in log and "203.0.113.77" not in log


def test_no_statistics_line_between_sighups_when_the_interval_is_0(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon(extra_args=["--stats-interval", "0"]).start()
    hup_and_wait(daemon, "statistics:")
    hup_and_wait(daemon, "statistics:")
    assert count_in_log(daemon, "statistics:") == 2  # one per SIGHUP, none in between
    assert daemon.stop() == 0


def journal_env(log_path: Path) -> dict[str, str]:
    info = os.stat(log_path)
    return dict(os.environ, JOURNAL_STREAM=f"{info.st_dev}:{info.st_ino}")


def test_under_journald_each_line_starts_with_its_priority(short_tmp: Path) -> None:
    runtime = short_tmp / "rt"
    log_path = short_tmp / "rt.log"
    log_path.touch()
    # A refused connection logs a warning: an allow-list that admits no one else.
    daemon = Daemon(runtime, ["--allow-uid", "0", "--socket-mode", "0666"], journal_env(log_path))
    daemon.start()
    if os.geteuid() == 0:
        open_up(daemon)
        assert ping_as_nobody(daemon.socket_path) == 3
    assert daemon.stop() == 0
    lines = daemon.log().splitlines()
    assert lines and all(re.match(r"<[0-7]>", line) for line in lines), lines
    assert any(line.startswith("<6>INFO ") and "listening on" in line for line in lines)
    assert any(line.startswith("<7>DEBUG ") for line in lines)
    if os.geteuid() == 0:
        assert any(line.startswith("<4>WARNING refused a connection") for line in lines)
    # No time stamp or pid of our own: the journal adds them.
    assert not any(re.search(r"\d\d:\d\d:\d\d|trackerd\[\d+\]", line) for line in lines)


def test_journal_stream_of_another_file_is_not_the_journal(short_tmp: Path) -> None:
    other = short_tmp / "elsewhere"
    other.touch()
    daemon = Daemon(short_tmp / "rt", env=journal_env(other)).start()
    assert daemon.stop() == 0
    lines = daemon.log().splitlines()
    assert lines and not any(line.startswith("<") for line in lines)
    assert all(re.search(r"trackerd\[\d+\]", line) for line in lines)


def sighup_handled(pid: int) -> bool:
    """True once the process ignores or catches SIGHUP (no longer its deadly default)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return False
    masks = [int(line.split()[1], 16) for line in lines if line.startswith(("SigIgn", "SigCgt"))]
    return any(mask & (1 << (signal.SIGHUP - 1)) for mask in masks)


def test_sighup_from_the_first_moment_never_ends_a_starting_daemon(
    make_daemon: Callable[..., Daemon],
) -> None:
    # Nothing can act before the interpreter runs the entry point's first line, so
    # the HUPs start the moment the process stops taking SIGHUP's default action,
    # and go on, a few a millisecond, until the daemon answers.
    daemon = make_daemon()
    daemon.start(wait=False)
    process = daemon.process
    assert process is not None
    wait_for(lambda: sighup_handled(process.pid) or process.poll() is not None, 60, "SIG_IGN")
    sent = 0
    while not daemon.socket_path.exists() and process.poll() is None:
        os.kill(process.pid, signal.SIGHUP)
        sent += 1
        time.sleep(0.0005)  # pacing only: a few HUPs a millisecond
    daemon.wait_ready()  # raises if trackerd died (say with 129, killed by SIGHUP)
    assert sent > 0
    assert process.poll() is None
    assert daemon.status().records == 0
    assert daemon.stop() == 0


def test_a_reload_says_when_the_command_line_overrides_the_config_file(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    config = short_tmp / "trackerd.conf"
    config.write_text("stats-interval = 60\n")
    daemon = make_daemon(extra_args=["--config", str(config)]).start()  # and --log-level debug
    hup_and_wait(daemon, "statistics:")
    assert "overrides" not in daemon.log()
    config.write_text("log-level = warning\n")
    hup_and_wait(daemon, "the config file's --log-level")
    assert "SIGHUP: the command line overrides (or adds to) the config file's --log-level" in (
        daemon.log()
    )
    assert daemon.stop() == 0
