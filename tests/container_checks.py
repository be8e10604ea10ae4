"""Runs inside a booted systemd container (tests/systemd_container.py), as root.

It installs servertracker exactly as docs/install.md says, with the commands taken
from that file, then checks what only a real systemd (PID 1) shows: socket
activation, RuntimeDirectory= and file owners, the allow-lists under the unit's
user-namespace settings, ExecReload=, the watchdog, journald priorities, stopping
under socket activation, and no failed units. Each check's outcome goes to
/results/results.json; the host's tests/test_real_systemd.py asserts on them.

Standard library only: it runs on the container's /usr/bin/python3.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shlex
import stat
import subprocess
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path

SRC = Path("/src")
RESULTS = Path("/results")
RUNTIME_DIR = Path("/run/trackerd")
SOCKET = RUNTIME_DIR / "trackerd.sock"
STATUS_FILE = RUNTIME_DIR / "server_tracker.json"
# The first connection starts trackerd: on a busy machine that takes seconds.
TRACKERCTL = "/usr/local/bin/trackerctl --timeout 30"
DROPIN_DIR = Path("/etc/systemd/system/trackerd.service.d")
CONFIG_FILE = Path("/etc/trackerd/trackerd.conf")

results: dict[str, dict[str, object]] = {}
log_lines: list[str] = []


def say(text: str) -> None:
    log_lines.append(text)
    print(text, flush=True)


def run(
    command: str, *, check: bool = True, user: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a shell command (as `user` if given) in /src and log it."""
    argv = ["bash", "-c", command]
    if user is not None:
        argv = ["runuser", "-u", user, "--", *argv]
    result = subprocess.run(argv, cwd=SRC, capture_output=True, text=True, timeout=300)
    say(f"$ {command}{f'  (as {user})' if user else ''}  -> {result.returncode}")
    for line in (result.stdout + result.stderr).strip().splitlines()[-15:]:
        say(f"    {line}")
    if check and result.returncode != 0:
        raise AssertionError(f"{command!r} exited {result.returncode}")
    return result


def wait_for(condition: Callable[[], object], what: str, timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def show(unit: str, prop: str) -> str:
    return run(f"systemctl show -P {prop} {unit}", check=False).stdout.strip()


def status_json(user: str | None = None) -> tuple[int, dict[str, object]]:
    result = run(f"{TRACKERCTL} status --json", check=False, user=user)
    try:
        return result.returncode, json.loads(result.stdout)
    except ValueError:
        return result.returncode, {}


def shell_commands(lines: Iterable[str]) -> list[str]:
    """The shell commands among a doc's lines, as the docs write them (this function
    says so for every test that runs or reads them, tests/test_install.py too).

    Commands are the lines indented by four spaces; deeper lines are file contents
    shown in the text (for `systemctl edit`), and a trailing backslash continues.
    """
    commands: list[str] = []
    pending = ""
    for line in lines:
        if not line.startswith("    ") or line.startswith("     "):
            pending = ""
            continue
        text = pending + line.strip()
        if text.endswith("\\"):
            pending = text[:-1] + " "
            continue
        pending = ""
        commands.append(text)
    return commands


def documented_commands(section: str) -> list[str]:
    """The shell commands of one numbered section of docs/install.md ("1", "2", ...).

    The placeholder for where the software comes from becomes the wheelhouse.
    """
    lines: list[str] = []
    inside = False
    for line in (SRC / "docs" / "install.md").read_text().splitlines():
        if line.startswith("## "):
            inside = re.match(rf"## {re.escape(section)}\.", line) is not None
        elif inside:
            lines.append(line)
    return [
        re.sub(
            r"/path/to/servertracker\S*", "--no-index --find-links /wheelhouse servertracker", text
        )
        for text in shell_commands(lines)
    ]


def check(name: str, needs: tuple[str, ...] = ()) -> Callable[[Callable[[], str]], None]:
    """Run the decorated function now and record its outcome under `name`."""

    def decorate(function: Callable[[], str]) -> None:
        failed = [need for need in needs if not results.get(need, {}).get("ok")]
        if failed:
            results[name] = {"ok": False, "detail": f"not run: {', '.join(failed)} failed"}
            return
        say(f"=== {name}")
        try:
            detail = function()
            results[name] = {"ok": True, "detail": detail}
        except Exception as exc:  # every failure becomes a result, the rest still run
            say(traceback.format_exc())
            results[name] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}
        say(f"=== {name}: {'ok' if results[name]['ok'] else 'FAILED'}")

    return decorate


def restart_with_dropin(name: str, text: str | None) -> None:
    """Put (or remove) a drop-in for trackerd.service and restart it."""
    path = DROPIN_DIR / f"{name}.conf"
    if text is None:
        path.unlink(missing_ok=True)
    else:
        DROPIN_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    run("systemctl daemon-reload")
    run("systemctl restart trackerd.service")
    wait_for(lambda: show("trackerd.service", "ActiveState") == "active", "trackerd active")


def main() -> None:
    # Not `is-system-running --wait`: start-up is finished only when this unit is.

    @check("install_as_documented")
    def _() -> str:
        done: list[str] = []
        for section in ("1", "2", "4"):
            commands = documented_commands(section)
            assert commands, f"docs/install.md section {section} shows no command"
            for command in commands:
                run(command)
                done.append(command)
        return f"{len(done)} commands"

    @check("socket_listening_before_first_use", needs=("install_as_documented",))
    def _() -> str:
        assert show("trackerd.socket", "ActiveState") == "active"
        assert show("trackerd.service", "ActiveState") == "inactive", "started too early"
        info = SOCKET.stat()
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o660, oct(info.st_mode)
        assert grp.getgrgid(info.st_gid).gr_name == "trackerd"
        return "socket 0660 group trackerd, service inactive"

    @check("socket_activation", needs=("socket_listening_before_first_use",))
    def _() -> str:
        run(f"{TRACKERCTL} ping")
        wait_for(lambda: show("trackerd.service", "ActiveState") == "active", "service active")
        assert show("trackerd.service", "MainPID") not in ("", "0")
        return "first connection started trackerd"

    @check("runtime_directory_owners", needs=("socket_activation",))
    def _() -> str:
        info = RUNTIME_DIR.stat()
        assert pwd.getpwuid(info.st_uid).pw_name == "trackerd", info.st_uid
        assert grp.getgrgid(info.st_gid).gr_name == "trackerd", info.st_gid
        assert stat.S_IMODE(info.st_mode) == 0o750, oct(info.st_mode)
        wait_for(STATUS_FILE.exists, "status file")
        info = STATUS_FILE.stat()
        assert pwd.getpwuid(info.st_uid).pw_name == "trackerd"
        assert grp.getgrgid(info.st_gid).gr_name == "trackerd"
        assert stat.S_IMODE(info.st_mode) == 0o640, oct(info.st_mode)
        return "/run/trackerd 0750 and the status file 0640, both trackerd:trackerd"

    @check("group_members_record_others_cannot", needs=("socket_activation",))
    def _() -> str:
        run("useradd --system --no-create-home --shell /usr/sbin/nologin -G trackerd smtpd")
        run("useradd --system --no-create-home --shell /usr/sbin/nologin outsider")
        run(f"{TRACKERCTL} record 192.0.2.1 user@example.com", user="smtpd")
        outsider = run(
            f"{TRACKERCTL} record 192.0.2.2 user@example.org", check=False, user="outsider"
        )
        assert outsider.returncode == 4, f"outsider's record exited {outsider.returncode}"
        code, status = status_json(user="smtpd")
        assert code == 0, code
        assert status.get("unique_conn_ips") == 1 and status.get("unique_domains") == 1, status
        return "member recorded, outsider refused"

    @check("allow_list_under_unit_user_namespace", needs=("group_members_record_others_cannot",))
    def _() -> str:
        # Both users may reach the socket (group trackerd); the daemon's own
        # allow-list, set in the config file and applied by a reload as
        # docs/install.md says, admits only members of "mail". Under a user
        # namespace that hides other ids the member would be refused too.
        run("useradd --system --no-create-home --shell /usr/sbin/nologin -G trackerd,mail mta")
        shipped = CONFIG_FILE.read_text()
        CONFIG_FILE.write_text(shipped + "\nallow-gid = mail\n")
        try:
            run("systemctl reload trackerd.service")
            admitted = run(f"{TRACKERCTL} record 192.0.2.3 a@example.net", check=False, user="mta")
            refused = run(f"{TRACKERCTL} record 192.0.2.4 a@example.edu", check=False, user="smtpd")
        finally:
            # The later checks query as root, whom "mail" alone would refuse.
            CONFIG_FILE.write_text(shipped)
            run("systemctl reload trackerd.service")
        assert admitted.returncode == 0, f"a member of mail was refused ({admitted.returncode})"
        assert refused.returncode != 0, "a non-member of mail was admitted"
        run(f"{TRACKERCTL} ping")
        return "allow-gid = mail, applied by reload, admits its member and refuses others"

    @check("reload_keeps_daemon_and_counts", needs=("socket_activation",))
    def _() -> str:
        run(f"{TRACKERCTL} record 198.51.100.7 someone@example.com")
        code, before = status_json()
        assert code == 0, f"status exited {code}"
        pid = show("trackerd.service", "MainPID")
        # Synchronous: systemctl waits for ExecReload= to finish.
        run("systemctl reload trackerd.service")
        assert show("trackerd.service", "ActiveState") == "active"
        assert show("trackerd.service", "MainPID") == pid, "reload replaced the daemon"
        code, after = status_json()
        assert code == 0, code
        assert after.get("boot_time") == before.get("boot_time"), "counts were reset"
        assert after.get("unique_conn_ips") == before.get("unique_conn_ips")
        return f"same pid {pid}, same counts"

    @check("watchdog_is_fed", needs=("socket_activation",))
    def _() -> str:
        restart_with_dropin("50-watchdog", "[Service]\nWatchdogSec=2s\n")
        pid = show("trackerd.service", "MainPID")
        restarts = show("trackerd.service", "NRestarts")
        first = show("trackerd.service", "WatchdogTimestampMonotonic")
        wait_for(
            lambda: show("trackerd.service", "WatchdogTimestampMonotonic") != first,
            "a watchdog ping",
            timeout=10,
        )
        # Three watchdog periods: a daemon that stopped pinging would be killed.
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            assert show("trackerd.service", "MainPID") == pid, "trackerd was restarted"
            time.sleep(0.5)
        assert show("trackerd.service", "NRestarts") == restarts
        restart_with_dropin("50-watchdog", None)
        return "pinged, not restarted over 3 x WatchdogSec=2s"

    @check("journald_priorities", needs=("allow_list_under_unit_user_namespace",))
    def _() -> str:
        warnings = run("journalctl -u trackerd.service -p warning -o cat --no-pager").stdout
        everything = run("journalctl -u trackerd.service -o cat --no-pager").stdout
        infos = run("journalctl -u trackerd.service -p info..info -o cat --no-pager").stdout
        assert infos.strip(), "no line stored at priority info"
        assert warnings.strip(), "the refused peer left no line at priority warning or above"
        assert not set(infos.splitlines()) & set(warnings.splitlines())
        assert not re.search(r"^<\d>", everything, re.M), "a <N> prefix was stored verbatim"
        return "info and warning lines stored at their priorities"

    @check("stop_under_socket_activation", needs=("socket_activation",))
    def _() -> str:
        code, live = status_json()
        assert code == 0
        commands = [c for c in documented_stop_commands() if c.startswith("systemctl stop")]
        assert commands, "docs/install.md shows no systemctl command to stop trackerd"
        for command in commands:
            run(command)
        code, last = status_json()
        assert code == 3, f"trackerctl status exited {code}, expected 3 (from the file)"
        assert last.get("boot_time") == live.get("boot_time"), "a new daemon wrote over the file"
        assert last.get("records") == live.get("records"), (last, live)
        assert show("trackerd.service", "ActiveState") == "inactive"
        run("systemctl start trackerd.socket")
        return f"stopped with {commands}; status from the file with the last counts"

    @check("no_failed_units", needs=("install_as_documented",))
    def _() -> str:
        failed = run("systemctl list-units --failed --plain --no-legend").stdout.strip()
        assert not failed, f"failed units: {failed}"
        return "none"


def documented_stop_commands() -> list[str]:
    """The commands of docs/install.md's section whose heading names stopping."""
    text = (SRC / "docs" / "install.md").read_text()
    match = re.search(r"^## [^\n]*\bStop", text, re.M | re.I)
    if not match:
        return []
    section = text[match.end() :].split("\n## ", 1)[0]
    return [
        line.strip()
        for line in section.splitlines()
        if line.startswith("    ") and not line.startswith("     ") and line.strip()
    ]


if __name__ == "__main__":
    try:
        main()
    except Exception:
        say(traceback.format_exc())
        results["checks_script"] = {"ok": False, "detail": traceback.format_exc()}
    finally:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "results.json").write_text(json.dumps(results, indent=1))
        (RESULTS / "checks.log").write_text("\n".join(log_lines) + "\n")
        journal = subprocess.run(
            ["journalctl", "-o", "short-monotonic", "--no-pager"],
            capture_output=True,
            text=True,
        )
        (RESULTS / "journal.txt").write_text(journal.stdout)
    os.sync()
    print(shlex.join(["done", str(len(results))]), flush=True)
