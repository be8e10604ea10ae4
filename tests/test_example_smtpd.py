"""The pre-fork aiosmtpd example, end to end: real SMTP from several processes, real counts."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from tests.conftest import Daemon, LineReader, wait_for
from tests.process_dump import describe_group
from tests.test_recorder import wait_counts

EXAMPLE = Path(__file__).parent.parent / "examples" / "preforked_smtpd.py"
CLIENTS = 4
MESSAGES = 30

# Senders cycled through by every client: 5 domains (in several spellings),
# 3 IP literals, and the null sender.
SENDERS = [
    "alice@example.com",
    "Bob@EXAMPLE.com",
    "carol@Bücher.de",
    "dave@xn--bcher-kva.de",
    "erin@mail.example.org",
    "frank@example.net",
    "grace@example.info",
    "h@[192.0.2.10]",
    "i@[IPv6:2001:db8::10]",
    "j@[192.0.2.11]",
    "",  # MAIL FROM:<>
]


def send_mail(port: int, client: int) -> None:
    # Each client process connects from its own loopback address: 127.0.0.0/8 is all ours.
    source = (f"127.0.0.{10 + client}", 0)
    for n in range(MESSAGES):
        with smtplib.SMTP("127.0.0.1", port, source_address=source, timeout=30) as smtp:
            sender = SENDERS[(n + client) % len(SENDERS)]
            options = [] if sender.isascii() else ["SMTPUTF8"]
            smtp.sendmail(
                sender, ["postmaster@localhost"], b"Subject: hi\r\n\r\nhello\r\n", options
            )


def test_preforked_aiosmtpd_example(daemon: Daemon, short_tmp: Path) -> None:
    env = dict(os.environ, TRACKERD_SOCKET=str(daemon.socket_path), PYTHONUNBUFFERED="1")
    server = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--port", "0", "--workers", "3"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = LineReader(server.stdout).readline(60, "the server's port")
        port = int(line.split(":")[1].split()[0])
        context = multiprocessing.get_context("fork")
        clients = [context.Process(target=send_mail, args=(port, c)) for c in range(CLIENTS)]
        for process in clients:
            process.start()
        for process in clients:
            process.join(120)
            assert process.exitcode == 0
        # 4 source addresses; domains example.com, bücher.de, mail.example.org, example.net,
        # example.info; 3 IP literals; the null sender is ignored but its record counts.
        wait_counts(daemon, (CLIENTS, 5, 3, CLIENTS * MESSAGES))
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
    assert wait_for(lambda: daemon.status().rejected_senders == 0, what="status")


# Runs the example with a default client whose flush at exit may take a minute,
# not the library's one second: what is tested is that Ctrl-C lets that flush
# finish, which a loaded machine must not turn into a loss within the 1 s bound
# (that bound has its own test, in test_recorder.py).
PATIENT_EXIT = """
import runpy, sys
from servertracker import recorder
recorder._default_client = recorder.Client(exit_timeout=60)
sys.argv = [{example!r}, "--port", "0", "--workers", "{workers}"]
runpy.run_path({example!r}, run_name="__main__")
"""


def stop_and_wait(server: subprocess.Popen[str], timeout: float, stderr: IO[str]) -> str:
    """Wait for the example to exit and return its stderr. On timeout: fail saying
    what every process of its group was doing (threads' states, wchan, signal
    masks, py-spy's stacks), and its stderr so far (patient_example kills them)."""
    try:
        server.wait(timeout)
    except subprocess.TimeoutExpired:
        stuck = describe_group(server.pid)
        stderr.seek(0)
        pytest.fail(
            f"the example did not exit within {timeout} s; its processes:\n{stuck}\n"
            f"its stderr:\n{stderr.read()}"
        )
    stderr.seek(0)
    return stderr.read()


@contextlib.contextmanager
def patient_example(
    daemon: Daemon, stderr: IO[str], workers: int
) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """The example with a patient default client (PATIENT_EXIT), in its own process
    group, as a shell job is; and the port it listens on. Whatever is left of the
    group at the end is killed, whatever failed."""
    env = dict(os.environ, TRACKERD_SOCKET=str(daemon.socket_path), PYTHONUNBUFFERED="1")
    server = subprocess.Popen(
        [sys.executable, "-c", PATIENT_EXIT.format(example=str(EXAMPLE), workers=workers)],
        env=env, stdout=subprocess.PIPE, stderr=stderr, text=True,
        start_new_session=True,  # its own process group, as a shell job has
    )  # fmt: skip
    try:
        assert server.stdout is not None
        line = LineReader(server.stdout).readline(60, "the server's port")
        yield server, int(line.split(":")[1].split()[0])
    finally:
        if server.poll() is None or group_members(server.pid):
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)


def test_ctrl_c_stops_every_process_cleanly_with_the_records_flushed(
    daemon: Daemon, short_tmp: Path
) -> None:
    """A terminal's Ctrl-C signals the whole process group: each worker gets SIGINT
    from the terminal and a signal from the parent. No traceback, and nothing lost:
    a second signal used to raise KeyboardInterrupt in the workers' flush at exit,
    and later (2 runs in 30 beside 3 CPU hogs) deadlocked a worker whose handler it
    interrupted, or was never seen by a worker idle in epoll_wait; or it killed a
    worker at its very end (exit status 241). On a hang this says where each
    process and thread of the group was (stop_and_wait)."""
    with (
        open(short_tmp / "stderr", "w+") as stderr,  # not a pipe: read while they live
        patient_example(daemon, stderr, workers=3) as (server, port),
    ):
        for n in range(9):
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
                smtp.sendmail(f"u@d{n}.example", ["postmaster@localhost"], b"\r\nhi\r\n")
        os.killpg(server.pid, signal.SIGINT)
        # The workers' flush at exit may take up to 60 s here.
        errors = stop_and_wait(server, 120, stderr)
    assert server.returncode == 0, errors
    assert "Traceback" not in errors and "KeyboardInterrupt" not in errors, errors
    wait_counts(daemon, (1, 9, 0, 9))  # one source, nine domains, nine records


def blocked_signals(pid: int, tid: int) -> set[int]:
    """The signals a thread of a process blocks (SigBlk in its /proc status)."""
    status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
    (mask,) = [line.split()[1] for line in status.splitlines() if line.startswith("SigBlk:")]
    return {signum for signum in range(1, 65) if int(mask, 16) >> (signum - 1) & 1}


def wchan(pid: int, tid: int) -> str:
    """Where in the kernel a thread of a process sleeps."""
    return Path(f"/proc/{pid}/task/{tid}/wchan").read_text()


def test_no_thread_of_a_worker_can_take_a_stop_signal_in_a_handler(
    daemon: Daemon, short_tmp: Path
) -> None:
    """The kernel hands a process's signal to any thread that does not block it:
    to the recorder's flusher or asyncio's executor thread when the main thread
    has one pending already (SIGINT from the terminal, then SIGTERM from the
    parent). A worker with a Python handler then served on for ever (Python runs
    handlers in the main thread, idle in epoll_wait), or deadlocked in its handler,
    or was killed by a late SIGTERM once the interpreter had put SIG_DFL back at
    exit. Now every thread of a worker blocks the stop signals, its whole life,
    and the first one stops it (sigwait); several at once do no harm."""
    with (
        open(short_tmp / "stderr", "w+") as stderr,
        patient_example(daemon, stderr, workers=1) as (server, port),
    ):
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            smtp.sendmail("u@d.example", ["postmaster@localhost"], b"\r\nhi\r\n")
        # Its record is sent: the flusher thread exists and the worker is idle.
        wait_counts(daemon, (1, 1, 0, 1))
        (worker,) = [pid for pid in group_members(server.pid) if pid != server.pid]
        threads = sorted(int(tid) for tid in os.listdir(f"/proc/{worker}/task"))
        assert len(threads) >= 3, "the main thread, asyncio's executor and the flusher"
        for tid in threads:
            # The one in sigwait() has them unblocked while it waits (the kernel's
            # real_blocked), and takes them there, not in a handler.
            if not wchan(worker, tid).startswith("do_sigtimedwait"):
                blocked = blocked_signals(worker, tid)
                assert {signal.SIGINT, signal.SIGTERM} <= blocked, f"thread {tid} of {threads}"

        def waiting() -> list[int]:
            return [tid for tid in threads if wchan(worker, tid).startswith("do_sigtimedwait")]

        assert len(wait_for(waiting, what="a thread in sigwait()")) == 1
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGTERM):
            os.kill(worker, signum)
        errors = stop_and_wait(server, 60, stderr)
    assert server.returncode == 0, errors
    assert "Traceback" not in errors, errors


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of a process group."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        state, _parent, group = stat.rsplit(")", 1)[1].split()[:3]
        if int(group) == pgid and state != "Z":
            members.append(int(entry))
    return members


# Runs the example with a stop signal sent at a chosen moment: in the parent,
# just before it forks its second worker (one worker exists, two do not yet).
SIGNAL_WHILE_FORKING = """
import os, runpy, signal, sys
forks = 0
def before_fork():
    global forks
    forks += 1
    if forks == 2:
        {send}
os.register_at_fork(before=before_fork)
sys.argv = [{example!r}, "--port", "0", "--workers", "3"]
runpy.run_path({example!r}, run_name="__main__")
"""


@pytest.mark.parametrize(
    "send",
    [
        "os.kill(os.getpid(), signal.SIGTERM)",  # a service manager stopping the parent
        "os.killpg(0, signal.SIGINT)",  # Ctrl-C at a terminal: the whole group
    ],
    ids=["sigterm-to-the-parent", "ctrl-c-to-the-group"],
)
def test_a_stop_signal_while_forking_stops_every_worker(short_tmp: Path, send: str) -> None:
    """A signal that came while the parent forked its workers used to be lost:
    SIGTERM killed the parent and left the worker already forked running with no
    one to stop it; Ctrl-C's KeyboardInterrupt was raised in an at-fork hook (logging's,
    or here this test's own), which swallows it, and every process went on serving.
    Now every process stops."""
    env = dict(os.environ, TRACKERD_SOCKET=str(short_tmp / "none.sock"), PYTHONUNBUFFERED="1")
    code = SIGNAL_WHILE_FORKING.format(send=send, example=str(EXAMPLE))
    with open(short_tmp / "stderr", "w+") as stderr:  # not a pipe: a stray worker holds it
        server = subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=stderr,
            start_new_session=True,  # its own process group, as a shell job has
        )  # fmt: skip
        try:
            returncode: int | None = server.wait(60)
        except subprocess.TimeoutExpired:
            returncode = None  # still serving: the signal was lost
        left = group_members(server.pid)  # the parent reaps every worker before it exits
        if server.poll() is None or left:
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(10)
        stderr.seek(0)
        errors = stderr.read()
    assert returncode == 0, errors
    assert left == [], "workers left running after the parent"
    assert "Traceback" not in errors and "KeyboardInterrupt" not in errors, errors


def run_example(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The example run to its end (a mistake in its arguments, or a failed bind)."""
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, timeout=60,
        env=env,
    )  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [
        ["--port", "99999"],
        ["--port", "-1"],
        ["--port", "smtp"],
        ["--workers", "0"],
        ["--workers", "-3"],
        ["--workers", "100000"],
    ],
)
def test_an_argument_out_of_range_is_a_usage_error(args: list[str]) -> None:
    """--port 99999 used to end in an OverflowError traceback, and --workers 0 in
    "listening ... with 0 workers" and exit 0, serving nothing."""
    result = run_example(*args)
    assert result.returncode == 2, result.stderr
    assert f"argument {args[0]}:" in result.stderr
    assert "Traceback" not in result.stderr and "listening" not in result.stdout


def test_help_says_what_each_option_is() -> None:
    result = run_example("--help")
    assert result.returncode == 0
    for option, words in [
        ("--host", "address to listen on"),
        ("--port", "0 for any free one"),
        ("--workers", "worker processes"),
    ]:
        assert option in result.stdout and words in " ".join(result.stdout.split()), option
    # How the workers find trackerd: the same defaults as trackerd's, and the variables.
    text = " ".join(result.stdout.split())
    assert "$TRACKERD_SOCKET, else <runtime dir>/trackerd.sock" in text
    assert "$TRACKERD_RUNTIME_DIR, else $RUNTIME_DIRECTORY" in text


def test_a_port_in_use_is_one_clear_line_and_a_failure() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_example("--port", str(port), "--workers", "1")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"preforked_smtpd.py: cannot listen on 127.0.0.1:{port}: Address already in use"
        " (another server listens there: pick another --port)"
    )
    assert result.stdout == ""


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv")
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to run the example as nobody")
def test_a_privileged_port_as_another_user_is_one_clear_line_and_a_failure() -> None:
    """--port 25 as a user that may not bind it: PermissionError, no traceback."""
    setpriv = shutil.which("setpriv")
    assert setpriv is not None
    result = subprocess.run(
        [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, str(EXAMPLE), "--port", "25", "--workers", "1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == (
        "preforked_smtpd.py: cannot listen on 127.0.0.1:25: Permission denied"
        " (a port below 1024 needs root or CAP_NET_BIND_SERVICE)"
    )
