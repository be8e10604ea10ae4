"""systemd: real socket activation, sd_notify to a test NOTIFY_SOCKET, and the unit files."""

from __future__ import annotations

import ctypes
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from servertracker.connection import DaemonConnection
from servertracker.errors import DaemonUnavailable
from tests.conftest import remove_tree, wait_for
from trackerd.edges.systemd import listen_fds, make_non_dumpable, pick_fd

UNITS = Path(__file__).parent.parent / "systemd"
MANUALS = Path(__file__).parent.parent / "man"
TRACKERD = [sys.executable, "-m", "trackerd", "--log-level", "debug"]
needs = pytest.mark.skipif


def ping_until_up(socket_path: Path, timeout: float = 60) -> None:
    def answers() -> bool:
        try:
            with DaemonConnection(socket_path, timeout=30) as conn:
                conn.ping()
            return True
        except DaemonUnavailable:
            return False

    wait_for(answers, timeout, "trackerd to answer")


@needs(shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate missing")
@pytest.mark.parametrize("fdname", ["trackerd", None])
def test_socket_activation(short_tmp: Path, fdname: str | None) -> None:
    socket_path = short_tmp / "activated.sock"
    runtime = short_tmp / "rt"
    naming = [f"--fdname={fdname}"] if fdname else []
    command = [
        "systemd-socket-activate",
        "-l",
        str(socket_path),
        *naming,
        *TRACKERD,
        "--runtime-dir",
        str(runtime),
    ]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        ping_until_up(socket_path)  # the first connection makes the activator exec trackerd
        with DaemonConnection(socket_path, timeout=30) as conn:
            conn.record([("192.0.2.1", "a@example.com"), ("192.0.2.2", "b@example.org")])
            status = conn.status()
        assert (status.unique_conn_ips, status.unique_domains) == (2, 2)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=20)
        assert process.returncode == 0
        assert "listening on a socket passed by systemd" in err
        assert socket_path.exists()  # the activator's socket: not ours to remove
        assert (runtime / "server_tracker.json").exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


class NotifyListener:
    """A stand-in for systemd's notification socket."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def collect(self) -> list[str]:
        try:
            while True:
                self.messages.append(self.sock.recv(4096).decode())
        except TimeoutError:
            pass
        return self.messages

    def wait_for(self, prefix: str, timeout: float = 60) -> str:
        def seen() -> str | None:
            for message in self.collect():
                if any(line.startswith(prefix) for line in message.splitlines()):
                    return message
            return None

        return wait_for(seen, timeout, f"a notification with {prefix}")


@pytest.fixture(params=["path", "abstract"])
def notify_listener(request: pytest.FixtureRequest, short_tmp: Path) -> Iterator[NotifyListener]:
    address = (
        str(short_tmp / "notify")
        if request.param == "path"
        else f"@trackerd-test-{os.getpid()}-{time.monotonic_ns()}"
    )
    listener = NotifyListener(address)
    yield listener
    listener.sock.close()


def test_sd_notify_ready_status_stopping_in_order(
    notify_listener: NotifyListener, short_tmp: Path
) -> None:
    env = dict(os.environ, NOTIFY_SOCKET=notify_listener.address)
    runtime = short_tmp / "rt"
    process = subprocess.Popen(
        [*TRACKERD, "--runtime-dir", str(runtime)], env=env, stderr=subprocess.DEVNULL
    )
    try:
        ready = notify_listener.wait_for("READY=1")
        assert "STATUS=Ready: 0 connection IPs" in ready
        assert f"MAINPID={process.pid}" in ready
        # READY=1 comes only after the socket listens and the first status file exists.
        assert (runtime / "server_tracker.json").exists()
        with DaemonConnection(runtime / "trackerd.sock", timeout=30) as conn:
            conn.record([("192.0.2.1", "a@example.com")])
            conn.ping()
        notify_listener.wait_for("STATUS=1 connection IP, 1 domain")
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        notify_listener.wait_for("STOPPING=1")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    kinds = [m.splitlines()[0].split("=")[0] for m in notify_listener.messages]
    assert kinds.index("READY") < kinds.index("STATUS") < kinds.index("STOPPING")
    assert "WATCHDOG" not in kinds  # not asked for


# Pings at half of WatchdogSec: tests/test_timing_promises.py.


def test_watchdog_for_another_pid_is_ignored(short_tmp: Path) -> None:
    listener = NotifyListener(str(short_tmp / "notify"))
    env = dict(os.environ, NOTIFY_SOCKET=listener.address, WATCHDOG_USEC="200000", WATCHDOG_PID="1")
    process = subprocess.Popen(
        [*TRACKERD, "--runtime-dir", str(short_tmp / "rt")], env=env, stderr=subprocess.DEVNULL
    )
    try:
        listener.wait_for("READY=1")
        with DaemonConnection(short_tmp / "rt" / "trackerd.sock") as conn:
            conn.ping()
    finally:
        process.terminate()
        process.wait(20)
    assert "WATCHDOG=1" not in listener.collect()
    listener.sock.close()


def test_listen_fds_parsing() -> None:
    pid = os.fork()
    if pid == 0:  # a child, where fds 3 and 4 can be made what systemd would pass
        ok = False
        try:
            read, write = os.pipe()
            os.dup2(read, 3, inheritable=True)
            os.dup2(write, 4, inheritable=True)
            env = {
                "LISTEN_PID": str(os.getpid()),
                "LISTEN_FDS": "2",
                "LISTEN_FDNAMES": "trackerd:postfix-policy",
            }
            ok = listen_fds(env) == {"trackerd": 3, "postfix-policy": 4}
            ok = ok and env == {} and not os.get_inheritable(3)  # unset; close-on-exec
        finally:
            os._exit(0 if ok else 1)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert listen_fds({"LISTEN_PID": "1", "LISTEN_FDS": "1"}) == {}
    assert pick_fd({"unknown": 3}, "trackerd") == 3
    assert pick_fd({"postfix-policy": 3}, "trackerd") is None


def test_make_non_dumpable() -> None:
    pid = os.fork()
    if pid == 0:
        ok = make_non_dumpable()
        libc = ctypes.CDLL(None)
        os._exit(0 if ok and libc.prctl(3, 0, 0, 0, 0) == 0 else 1)  # PR_GET_DUMPABLE
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


MAIN_UNITS = ("trackerd.service", "trackerd.socket", "trackerd-postfix.socket")
FLEET_UNITS = (
    "trackerd-fleet-push.service",
    "trackerd-fleet-push.timer",
    "trackerd-fleet-advance.service",
    "trackerd-fleet-advance.timer",
)


def unit_copies(tmp: Path) -> Path:
    """The units with ExecStart= pointing at this environment's trackerd."""
    trackerd = Path(sys.executable).parent / "trackerd"
    assert trackerd.exists()
    for unit in (*MAIN_UNITS, *FLEET_UNITS):
        # trackerctl before trackerd: the one replace would catch both otherwise.
        text = (UNITS / unit).read_text()
        text = text.replace("/usr/local/bin/trackerctl", str(trackerd.parent / "trackerctl"))
        text = text.replace("/usr/local/bin/trackerd", str(trackerd))
        (tmp / unit).write_text(text)
    return tmp / "trackerd.service"


@needs(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_systemd_analyze_verify_reports_nothing(short_tmp: Path) -> None:
    service = unit_copies(short_tmp)
    # The units' Documentation=man:trackerd(8) ...: verify runs man(1) on each, so it
    # must find the project's pages: man/ has man's own layout (a trailing ":" in
    # MANPATH keeps the system's pages, systemd.socket(5) among them).
    result = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            str(service),
            *(str(short_tmp / unit) for unit in (*MAIN_UNITS[1:], *FLEET_UNITS)),
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, MANPATH=f"{MANUALS}:"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


@needs(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_systemd_analyze_security_exposure_at_most_1(short_tmp: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit_copies(short_tmp))],
        capture_output=True,
        text=True,
    )
    match = re.search(r"Overall exposure level for trackerd.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 1.0


def test_unit_settings_that_matter() -> None:
    service = (UNITS / "trackerd.service").read_text()
    socket_unit = (UNITS / "trackerd.socket").read_text()
    service_lines = service.splitlines()
    for line in (
        "Type=notify",
        "LimitCORE=0",
        "RuntimeDirectory=trackerd",
        "RuntimeDirectoryPreserve=yes",
    ):
        assert line in service_lines
    assert any(line.startswith("WatchdogSec=") for line in service_lines)
    socket_lines = socket_unit.splitlines()
    for line in (
        "ListenStream=/run/trackerd/trackerd.sock",
        "SocketMode=0660",
        "SocketGroup=trackerd",
    ):
        assert line in socket_lines
    assert "FileDescriptorName=trackerd" in socket_lines


def system_call_groups() -> dict[str, list[str]]:
    """Every @group systemd knows, with its members (calls and @subgroups)."""
    output = subprocess.run(
        ["systemd-analyze", "syscall-filter"], capture_output=True, text=True, check=True
    ).stdout
    groups: dict[str, list[str]] = {}
    for block in output.split("\n\n"):
        lines = [line.strip() for line in block.splitlines()]
        lines = [line for line in lines if line and not line.startswith("#")]
        if lines and lines[0].startswith("@"):
            groups[lines[0]] = lines[1:]
    return groups


def allowed_system_calls(unit_text: str) -> set[str]:
    """What the unit's SystemCallFilter= lines allow: the allow-list minus the ~ lines."""
    groups = system_call_groups()

    def expand(names: list[str]) -> set[str]:
        calls: set[str] = set()
        for name in names:
            calls |= expand(groups[name]) if name.startswith("@") else {name}
        return calls

    allowed: set[str] = set()
    denied: set[str] = set()
    for line in unit_text.splitlines():
        if line.startswith("SystemCallFilter="):
            value = line.removeprefix("SystemCallFilter=")
            if value.startswith("~"):
                denied |= expand(value[1:].split())
            else:
                allowed |= expand(value.split())
    assert allowed, "the unit has no SystemCallFilter allow-list"
    return allowed - denied


#: Calls trackerd's process makes that the unit's filter refuses, and why that is fine.
REFUSED_AND_HARMLESS = {
    # OpenBLAS, loaded with numpy, asks for NUMA placement of its buffers and
    # ignores the answer. (mbind is in @resources.)
    "mbind": "a NUMA hint",
}


def open_file_limit_as_in_the_unit() -> None:
    """LimitNOFILE=8192 (as far as this machine's hard limit lets us)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = 8192 if hard == resource.RLIM_INFINITY else min(8192, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@needs(
    shutil.which("strace") is None or shutil.which("systemd-analyze") is None,
    reason="needs strace and systemd-analyze",
)
def test_every_system_call_trackerd_makes_passes_the_units_filter(short_tmp: Path) -> None:
    """No PID 1 here to run the unit, so strace plays its system call filter: every
    call outside the unit's SystemCallFilter= fails with EPERM, as under systemd.
    trackerd goes through all it does (start, both listeners, notifications,
    status writes, putting a removed runtime directory back, shutdown) and must
    work throughout; the calls that were refused must be known to be harmless.
    The trace is also held against RestrictAddressFamilies=AF_UNIX and
    MemoryDenyWriteExecute=yes."""
    service = (UNITS / "trackerd.service").read_text()
    allowed = allowed_system_calls(service)
    assert "RestrictAddressFamilies=AF_UNIX" in service.splitlines()
    assert "MemoryDenyWriteExecute=yes" in service.splitlines()
    trace, runtime, policy = short_tmp / "trace", short_tmp / "rt", short_tmp / "policy.sock"
    notify = NotifyListener(str(short_tmp / "notify"))
    env = dict(os.environ, NOTIFY_SOCKET=notify.address, WATCHDOG_USEC="400000")
    command = [
        "strace", "-f", "-qq", "-s", "0", "-o", str(trace),
        # "?": names of other architectures' calls are no error.
        "-e", f"inject=!{','.join('?' + name for name in sorted(allowed))}:error=EPERM",
        *TRACKERD, "--runtime-dir", str(runtime), "--postfix-policy-socket", str(policy),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, env=env, stderr=subprocess.DEVNULL, preexec_fn=open_file_limit_as_in_the_unit
    )
    try:
        ready = notify.wait_for("READY=1", 60)
        trackerd_pid = int(re.findall(r"MAINPID=(\d+)", ready)[0])  # strace's child
        with DaemonConnection(runtime / "trackerd.sock", timeout=10) as conn:
            conn.record([("192.0.2.1", "a@example.com"), ("2001:db8::1", "b@[192.0.2.9]")])
            assert conn.status().unique_conn_ips == 2
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(policy))
            sock.sendall(b"request=smtpd_access_policy\nclient_address=192.0.2.3\n\n")
            assert sock.recv(100) == b"action=DUNNO\n\n"
        notify.wait_for("WATCHDOG=1")
        notify.wait_for("STATUS=3 connection IPs")
        remove_tree(runtime)
        ping_until_up(runtime / "trackerd.sock", 30)
        os.kill(trackerd_pid, signal.SIGTERM)
        assert process.wait(30) == 0  # strace exits with its child's status
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        notify.sock.close()
    lines = trace.read_text().splitlines()
    used = {m[1] for line in lines if (m := re.match(r"\d+\s+([a-z0-9_]+)\(", line))}
    assert {"socket", "bind", "mkdir", "rename", "sendmsg", "accept4"} & used  # a real trace
    refused = {m[1] for line in lines if (m := re.match(r"\d+\s+([a-z0-9_]+)\(.*INJECTED", line))}
    assert refused == used - allowed  # strace refused exactly what the filter would
    assert refused <= set(REFUSED_AND_HARMLESS), refused
    families = {m[1] for line in lines if (m := re.search(r" socket\((AF_[A-Z0-9]+)", line))}
    assert families == {"AF_UNIX"}
    write_and_execute = [line for line in lines if re.search(r"PROT_WRITE\|PROT_EXEC", line)]
    assert write_and_execute == []
