"""trackerctl against a real daemon: live answers, the file fallback, every exit code, --json."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from servertracker import STATUS_FILE_NAME
from servertracker.cli import EXIT_FILE_ONLY, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, app
from tests.conftest import TRACKERCTL, Daemon, LineReader, run_as_nobody, trackerctl

STATUS_JSON_KEYS = {
    "schema", "source", "boot_time", "unique_conn_ips", "unique_domains", "unique_ip_servers",
    "updated_time", "records", "rejected_conn_ips", "rejected_senders", "uptime_seconds",
    "file_age_seconds", "daemon_error", "socket", "status_file", "estimated", "windows", "health",
}  # fmt: skip


#: For commands that must reach the live daemon: how fast it answers is not what these
#: tests check, and a busy machine can take longer than trackerctl's default 2 s.
LIVE = ("--timeout", "60")


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def assert_no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text


def test_status_live(daemon: Daemon) -> None:
    with daemon.connect() as conn:
        conn.record([("192.0.2.1", "a@example.com"), ("192.0.2.2", "b@[192.0.2.9]")])
        conn.ping()
    result = trackerctl("status", "--runtime-dir", str(daemon.runtime_dir), *LIVE)
    assert result.returncode == EXIT_OK, result.stderr
    assert "Boot time: " in result.stdout and "(up " in result.stdout
    assert "Email servers seen (since last restart):" in result.stdout
    assert "Connection IPs: 2" in result.stdout
    assert "Domain servers: 1" in result.stdout
    assert "IP servers:     1" in result.stdout
    assert "not answering" not in result.stdout


def test_status_json_schema_live(daemon: Daemon) -> None:
    code, out, _ = invoke("status", "--runtime-dir", str(daemon.runtime_dir), "--json", *LIVE)
    assert code == EXIT_OK
    data = json.loads(out)
    assert set(data) == STATUS_JSON_KEYS
    assert data["source"] == "live" and data["schema"] == 1
    assert data["file_age_seconds"] is None and data["daemon_error"] is None
    assert isinstance(data["uptime_seconds"], float)
    assert out.count("\n") == 1  # one object, one line


def test_fallback_to_the_file_when_the_daemon_is_stopped(daemon: Daemon) -> None:
    with daemon.connect() as conn:
        conn.record([("192.0.2.1", "a@example.com")])
        conn.ping()
    assert daemon.stop() == 0
    result = trackerctl("status", "--runtime-dir", str(daemon.runtime_dir))
    assert result.returncode == EXIT_FILE_ONLY
    assert "trackerd is not answering: no socket at" in result.stdout
    assert (
        f"These counts come from {daemon.runtime_dir / STATUS_FILE_NAME}, written " in result.stdout
    )
    assert "Connection IPs: 1" in result.stdout
    code, out, _ = invoke("status", "--runtime-dir", str(daemon.runtime_dir), "--json")
    assert code == EXIT_FILE_ONLY
    data = json.loads(out)
    assert set(data) == STATUS_JSON_KEYS
    assert data["source"] == "file"
    assert data["daemon_error"]["reason"] == "no-socket"
    assert 0 <= data["file_age_seconds"] < 60
    assert data["unique_conn_ips"] == 1


def test_neither_daemon_nor_file(short_tmp: Path) -> None:
    result = trackerctl("status", "--runtime-dir", str(short_tmp / "nothing"))
    assert result.returncode == EXIT_UNAVAILABLE
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: no status: trackerd: no socket at")
    assert_no_traceback(result.stderr)
    result = trackerctl("status", "--runtime-dir", str(short_tmp / "nothing"), "--json")
    assert result.returncode == EXIT_UNAVAILABLE
    error = json.loads(result.stderr)
    assert error["daemon"]["reason"] == "no-socket"
    assert error["status_file"]["reason"] == "status-file"


def test_corrupt_status_file(short_tmp: Path) -> None:
    (short_tmp / STATUS_FILE_NAME).write_text('{"boot_time": 1, "unique_conn')
    result = trackerctl("status", "--runtime-dir", str(short_tmp))
    assert result.returncode == EXIT_UNAVAILABLE
    assert f"{short_tmp / STATUS_FILE_NAME}: not valid JSON" in result.stderr
    assert_no_traceback(result.stderr)


def test_refused_names_the_reason(short_tmp: Path) -> None:
    # A socket file nobody listens on: what a crashed daemon leaves behind.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(short_tmp / "trackerd.sock"))
    stale.close()
    code, _, err = invoke("ping", "--runtime-dir", str(short_tmp), "--json")
    assert code == EXIT_UNAVAILABLE
    assert json.loads(err)["reason"] == "refused"


def test_a_socket_path_that_is_no_socket_says_so(short_tmp: Path) -> None:
    """--socket at a file or a directory used to say "refused (trackerd is not
    listening)", or "permission denied (are you in trackerd's group?)" to a user
    who may not write the file: both send the operator after the daemon."""
    a_file = short_tmp / "a-file"
    a_file.write_text("")
    a_file.chmod(0o644)
    for path, kind in [(a_file, "a file"), (short_tmp, "a directory")]:
        code, _, err = invoke("ping", "--socket", str(path), "--json")
        assert code == EXIT_UNAVAILABLE
        error = json.loads(err)
        assert error["reason"] == "no-socket"
        assert f"{path} is {kind}, not a socket" in error["message"]
        result = trackerctl("ping", "--socket", str(path))
        assert result.returncode == EXIT_UNAVAILABLE
        assert (
            result.stderr == f"error: {path} is {kind}, not a socket (is the socket path right?)\n"
        )
    if os.getuid() == 0:  # as a user without write access to the file: EACCES
        short_tmp.chmod(0o755)

        def as_nobody() -> int:
            stderr = invoke("ping", "--socket", str(a_file))[2]
            return 0 if "is a file, not a socket" in stderr else 1

        assert run_as_nobody(as_nobody) == 0


@pytest.mark.parametrize("option", ["--socket", "--runtime-dir"])
@pytest.mark.parametrize("before", [True, False], ids=["before-the-command", "after-it"])
def test_an_empty_path_option_is_a_usage_error(option: str, before: bool) -> None:
    """--socket '' used to be the current directory: "connection to . refused"."""
    args = [option, "", "ping"] if before else ["ping", option, ""]
    result = trackerctl(*args)
    assert result.returncode == EXIT_USAGE
    assert f"Invalid value for '{option}': empty (give a path)" in result.stderr
    assert_no_traceback(result.stderr)


def test_timeout_names_the_reason(short_tmp: Path) -> None:
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(str(short_tmp / "trackerd.sock"))
    mute.listen(5)  # accepts (in the backlog) but never answers
    try:
        result = trackerctl("status", "--runtime-dir", str(short_tmp), "--timeout", "0.3")
        assert result.returncode == EXIT_UNAVAILABLE
        assert "did not answer in time" in result.stderr
        code, _, err = invoke("ping", "--runtime-dir", str(short_tmp), "--timeout", "0.3", "--json")
        assert code == EXIT_UNAVAILABLE
        assert json.loads(err)["reason"] == "timeout"
    finally:
        mute.close()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to become another user")
def test_permission_denied_on_socket_and_file(daemon: Daemon) -> None:
    # The runtime dir must be traversable for the socket's own mode to be what refuses.
    daemon.runtime_dir.chmod(0o755)
    daemon.runtime_dir.parent.chmod(0o755)

    def status_as_nobody() -> int:
        code, out, err = invoke("status", "--runtime-dir", str(daemon.runtime_dir), "--json")
        error = json.loads(err)
        ok = (
            error["daemon"]["reason"] == "permission-denied"
            and "permission denied" in error["status_file"]["message"]
            and out == ""
        )
        return code if ok else 98

    assert run_as_nobody(status_as_nobody) == EXIT_UNAVAILABLE

    def human_as_nobody() -> int:
        code, _, err = invoke("status", "--runtime-dir", str(daemon.runtime_dir))
        ok = "are you in trackerd's group?" in err and "Traceback" not in err
        return code if ok else 98

    assert run_as_nobody(human_as_nobody) == EXIT_UNAVAILABLE


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to become another user")
def test_permission_denied_by_a_private_runtime_dir_names_the_directory(daemon: Daemon) -> None:
    """Another user's private runtime directory (0700) refuses before the socket's
    mode does: "are you in trackerd's group?" sent the operator the wrong way."""
    daemon.runtime_dir.chmod(0o700)
    daemon.runtime_dir.parent.chmod(0o755)
    closed = f"may not enter the directory {daemon.runtime_dir} (owner root, group root, mode 0700)"

    def json_as_nobody() -> int:
        code, _, err = invoke("status", "--runtime-dir", str(daemon.runtime_dir), "--json")
        error = json.loads(err)["daemon"]
        ok = error["reason"] == "permission-denied" and closed in error["message"]
        return code if ok and "group?" not in error["message"] else 98

    assert run_as_nobody(json_as_nobody) == EXIT_UNAVAILABLE

    def human_as_nobody() -> int:
        code, _, err = invoke("ping", "--runtime-dir", str(daemon.runtime_dir))
        ok = closed in err and "group?" not in err and "Traceback" not in err
        return code if ok else 98

    assert run_as_nobody(human_as_nobody) == EXIT_UNAVAILABLE


def test_ping(daemon: Daemon, short_tmp: Path) -> None:
    result = trackerctl("ping", "--socket", str(daemon.socket_path), *LIVE)
    assert result.returncode == EXIT_OK
    assert result.stdout.startswith(f"pong from {daemon.socket_path} in ")
    code, out, _ = invoke("ping", "--socket", str(daemon.socket_path), "--json", *LIVE)
    assert code == EXIT_OK
    data = json.loads(out)
    assert data["ok"] is True and data["rtt_ms"] > 0
    result = trackerctl("ping", "--socket", str(short_tmp / "none.sock"))
    assert result.returncode == EXIT_UNAVAILABLE
    assert_no_traceback(result.stderr)


def test_record(daemon: Daemon) -> None:
    for conn_ip, sender in [
        ("192.0.2.1", "user@example.com"),
        ("192.0.2.2", "<>"),
        ("192.0.2.3", ""),
    ]:
        result = trackerctl("record", conn_ip, sender, "--socket", str(daemon.socket_path), *LIVE)
        assert result.returncode == EXIT_OK, result.stderr
        assert result.stdout == ""
    status = daemon.status()
    assert (status.unique_conn_ips, status.unique_domains, status.records) == (3, 1, 3)
    code, out, _ = invoke(
        "record", "192.0.2.4", "x@[192.0.2.5]", "--socket", str(daemon.socket_path), "--json", *LIVE
    )
    assert code == EXIT_OK and json.loads(out) == {"ok": True, "records": 1}
    assert daemon.status().unique_ip_servers == 1


def test_record_with_the_daemon_down(short_tmp: Path) -> None:
    result = trackerctl("record", "192.0.2.1", "a@b.example", "--runtime-dir", str(short_tmp))
    assert result.returncode == EXIT_UNAVAILABLE
    assert "no socket at" in result.stderr


def test_usage_errors_are_typer_s(short_tmp: Path) -> None:
    for args in (
        ["status", "--bogus"],
        ["record", "192.0.2.1"],
        ["frobnicate"],
        ["watch", "-n", "0"],
    ):
        result = trackerctl(*args)
        assert result.returncode == EXIT_USAGE, args
        assert_no_traceback(result.stderr)


def test_help_documents_exit_codes_and_environment() -> None:
    result = trackerctl("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "Exit codes: 0" in text and "3 status, watch and metrics only" in text
    result = trackerctl("status", "--help")
    assert "TRACKERD_RUNTIME_DIR" in result.stdout and "TRACKERD_SOCKET" in result.stdout


def test_environment_variables_are_honoured(daemon: Daemon) -> None:
    env = dict(os.environ, TRACKERD_RUNTIME_DIR=str(daemon.runtime_dir))
    result = trackerctl("ping", *LIVE, env=env)
    assert result.returncode == EXIT_OK


def test_watch_json_counts_and_rates(daemon: Daemon) -> None:
    with daemon.connect() as conn:
        conn.record([("192.0.2.1", "a@example.com")])
        conn.ping()
    where = ["--socket", str(daemon.socket_path), "--runtime-dir", str(daemon.runtime_dir)]
    result = trackerctl("watch", "--count", "2", "-n", "0.1", "--json", *where, *LIVE)
    assert result.returncode == EXIT_OK
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 2
    assert lines[0]["unique_conn_ips"] == 1 and lines[0]["per_second"] == {}
    assert set(lines[1]["per_second"]) == {
        "unique_conn_ips",
        "unique_domains",
        "unique_ip_servers",
        "records",
    }


def test_watch_leaves_cleanly_on_ctrl_c(daemon: Daemon) -> None:
    process = subprocess.Popen(
        [*TRACKERCTL, "watch", "-n", "0.1", "--runtime-dir", str(daemon.runtime_dir), *LIVE],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as at a terminal: a test run started in the background (nohup, `&` in
        # a script) passes SIGINT on ignored, and Python then never raises
        # KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        out, err = LineReader(process.stdout), LineReader(process.stderr)
        while "Connection IPs" not in (line := out.readline(60, "a first screen")):
            assert line, "watch ended without showing the counts"
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == EXIT_OK
        out.rest()
        assert_no_traceback(err.rest())
    finally:
        if process.poll() is None:  # a failed test leaves no watch running
            process.kill()
            process.wait()


def test_status_imports_neither_anyio_nor_the_daemon(short_tmp: Path) -> None:
    code = (
        "import sys\n"
        "from servertracker.cli import app\n"
        f"try:\n    app(['status', '--runtime-dir', {str(short_tmp)!r}])\n"
        "except SystemExit:\n    pass\n"
        "bad = [m for m in ('anyio', 'trackerd', 'idna') if m in sys.modules]\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
