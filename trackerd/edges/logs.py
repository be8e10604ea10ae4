"""trackerd's log output: where it goes, its format, its level, and its options.

Logs go to stderr. Under systemd (JOURNAL_STREAM names stderr) the journal
stamps each line with time and pid itself, so the line carries only the level
and the message. The level can change at run time (SIGHUP, see reload.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass

from trackerd.option_types import Arguments

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_LEVEL_ENV = "TRACKERD_LOG_LEVEL"


def log_level(text: str) -> str:
    level = text.strip().lower()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a log level (choose from {', '.join(LOG_LEVELS)})"
        )
    return level


@dataclass(frozen=True)
class LogSettings:
    level: str = "info"

    @classmethod
    def add_arguments(cls, arguments: Arguments) -> None:
        arguments.add_argument(
            "--log-level",
            # argparse runs a string default through type= too: a bad
            # $TRACKERD_LOG_LEVEL is reported as a usage error, not a traceback.
            default=os.environ.get(LOG_LEVEL_ENV) or cls.level,
            type=log_level,
            metavar="{" + ",".join(LOG_LEVELS) + "}",
            help=f"default: info, or ${LOG_LEVEL_ENV}",
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LogSettings:
        return cls(args.log_level)


def setup_logging(settings: LogSettings) -> None:
    # Under systemd the journal stamps each line itself.
    fmt = (
        "%(levelname)s %(message)s"
        if os.environ.get("JOURNAL_STREAM")
        else ("%(asctime)s trackerd[%(process)d] %(levelname)s %(message)s")
    )
    logging.basicConfig(level=settings.level.upper(), format=fmt, stream=sys.stderr)


def apply_level(settings: LogSettings) -> None:
    """Change the level of every trackerd logger at once (SIGHUP)."""
    logging.getLogger().setLevel(settings.level.upper())
