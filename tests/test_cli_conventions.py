"""trackerctl's conventions (issue 11 §7), each checked on a real trackerctl process.

--version/-V, -h, completion, options before the command, no tracebacks, the exit
code table (README's, checked against the code), watch's codes, JSON usage errors,
an explicit --socket without another daemon's file, FIFOs, a full listen backlog,
records on standard input, wording.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from servertracker import STATUS_FILE_NAME, paths, protocol
from servertracker.cli import main
from servertracker.cli_common import EXIT_CODES
from servertracker.paths import resolve_runtime_dir
from tests.conftest import TRACKERCTL, Daemon, run_as_nobody, trackerctl, wait_for

ROOT = Path(__file__).resolve().parent.parent


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TRACKERD_SOCKET", "TRACKERD_RUNTIME_DIR", "RUNTIME_DIRECTORY")
    }
    return {**env, **extra}


def test_version_and_short_help() -> None:
    for flag in ("--version", "-V"):
        result = trackerctl(flag)
        assert result.returncode == 0
        assert re.fullmatch(
            r"trackerctl \d+\.\d+\.\d+\S*; servertracker library: .+\n", result.stdout
        )
    assert trackerctl("-h").stdout == trackerctl("--help").stdout
    assert trackerctl("status", "-h").stdout.startswith("Usage: trackerctl status")


def test_shell_completion() -> None:
    # typer asks the parent process which shell it is; a test names the shell instead.
    env = dict(os.environ, _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    script = trackerctl("--show-completion", "bash", env=env)
    assert script.returncode == 0 and "_TRACKERCTL_COMPLETE" in script.stdout
    env = dict(os.environ, _TRACKERCTL_COMPLETE="complete_bash", COMP_WORDS="trackerctl st")
    env["COMP_CWORD"] = "1"
    result = subprocess.run([*TRACKERCTL], env=env, capture_output=True, text=True, timeout=30)
    assert "status" in result.stdout.split()


def test_common_options_before_the_command(daemon: Daemon) -> None:
    result = trackerctl("--json", "--runtime-dir", str(daemon.runtime_dir), "status")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["source"] == "live"
    result = trackerctl("--socket", str(daemon.socket_path), "--timeout", "5", "ping")
    assert result.returncode == 0 and result.stdout.startswith("pong from")


def test_readme_exit_code_table_is_the_code_s() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("| exit code | meaning |") :].split("\n\n")[0]
    rows = re.findall(r"^\| (\d+) \|", section, re.MULTILINE)
    assert [int(r) for r in rows] == [code for code, _ in EXIT_CODES]


def test_an_undecodable_sender_is_recorded_without_a_traceback(daemon: Daemon) -> None:
    where = ["--socket", str(daemon.socket_path)]
    result = trackerctl("record", "192.0.2.1", b"a@\xff\xfe.com", *where)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""
    status = daemon.status()
    assert status.records == 1 and status.unique_conn_ips == 1
    # With no daemon: the error names the socket, never the value.
    result = trackerctl("record", "192.0.2.1", b"secret@\xff.example", "--socket", "/nonexistent")
    assert result.returncode == 4 and "secret" not in result.stderr


def test_output_into_a_full_disk(daemon: Daemon) -> None:
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [*TRACKERCTL, "status", "--runtime-dir", str(daemon.runtime_dir)],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert result.stderr == "trackerctl: cannot write the output: No space left on device\n"


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to become another user")
def test_an_unreadable_runtime_dir_gives_4_by_option_and_by_environment(
    short_tmp: Path,
) -> None:
    closed = short_tmp / "closed"
    closed.mkdir(mode=0o700)
    short_tmp.chmod(0o755)

    def both_ways() -> int:
        # Forked as nobody, through main() as the console script runs it (nobody
        # cannot start this venv's interpreter, which lives under /root).
        os.environ.pop("TRACKERD_SOCKET", None)
        by_option = main(["status", "--runtime-dir", str(closed)])
        os.environ["TRACKERD_RUNTIME_DIR"] = str(closed)
        by_environment = main(["status"])
        return by_option * 10 + by_environment

    assert run_as_nobody(both_ways) == 44


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to become another user")
def test_permission_denied_says_how_the_runtime_dir_was_chosen(
    daemon: Daemon, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user sent to root's runtime directory because it exists is told so (issue 11 §7).
    The daemon's directory stands in for /run/trackerd (forked children inherit it); it
    is 0700 root, as root's daemon leaves it: nobody may not enter it."""
    system_dir = daemon.runtime_dir
    assert system_dir.stat().st_mode & 0o7 == 0
    short_tmp.chmod(0o755)
    monkeypatch.setattr(paths, "SYSTEM_RUNTIME_DIR", system_dir)
    env = {k: v for k, v in clean_env().items() if k != "XDG_RUNTIME_DIR"}
    chosen = (
        f"runtime directory {system_dir} (chosen because it exists: the system install's "
        "directory; give --runtime-dir or set $TRACKERD_RUNTIME_DIR to pick another)"
    )
    # (metrics alike, but its lazy import of prometheus_client from this venv under /root
    # fails as nobody.)
    for command in ("status", "ping", "watch"):
        args = [command, "--count", "1"] if command == "watch" else [command]
        code, out, err = trackerctl_with_default(args, env, short_tmp)
        assert (code, out) == (4, ""), (command, err)
        assert "permission denied" in err and err.count(chosen) == 1, (command, err)
        code, out, err = trackerctl_with_default(["--json", *args], env, short_tmp)
        error = json.loads(err)
        assert (code, out) == (4, "") and chosen in error["message"], (command, err)
        assert error["reason"] in ("permission-denied", "unavailable"), (command, err)

    by_environment = {**env, "TRACKERD_RUNTIME_DIR": str(system_dir)}
    code, _, err = trackerctl_with_default(["status"], by_environment, short_tmp)
    assert code == 4 and f"runtime directory {system_dir} (from $TRACKERD_RUNTIME_DIR)" in err
    # Given on the command line: nothing to explain.
    code, _, err = trackerctl_with_default(
        ["ping", "--runtime-dir", str(system_dir)], env, short_tmp
    )
    assert code == 4 and "permission denied" in err and "runtime directory" not in err
    # A socket given elsewhere: the directory's choice does not explain its refusal.
    elsewhere = short_tmp / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    code, _, err = trackerctl_with_default(
        ["ping", "--socket", str(elsewhere / "s")], env, short_tmp
    )
    assert code == 4 and "permission denied" in err and "runtime directory" not in err


def test_watch_exits_with_its_last_refresh_s_code(daemon: Daemon, short_tmp: Path) -> None:
    nothing = trackerctl("watch", "--count", "1", "--runtime-dir", str(short_tmp / "none"))
    assert nothing.returncode == 4 and "no status" in nothing.stderr
    live = trackerctl("watch", "--count", "1", "--runtime-dir", str(daemon.runtime_dir))
    assert live.returncode == 0
    assert daemon.stop() == 0
    from_file = trackerctl("watch", "--count", "1", "--runtime-dir", str(daemon.runtime_dir))
    assert from_file.returncode == 3 and "from the status file" in from_file.stdout


def test_usage_errors_under_json_are_one_json_line() -> None:
    for args in (
        ["--json", "status", "--bogus"],
        ["status", "--json", "--bogus"],
        ["--json", "frobnicate"],
        ["record", "--json", "192.0.2.1"],
        ["--json", "watch", "-n", "0"],
    ):
        result = trackerctl(*args)
        assert result.returncode == 2, args
        assert result.stdout == ""
        assert result.stderr.count("\n") == 1, args
        line = json.loads(result.stderr)
        assert line["reason"] == "usage" and line["error"] == line["message"], args


def trackerctl_with_default(
    args: list[str], env: dict[str, str], where: Path
) -> tuple[int, str, str]:
    """trackerctl with env's default runtime directory. Root's default is /run/trackerd,
    so as root this runs as nobody, in a forked process through main() (nobody cannot
    start this venv's interpreter, which lives under /root)."""
    if os.getuid() != 0:
        result = trackerctl(*args, env=env)
        return result.returncode, result.stdout, result.stderr
    with open(where / "out", "w+") as out, open(where / "err", "w+") as err:

        def run() -> int:
            # Write to the files, not to pytest's capture objects.
            with (
                open(out.fileno(), "w", closefd=False) as sys.stdout,
                open(err.fileno(), "w", closefd=False) as sys.stderr,
            ):
                os.environ.clear()
                os.environ.update(env)
                return main(args)

        code = run_as_nobody(run)
        out.seek(0)
        err.seek(0)
        return code, out.read(), err.read()


def test_an_explicit_socket_never_shows_another_daemon_s_file(short_tmp: Path) -> None:
    short_tmp.chmod(0o755)
    env = clean_env(XDG_RUNTIME_DIR=str(short_tmp / "xdg"))
    default_dir = resolve_runtime_dir(None, env, euid=65534)
    if not str(default_dir).startswith(str(short_tmp)):
        pytest.skip(f"{default_dir} is this machine's default runtime directory")
    default_dir.mkdir(parents=True, mode=0o755)
    status = {"boot_time": 1, "unique_conn_ips": 77, "unique_domains": 0, "unique_ip_servers": 0}
    (default_dir / STATUS_FILE_NAME).write_text(json.dumps(status))
    (default_dir / STATUS_FILE_NAME).chmod(0o644)

    def status_of(*args: str) -> tuple[int, str, str]:
        return trackerctl_with_default(["status", *args], env, short_tmp)

    # Another daemon's socket: the default directory's file is not its file.
    code, out, err = status_of("--socket", str(short_tmp / "other.sock"))
    assert code == 4 and "77" not in out
    assert "give --runtime-dir too" in err
    code, _, err = status_of("--json", "--socket", str(short_tmp / "o.sock"))
    assert code == 4 and json.loads(err)["status_file"]["reason"] == "status-file"
    # The socket of that very directory, or the directory given too: its file is right.
    code, out, _ = status_of("--socket", str(default_dir / "trackerd.sock"))
    assert code == 3 and "Connection IPs: 77" in out
    code, _, _ = status_of("--socket", str(short_tmp / "o.sock"), "--runtime-dir", str(default_dir))
    assert code == 3


def test_a_fifo_status_file_does_not_hang(short_tmp: Path) -> None:
    os.mkfifo(short_tmp / STATUS_FILE_NAME)
    result = trackerctl("status", "--runtime-dir", str(short_tmp), "--timeout", "0.5")
    assert result.returncode == 4
    assert "not a regular file" in result.stderr


def _sleeping(pid: int) -> bool:
    """The process sleeps in time.sleep(): trackerctl between two connect attempts."""
    try:
        wchan = Path(f"/proc/{pid}/wchan").read_text()
        syscall = Path(f"/proc/{pid}/syscall").read_text().split()[0]
    except (OSError, IndexError):
        return False
    # clock_nanosleep is system call 230 on x86_64; wchan names it where it is shown.
    return wchan in ("hrtimer_nanosleep", "do_nanosleep") or syscall == "230"


def test_a_full_listen_backlog_is_retried_until_the_timeout(short_tmp: Path) -> None:
    path = str(short_tmp / "busy.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(0)
    fillers = []
    while True:  # fill the backlog: further connects fail with EAGAIN
        filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        filler.setblocking(False)
        try:
            filler.connect(path)
        except BlockingIOError:
            filler.close()
            break
        fillers.append(filler)
    try:
        result = trackerctl("ping", "--socket", path, "--timeout", "0.3", "--json")
        assert result.returncode == 4
        error = json.loads(result.stderr)
        assert error["reason"] == "timeout" and "backlog" in error["message"]
        # Now free the backlog while trackerctl waits, and answer its ping.
        process = subprocess.Popen(
            [*TRACKERCTL, "ping", "--socket", path, "--timeout", "20"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(lambda: process.poll() is not None or _sleeping(process.pid), 20, "a retry")
        assert process.poll() is None, process.communicate()
        for filler in fillers:
            filler.close()
        answered = threading.Event()

        def answer() -> None:
            while not answered.is_set():
                conn, _ = server.accept()
                with conn:
                    decoder = protocol.MessageDecoder()
                    decoder.receive_data(conn.recv(4096))
                    if isinstance(decoder.next_message(), protocol.Ping):
                        conn.sendall(protocol.encode(protocol.Pong()))
                        answered.set()

        threading.Thread(target=answer, daemon=True).start()
        out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert out.startswith("pong from")
    finally:
        for filler in fillers:
            filler.close()
        server.close()


def test_record_reads_standard_input(daemon: Daemon) -> None:
    # Blank lines and "#" comments (even indented) are skipped, not counted as records.
    lines = (
        "# from the hook\n192.0.2.1 a@example.com\n192.0.2.2\t<>\n\n  # a comment\n"
        "192.0.2.3\n192.0.2.4  b@[192.0.2.9]\n"
    )
    result = trackerctl("record", "--socket", str(daemon.socket_path), "--json", stdin=lines)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"ok": True, "records": 4}
    status = daemon.status()
    assert (status.unique_conn_ips, status.unique_domains, status.unique_ip_servers) == (4, 1, 1)
    assert status.records == 4 and status.rejected_senders == 0
    assert status.rejected_conn_ips == 0
    help_text = " ".join(trackerctl("record", "--help").stdout.split())
    assert "standard input" in help_text
    assert 'blank lines and lines starting with "#" are skipped' in help_text
    assert 'count them twice in "records", but never in the distinct counts' in help_text
    one = trackerctl("record", "192.0.2.1", "--socket", str(daemon.socket_path))
    assert one.returncode == 2


def test_wording(daemon: Daemon) -> None:
    with daemon.connect() as conn:
        conn.record([("not-an-ip", "a@example.com")])
        conn.ping()
    result = trackerctl("status", "--runtime-dir", str(daemon.runtime_dir))
    assert "(rejected: 1 connection IP, 0 senders)" in result.stdout
    watch = trackerctl("watch", "--count", "1", "--runtime-dir", str(daemon.runtime_dir))
    assert "per second" in watch.stdout and "per minute" not in watch.stdout
    rates = [line.split()[-1] for line in watch.stdout.splitlines() if line.startswith("  R")]
    assert rates == ["-"]  # the first frame has no rate, rather than a false 0.0


def test_a_symlinked_runtime_dir_is_refused_saying_why(short_tmp: Path) -> None:
    real = short_tmp / "real"
    real.mkdir(mode=0o750)
    link = short_tmp / "link"
    link.symlink_to(real)
    result = subprocess.run(
        [sys.executable, "-m", "trackerd", "--runtime-dir", str(link)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"runtime directory {link} is a symbolic link (to {real})" in result.stderr
    assert "Traceback" not in result.stderr
