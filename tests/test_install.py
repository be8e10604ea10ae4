"""The install story: what docs/install.md and the units promise, checked where it can fail."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import wait_for

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
