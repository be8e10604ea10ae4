"""What every process of a process group is doing: for a test's message on a hang.

A test that waits for a group of processes (a pre-fork server and its workers)
to exit calls describe_group() on timeout, before killing them, so that a
failure in CI says where each process and thread was stuck, not only that it
was.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

#: The fields of /proc/PID/task/TID/status that say what a thread waits for:
#: its state, and the signals pending for it (SigPnd) or for the process
#: (ShdPnd), blocked, ignored and caught.
STATUS_FIELDS = ("Name", "State", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError as exc:
        return f"({exc.strerror})"


def group_pids(pgid: int) -> list[int]:
    """Every process of a process group, zombies included."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _read(f"/proc/{entry}/stat")
            fields = stat.rsplit(")", 1)[-1].split()
            if len(fields) > 2 and int(fields[2]) == pgid:
                pids.append(int(entry))
    return sorted(pids)


def _py_spy() -> str | None:
    """py-spy beside this interpreter (the venv's), else on PATH."""
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def describe_process(pid: int) -> str:
    """One process: each thread's state, wchan and signal masks, and py-spy's stacks."""
    lines = [f"=== pid {pid}: {_read(f'/proc/{pid}/cmdline').replace(chr(0), ' ')[:200]}"]
    try:
        tids = sorted(os.listdir(f"/proc/{pid}/task"), key=int)
    except OSError as exc:
        return f"=== pid {pid}: gone ({exc.strerror})"
    for tid in tids:
        status = _read(f"/proc/{pid}/task/{tid}/status").splitlines()
        wanted = [line for line in status if line.split(":")[0] in STATUS_FIELDS]
        wchan = _read(f"/proc/{pid}/task/{tid}/wchan")
        lines.append(
            f"  thread {tid}: wchan={wchan} " + " | ".join(" ".join(w.split()) for w in wanted)
        )
    py_spy = _py_spy()
    if py_spy is None:
        lines.append("  (py-spy not found: no Python stacks)")
    else:
        try:
            dump = subprocess.run(
                [py_spy, "dump", "--native", "--pid", str(pid)],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            lines.append((dump.stdout + dump.stderr).rstrip())
        except (OSError, subprocess.TimeoutExpired) as exc:
            lines.append(f"  py-spy failed: {exc}")
    return "\n".join(lines)


def describe_group(pgid: int) -> str:
    """Every process of a process group, described (describe_process)."""
    pids = group_pids(pgid)
    if not pids:
        return f"process group {pgid}: no process left"
    return "\n".join(describe_process(pid) for pid in pids)
