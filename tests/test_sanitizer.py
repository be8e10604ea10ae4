"""tests/sanitizer.py tells a process under AddressSanitizer from one without."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sanitizer import sanitized


def test_a_process_with_asan_preloaded_is_told_from_one_without() -> None:
    gcc = shutil.which("gcc")
    runtime = gcc and subprocess.run([gcc, "-print-file-name=libasan.so"], capture_output=True,
                                     text=True, check=False).stdout.strip()  # fmt: skip
    if not runtime or not Path(runtime).is_absolute() or not Path(runtime).exists():
        pytest.skip("no libasan here")
    env = {**os.environ, "LD_PRELOAD": runtime, "ASAN_OPTIONS": "detect_leaks=0"}
    script = "import sys; print('up', flush=True); sys.stdin.read()"  # up until stdin closes
    pipe = subprocess.PIPE
    plain = subprocess.Popen([sys.executable, "-c", script], stdin=pipe, stdout=pipe)
    asan = subprocess.Popen([sys.executable, "-c", script], stdin=pipe, stdout=pipe, env=env)
    try:
        for child in (plain, asan):  # past exec: its own maps, not the forked test's
            assert child.stdout is not None and child.stdout.readline() == b"up\n"
        assert sanitized(asan.pid)
        assert not sanitized(plain.pid)
    finally:
        for child in (plain, asan):
            child.communicate(timeout=30)
