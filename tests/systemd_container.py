"""A real systemd (PID 1) for the tests: a debootstrap root booted by systemd-nspawn.

The root is made once per machine (about 90 s) under /var/tmp and reused: a stamp
file names the packages it was made with, and a lock keeps two test runs from
making it at once. Every boot is volatile (`--volatile=overlay`): what the checks
install lives in memory and is gone at power-off, so the cached root stays clean.

The project goes in as a wheelhouse (the project's wheel and its dependencies,
built from the test run's own environment), installed inside with pip's
`--no-index`, since the container has no network.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SUITE = "bookworm"
#: What the container needs beyond minbase: an init, a bus for systemctl, a Python
#: with venv for the documented install, and the tools the checks call.
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "procps", "util-linux")
CACHE_DIR = Path("/var/tmp/servertracker-nspawn")
REPO = Path(__file__).resolve().parent.parent
CHECKS_SCRIPT = REPO / "tests" / "container_checks.py"

#: The oneshot unit that runs the checks inside and powers the container off,
#: whatever they found.
CHECK_UNIT = """\
[Unit]
Description=servertracker checks under a real systemd
After=multi-user.target
# Boot is finished only once this unit is: it must not wait for the system to be "running".
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=oneshot
ExecStart=/usr/bin/python3 /src/tests/container_checks.py
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=600
"""


class ContainerUnavailable(Exception):
    """This machine cannot boot the container; the text says why."""


def missing_prerequisite() -> str | None:
    """Why the container cannot be used here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root to run systemd-nspawn"
    for tool in ("systemd-nspawn", "debootstrap"):
        if shutil.which(tool) is None:
            return f"needs {tool} (Debian's systemd-container and debootstrap packages)"
    if debian_mirror() is None:
        return "found no Debian mirror in the host's apt sources"
    return None


def debian_mirror() -> str | None:
    """The URI the host's apt uses for Debian's main archive (debootstrap needs one)."""
    candidates: list[str] = []
    sources = Path("/etc/apt/sources.list.d")
    for path in sorted(sources.glob("*.sources")) if sources.is_dir() else []:
        for stanza in path.read_text(errors="replace").split("\n\n"):
            fields = dict(
                (key.strip().lower(), value.strip())
                for key, _, value in (line.partition(":") for line in stanza.splitlines())
                if not key.startswith("#")
            )
            if (
                SUITE in fields.get("suites", "").split()
                and "main" in fields.get("components", "").split()
            ):
                candidates += fields.get("uris", "").split()
    list_file = Path("/etc/apt/sources.list")
    if list_file.is_file():
        for line in list_file.read_text(errors="replace").splitlines():
            match = re.match(rf"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+{SUITE}\s+.*\bmain\b", line)
            if match:
                candidates.append(match.group(1))
    return next((uri for uri in candidates if "security" not in uri), None)


def root_filesystem() -> Path:
    """The cached container root, made by debootstrap on first use."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    stamp_text = f"{SUITE} minbase {' '.join(PACKAGES)}\n"
    root = CACHE_DIR / "root"
    stamp = CACHE_DIR / "root.stamp"
    with open(CACHE_DIR / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.is_file() and stamp.read_text() == stamp_text and root.is_dir():
            return root
        mirror = debian_mirror()
        if mirror is None:
            raise ContainerUnavailable("no Debian mirror in the host's apt sources")
        building = CACHE_DIR / "root.new"
        log = CACHE_DIR / "debootstrap.log"
        last_error = ""
        # One retry: a mirror hiccup should not fail a test run.
        for _attempt in range(2):
            shutil.rmtree(building, ignore_errors=True)
            result = subprocess.run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(PACKAGES)}",
                    SUITE,
                    str(building),
                    mirror,
                ],
                stdout=log.open("w"),
                stderr=subprocess.STDOUT,
                timeout=900,
            )
            if result.returncode == 0:
                break
            last_error = log.read_text(errors="replace")[-2000:]
        else:
            raise ContainerUnavailable(f"debootstrap failed:\n{last_error}")
        # The container's own machine id is made at each boot (volatile root).
        (building / "etc" / "machine-id").write_text("")
        shutil.rmtree(root, ignore_errors=True)
        stamp.unlink(missing_ok=True)
        building.rename(root)
        stamp.write_text(stamp_text)
        return root


def build_wheelhouse(destination: Path) -> Path:
    """The project's wheel and its dependencies' wheels, from this environment's pip."""
    destination.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "-w", str(destination), str(REPO)],
        check=True,
        timeout=600,
        capture_output=True,
    )
    return destination


@dataclass(frozen=True)
class BootResult:
    """What one boot of the container left behind."""

    returncode: int
    console: str
    results_dir: Path


def boot_and_check(root: Path, wheelhouse: Path, results_dir: Path, timeout: float) -> BootResult:
    """Boot the container, run the checks unit inside, and wait for it to power off."""
    results_dir.mkdir(parents=True, exist_ok=True)
    unit = results_dir / "st-check.service"
    unit.write_text(CHECK_UNIT)
    command = [
        "systemd-nspawn",
        "--quiet",
        "--boot",
        # No host bus to register with, and no scope of our own to move into.
        "--register=no",
        "--keep-unit",
        "--private-network",
        "--volatile=overlay",
        f"--directory={root}",
        f"--bind-ro={wheelhouse}:/wheelhouse",
        f"--bind-ro={REPO}:/src",
        f"--bind={results_dir}:/results",
        f"--bind-ro={unit}:/etc/systemd/system/st-check.service",
        # Arguments for the container's systemd: start the checks after boot.
        "systemd.wants=st-check.service",
    ]
    try:
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout if isinstance(exc.stdout, str) else ""
        raise ContainerUnavailable(
            f"the container did not power off within {timeout:.0f}s:\n{output[-4000:]}"
        ) from None
    return BootResult(result.returncode, result.stdout + result.stderr, results_dir)
