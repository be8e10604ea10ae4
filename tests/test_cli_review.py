"""An operator's review of trackerctl, each finding checked on a real trackerctl process:
fleet without redis-py, watch from the status file, the --json error shape everywhere,
exit codes of metrics and fleet, and records with more than two fields."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from servertracker.cli import main
from servertracker.cli_common import EXIT_NO_FLEET
from tests.conftest import TRACKERCTL, Daemon, run_as_nobody, trackerctl


def json_error(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    """The one JSON line on stderr, with the promised keys."""
    assert result.stderr.count("\n") == 1, result.stderr
    line: dict[str, object] = json.loads(result.stderr)
    assert {"error", "reason", "message"} <= set(line), line
    return line


def test_fleet_without_redis_py_says_how_to_install_it(short_tmp: Path) -> None:
    # A redis package that cannot be imported, as in a venv without the [fleet] extra.
    blocker = short_tmp / "block" / "redis"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'redis'\", name='redis')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(short_tmp / "block"))
    result = trackerctl("fleet", "status", "--redis", "redis://127.0.0.1:1", env=env)
    assert result.returncode == 6
    assert "pip install 'servertracker[fleet]'" in result.stderr
    pushed = trackerctl(
        "--json", "fleet", "push", "--redis", "redis://127.0.0.1:1", "--socket", "/x", env=env
    )
    assert pushed.returncode == 6 and json_error(pushed)["reason"] == "no-redis-py"


def test_fleet_exit_codes_and_json(short_tmp: Path) -> None:
    bogus = trackerctl("fleet", "status", "--redis", "bogus://x")
    assert bogus.returncode == 2 and "not a Redis URL" in bogus.stderr
    key = short_tmp / "key"
    made = trackerctl("fleet", "keygen", str(key), "--json")
    assert made.returncode == 0 and json.loads(made.stdout)["ok"] is True
    again = trackerctl("--json", "fleet", "keygen", str(key))
    assert again.returncode == 5 and json_error(again)["reason"] == "exists"
    advanced = trackerctl("fleet", "advance", "--json", str(key))
    assert advanced.returncode == 0 and json.loads(advanced.stdout)["path"] == str(key)
    if os.getuid() != 0:
        pytest.skip("needs root to run as another user")
    # A key file trackerctl may not read: exit 5 (the key file), not 2 (usage).
    short_tmp.chmod(0o711)
    assert run_as_nobody(lambda: main(["fleet", "advance", str(key)])) == 5


def test_watch_from_the_status_file_reads_as_status(daemon: Daemon) -> None:
    with daemon.connect() as conn:
        conn.record([("192.0.2.1", "a@example.com")])
        conn.ping()
    assert daemon.stop() == 0
    where = ("--runtime-dir", str(daemon.runtime_dir))
    status = trackerctl("status", *where)
    found = re.search(r"\((up .* at that write)\)", status.stdout)
    assert status.returncode == 3 and found, status.stdout
    watch = trackerctl("watch", "--count", "1", *where)
    assert watch.returncode == 3
    assert found.group(1) in watch.stdout  # the same uptime as status's
    header, reason, *screen = watch.stdout.splitlines()
    assert reason.startswith("trackerd is not answering: no socket at")  # a line of its own
    assert all(len(line) <= 80 for line in (header, *screen)), watch.stdout
    assert "Ctrl-C" not in watch.stdout  # it leaves by itself


def test_json_errors_have_one_shape(daemon: Daemon, short_tmp: Path) -> None:
    nothing = ("--runtime-dir", str(short_tmp / "none"))
    for args in (
        ("--json", "status", *nothing),
        ("--json", "watch", "--count", "1", *nothing),
        ("--json", "metrics", *nothing),
        ("metrics", "--json", *nothing),
    ):
        result = trackerctl(*args)
        assert result.returncode == 4, args
        line = json_error(result)
        assert line["reason"] == "unavailable" and "daemon" in line, args
    text = trackerctl("watch", "--count", "1", *nothing)
    assert text.stderr.startswith("error: ") and "status file: status file" not in text.stderr
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [*TRACKERCTL, "--json", "status", "--runtime-dir", str(daemon.runtime_dir)],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert json.loads(result.stderr)["reason"] == "output"


def test_an_allow_list_refusal_is_forbidden(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to connect as another user")
    daemon = make_daemon("a", extra_args=["--allow-uid", "12345"]).start()
    for path in (daemon.runtime_dir.parent, daemon.runtime_dir):
        path.chmod(0o755)
    daemon.socket_path.chmod(0o666)
    err = short_tmp / "err"

    def ping() -> int:
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115  (fd 2: the file, below)
        code = main(["--json", "ping", "--socket", str(daemon.socket_path)])
        sys.stderr.flush()
        return code

    saved = os.dup(2)
    with open(err, "w") as stderr:  # opened as root: nobody only inherits it
        os.dup2(stderr.fileno(), 2)
        try:
            assert run_as_nobody(ping) == 4
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    assert json.loads(err.read_text())["reason"] == "forbidden"


def test_a_record_line_with_extra_fields_is_named_by_number(daemon: Daemon) -> None:
    lines = "192.0.2.1 a@example.com\n192.0.2.2 secret@example.com extra\n"
    result = trackerctl("record", "--socket", str(daemon.socket_path), stdin=lines)
    assert result.returncode == 0
    assert "line 2:" in result.stderr and "more than two fields" in result.stderr
    assert "secret" not in result.stderr and "extra" not in result.stderr
    assert daemon.status().records == 2


def test_a_conn_ip_that_is_no_ip_gets_a_warning_without_its_value(daemon: Daemon) -> None:
    """`trackerctl record not-an-ip foo` exited 0 in silence while the daemon counted
    the record as rejected: a warning on stderr says so, never with the value."""
    socket_path = str(daemon.socket_path)
    argv = trackerctl("record", "secret-not-an-ip", "a@example.com", "--socket", socket_path)
    assert argv.returncode == 0
    assert argv.stderr == (
        "warning: CONN_IP is not an IP address; the record is counted as rejected\n"
    )
    lines = "192.0.2.1 a@example.com\nsecret-host b@example.com\n\n[IPv6:2001:db8::1] <>\n"
    stdin = trackerctl("record", "--socket", socket_path, stdin=lines)
    assert stdin.returncode == 0
    assert stdin.stderr == (
        "warning: line 2: CONN_IP is not an IP address; the record is counted as rejected\n"
    )
    quiet = trackerctl("record", "192.0.2.9", "c@example.com", "--socket", socket_path)
    assert quiet.returncode == 0 and quiet.stderr == ""
    status = daemon.status()
    assert status.records == 5 and status.rejected_conn_ips == 2
    assert "secret" not in argv.stderr + stdin.stderr


def test_fleet_push_checks_the_redis_url_before_asking_trackerd(daemon: Daemon) -> None:
    """A malformed --redis is a usage error (2), as README says, even when trackerd
    would answer that fleet mode is off (7): the URL is checked first."""
    pushed = trackerctl(
        "--json", "fleet", "push", "--redis", "notaurl", "--socket", str(daemon.socket_path)
    )
    assert pushed.returncode == 2, pushed.stderr
    line = json_error(pushed)
    assert line["reason"] == "usage" and "not a Redis URL" in str(line["message"])
    # Said as `fleet status` says it: a usage error, not a failed push.
    plain = trackerctl("fleet", "push", "--redis", "notaurl", "--socket", str(daemon.socket_path))
    status = trackerctl("fleet", "status", "--redis", "notaurl")
    assert plain.returncode == status.returncode == 2
    assert plain.stderr == status.stderr == "error: not a Redis URL (notaurl)\n"
    # A good URL still reaches trackerd, whose features say fleet mode is off (exit 7).
    good = trackerctl(
        "fleet", "push", "--redis", "redis://127.0.0.1:1", "--socket", str(daemon.socket_path)
    )
    assert good.returncode == EXIT_NO_FLEET, good.stderr
