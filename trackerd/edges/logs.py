"""trackerd's log output: where it goes, its format, its level, and its options.

Logs go to stderr. When $JOURNAL_STREAM names stderr's device and inode, stderr
is connected to journald: each line then starts with its sd-daemon(3) priority
(``<3>`` error, ``<4>`` warning, ``<6>`` info, ``<7>`` debug), so that
``journalctl -p warning`` works, and carries no time or pid (the journal adds
them). Anywhere else (a terminal, a file, syslog through a pipe) lines carry a
time and ``trackerd[pid]``. The level and the statistics interval change at
SIGHUP.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from trackerd.option_types import Arguments, seconds_between

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_LEVEL_ENV = "TRACKERD_LOG_LEVEL"


class _FromEnvironment(str):
    """A default read from $TRACKERD_LOG_LEVEL: an error about it names the variable."""

    __slots__ = ()


def log_level(text: str) -> str:
    level = text.strip().lower()
    if level not in LOG_LEVELS:
        where = f"${LOG_LEVEL_ENV}=" if isinstance(text, _FromEnvironment) else ""
        raise argparse.ArgumentTypeError(
            f"{where}{text!r} is not a log level (choose from {', '.join(LOG_LEVELS)})"
        )
    return level


#: Seconds between two statistics lines (--stats-interval): Postfix's anvil logs every 10 min.
STATS_INTERVAL = 600.0


@dataclass(frozen=True)
class LogSettings:
    level: str = "info"
    #: 0 means never (the line still comes at SIGHUP and at exit).
    stats_interval: float = STATS_INTERVAL

    @classmethod
    def add_arguments(cls, arguments: Arguments) -> None:
        arguments.add_argument(
            "--log-level",
            # argparse runs a string default through type= too: a bad
            # $TRACKERD_LOG_LEVEL is reported as a usage error, not a traceback.
            default=_FromEnvironment(os.environ.get(LOG_LEVEL_ENV) or cls.level),
            type=log_level,
            metavar="{" + ",".join(LOG_LEVELS) + "}",
            help=f"default: info, or ${LOG_LEVEL_ENV}",
        )
        arguments.add_argument(
            "--stats-interval",
            type=seconds_between(0, 1e9),
            default=STATS_INTERVAL,
            metavar="SECONDS",
            help=(
                "log a line of statistics (counts only, never a value) this often, and at "
                "SIGHUP and at exit; 0: only then (default: %(default)s, 10 minutes)"
            ),
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LogSettings:
        return cls(args.log_level, args.stats_interval)


#: logging's levels as syslog priorities (sd-daemon(3), syslog(3)).
_PRIORITIES = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class JournalFormatter(logging.Formatter):
    """Every line, continuation lines of a traceback too, gets the record's priority."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prefix = f"<{_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in text.split("\n"))


def _priority(levelno: int) -> int:
    for level in sorted(_PRIORITIES, reverse=True):
        if levelno >= level:
            return _PRIORITIES[level]
    return 7


def stderr_is_journal(environ: Mapping[str, str] | None = None, fd: int = 2) -> bool:
    """True if $JOURNAL_STREAM is "<device>:<inode>" of fd (systemd.exec(5)).

    A child whose stderr was redirected inherits the variable: only the match counts.
    """
    env = os.environ if environ is None else environ
    device, _, inode = env.get("JOURNAL_STREAM", "").partition(":")
    try:
        info = os.fstat(fd)
        return (int(device), int(inode)) == (info.st_dev, info.st_ino)
    except (ValueError, OSError):
        return False


def setup_logging(settings: LogSettings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if stderr_is_journal():
        handler.setFormatter(JournalFormatter("%(levelname)s %(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s trackerd[%(process)d] %(levelname)s %(message)s")
        )
    logging.basicConfig(level=settings.level.upper(), handlers=[handler])


def apply_level(settings: LogSettings) -> None:
    """Change the level of every trackerd logger at once (SIGHUP)."""
    logging.getLogger().setLevel(settings.level.upper())
