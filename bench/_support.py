"""Shared bench helpers: a trackerd process, percentiles, tables, --help."""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from servertracker.connection import DaemonConnection
from servertracker.errors import DaemonUnavailable
from servertracker.status import Status


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and each option's default (when it has one)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False):  # "(default: None)" says nothing
            return action.help
        return super()._get_help_string(action)


def whole_number(minimum: int = 1) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum`` (a count of rounds,
    calls, records: 0 or less would crash later or measure nothing)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value

    return parse


def real_number(minimum: float = 0.0) -> Callable[[str], float]:
    """An argparse type: a finite number of at least ``minimum`` (a duration, a threshold)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value) or value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g}, not {text}")
        return value

    return parse


class _BenchParser(argparse.ArgumentParser):
    """Once the command line is parsed (--help needs no build), refuses to run this
    checkout's benchmark on a stale C extension (bench.trees.refuse_stale)."""

    def parse_known_args(self, *args: Any, **kwargs: Any) -> Any:
        from bench.trees import THIS_ROOT, refuse_stale

        parsed = super().parse_known_args(*args, **kwargs)
        refuse_stale(THIS_ROOT)
        return parsed


def arguments(module: str, doc: str | None) -> argparse.ArgumentParser:
    """A bench module's parser: ``python -m bench.X --help`` shows its docstring; a
    stale C extension in this checkout makes it refuse (_BenchParser)."""
    return _BenchParser(
        prog=f"python -m {module}", description=doc, formatter_class=_HelpFormatter
    )


class BenchDaemon:
    """trackerd in a short temp dir, logging warnings only."""

    def __init__(
        self, extra_args: Sequence[str] = (), command: Sequence[str] | None = None
    ) -> None:
        """``command`` runs another daemon speaking the protocol (bench.naive_daemon).
        The default runs the trackerd of PYTHONPATH or the install, with -P: without
        it the current directory comes first on sys.path, and a checkout there would
        be run instead (bench.trees)."""
        self.extra_args = list(extra_args)
        self.command = list(command or [sys.executable, "-P", "-m", "trackerd"])
        self.dir = Path(tempfile.mkdtemp(prefix="stb-", dir="/tmp"))
        self.socket_path = self.dir / "trackerd.sock"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> BenchDaemon:
        self.process = subprocess.Popen(
            [
                *self.command,
                "--runtime-dir",
                str(self.dir),
                "--log-level",
                "warning",
                *self.extra_args,
            ]
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                with DaemonConnection(self.socket_path, timeout=1) as conn:
                    conn.ping()
                return self
            except DaemonUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def status(self) -> Status:
        with DaemonConnection(self.socket_path, timeout=10) as conn:
            return conn.status()

    def signal(self, signum: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signum)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            self.process.wait(30)
        shutil.rmtree(self.dir, ignore_errors=True)


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, int(fraction * len(sorted_values)))
    return sorted_values[index]


def summary(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": statistics.median(ordered),
        "p99": percentile(ordered, 0.99),
        "p99.9": percentile(ordered, 0.999),
        "max": ordered[-1],
    }


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
