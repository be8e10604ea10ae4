"""The Makefile installs again where the C extension is missing now, not only where it
was missing at the last install (a module's .so removed by hand, a compiler come).

`make -n` against a stand-in venv whose programs say what `--version` would: it
prints the install's commands, or says the stamp is up to date. Nothing is built.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")


def program(path: Path, says: str) -> None:
    path.write_text(f"#!/bin/sh\necho '{says}'\n")
    path.chmod(0o755)


@pytest.mark.parametrize(
    ("trackerd_says", "installs"),
    [
        ("trackerd 1 (hot path: C extension)", False),
        ("trackerd 1 (hot path: partly pure Python: columns scan (not built); to build it)", True),
        (None, True),  # the venv's programs are gone: install again
    ],
)
def test_make_installs_again_where_a_module_is_not_built_now(
    tmp_path: Path, trackerd_says: str | None, installs: bool
) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    if trackerd_says is not None:
        program(venv / "bin" / "trackerd", trackerd_says)
        program(venv / "bin" / "trackerctl", "trackerctl 1 (hot path: C extension)")
    # The last install found everything built (and is newer than every source).
    stamp = venv / ".installed"
    stamp.write_text("trackerd 1 (hot path: C extension)\ntrackerctl 1 (hot path: C extension)\n")
    result = subprocess.run(
        ["make", "-n", "-C", str(ROOT), f"VENV={venv}", str(stamp)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert ("pip install" in result.stdout) is installs, result.stdout
    assert ("is up to date" in result.stdout) is not installs, result.stdout
