"""The install story: what docs/install.md and the units promise, checked where it can fail."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.container_checks import shell_commands

ROOT = Path(__file__).parent.parent
TRACKERCTL = Path(sys.executable).parent / "trackerctl"


def clean_environment() -> dict[str, str]:
    """The environment without anything that would choose the runtime directory."""
    chosen = ("TRACKERD_RUNTIME_DIR", "TRACKERD_SOCKET", "RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR")
    return {k: v for k, v in os.environ.items() if k not in chosen}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")
def test_root_with_no_options_uses_run_trackerd() -> None:
    """In a mount namespace with an empty /run of its own, so the host's is untouched."""
    script = f"mount -t tmpfs tmpfs /run && exec {sys.executable} -m trackerd"
    process = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        stderr=subprocess.PIPE,
        env=clean_environment(),
    )
    lines: list[bytes] = []
    assert process.stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stderr.readline, b"")))
    reader.start()
    try:
        wait_for(lambda: any(b"listening on" in line for line in lines), 30, "trackerd to listen")
        assert any(b"listening on /run/trackerd/trackerd.sock" in line for line in lines), lines
        # trackerctl, as root in the same namespace, finds the same place by itself.
        ping = subprocess.run(
            ["nsenter", "--mount", "--target", str(process.pid), str(TRACKERCTL), "ping"],
            capture_output=True,
            text=True,
            env=clean_environment(),
            timeout=60,
        )
        assert ping.returncode == 0, ping.stderr
        assert "/run/trackerd/trackerd.sock" in ping.stdout
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        reader.join(10)


DOCS = ROOT / "docs"
UNITS = ROOT / "systemd"
HIDDEN_BY_PROTECT_HOME = (Path("/root"), Path("/home"), Path("/run/user"))


def doc_commands(doc: Path) -> list[list[str]]:
    """The shell commands in a doc (as the container test finds them), split into
    words, comments dropped."""
    commands = (
        text.split("#", 1)[0].split() for text in shell_commands(doc.read_text().splitlines())
    )
    return [words for words in commands if words]


def unit_name(word: str) -> str:
    return word if "." in word else f"{word}.service"


def systemctl_units(commands: list[list[str]], verb: str) -> list[set[str]]:
    return [
        {unit_name(w) for w in words[2:] if not w.startswith("-")}
        for words in commands
        if words[:2] == ["systemctl", verb]
    ]


def service_of(socket_unit: Path) -> str:
    for line in socket_unit.read_text().splitlines():
        if line.startswith("Service="):
            return line.removeprefix("Service=")
    return socket_unit.stem + ".service"


@pytest.mark.parametrize("doc", ["install.md", "postfix.md"])
def test_the_docs_systemctl_commands_name_units_that_exist(doc: str) -> None:
    shipped = {path.name for path in UNITS.iterdir() if path.is_file()}
    commands = doc_commands(DOCS / doc)
    verbs = ("enable", "start", "stop", "restart", "reload", "edit", "status")
    named = {unit for verb in verbs for units in systemctl_units(commands, verb) for unit in units}
    assert named, f"no systemctl commands found in {doc}"
    assert named <= shipped, named - shipped
    for words in commands:  # every unit or file the doc installs is in the repository
        if words[0] == "install":
            sources = [w for w in words[1:-1] if not w.startswith("-") and w != "0644"]
            for source in sources:
                assert (ROOT / source).is_file(), source


def test_stopping_under_socket_activation_stops_the_socket_too() -> None:
    """docs/install.md's stop command must stop each socket that would start the
    service again at the next connection (and write zeros over the last counts)."""
    commands = doc_commands(DOCS / "install.md")
    installed_sockets = {
        Path(word).name
        for words in commands
        if words[0] == "install"
        for word in words
        if word.endswith(".socket")
    }
    assert "trackerd.socket" in installed_sockets
    stops = systemctl_units(commands, "stop")
    assert stops, "docs/install.md says nothing about stopping"
    for stopped in stops:
        for socket_name in installed_sockets:
            if service_of(UNITS / socket_name) in stopped:
                assert socket_name in stopped, f"systemctl stop {' '.join(sorted(stopped))}"


def hidden_by_protect_home(path: Path) -> bool:
    return any(path == top or top in path.parents for top in HIDDEN_BY_PROTECT_HOME)


def test_execstart_and_its_interpreter_are_outside_what_protect_home_hides(
    short_tmp: Path,
) -> None:
    unit = (UNITS / "trackerd.service").read_text()
    assert "ProtectHome=yes" in unit.splitlines()
    exec_start = Path(
        next(line for line in unit.splitlines() if line.startswith("ExecStart=")).split()[0][10:]
    )
    assert not hidden_by_protect_home(exec_start)
    commands = doc_commands(DOCS / "install.md")
    venv = next(words for words in commands if words[1:3] == ["-m", "venv"])
    interpreter, target = Path(venv[0]), Path(venv[-1])
    assert interpreter.is_absolute(), "say which interpreter: a bare python3 may be anyone's"
    assert not hidden_by_protect_home(target)
    link = next(words for words in commands if words[:2] == ["ln", "-s"])
    assert str(target / "bin" / exec_start.name) in link  # ExecStart= leads into the venv
    assert link[-1].rstrip("/") == str(exec_start.parent)
    if not interpreter.exists():
        pytest.skip(f"{interpreter} is not installed here")
    # Build the venv exactly so (without pip, to stay fast and offline) and follow its links.
    subprocess.run(
        [str(interpreter), "-m", "venv", "--without-pip", str(short_tmp / "venv")],
        check=True,
        timeout=120,
    )
    python = (short_tmp / "venv" / "bin" / "python3").resolve()
    assert python.is_file()
    assert not hidden_by_protect_home(python), python


def test_the_unit_reloads_with_sighup_and_reads_the_shipped_config() -> None:
    from trackerd.options import parse_config

    lines = (UNITS / "trackerd.service").read_text().splitlines()
    assert "ExecReload=/bin/kill -HUP $MAINPID" in lines
    exec_start = next(line for line in lines if line.startswith("ExecStart=")).split()
    assert exec_start[1:] == ["--config", "/etc/trackerd/trackerd.conf"]
    # The file docs/install.md installs there parses, and sets nothing by default.
    shipped = parse_config(["--runtime-dir", "/x", "--config", str(ROOT / "etc/trackerd.conf")])
    empty = parse_config(["--runtime-dir", "/x", "--config", "/dev/null"])
    assert dataclasses.replace(shipped, config_file=None) == dataclasses.replace(
        empty, config_file=None
    )
    assert not shipped.allow.restricted
