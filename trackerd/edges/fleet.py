"""Fleet mode's edges: reading the fleet key file once at start, and the epoch clock.

trackerd reads ``--fleet-key-file`` before it is ready, steps the key forward to
the epoch of now, and keeps only that key (inside FleetSketch). The file is not
read again: later epochs are derived in memory, at each boundary, by
``epoch_clock``. trackerd itself has no network access: ``trackerctl fleet
push`` asks it for the registers over its socket and stores them in Redis.
"""

from __future__ import annotations

import argparse
import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import anyio

from servertracker.fleet_key import MAX_KEY_FILE_SIZE, FleetKey, FleetKeyError, epoch_at
from trackerd.core.fleet_sketch import FleetSketch
from trackerd.core.tracker import Tracker
from trackerd.errors import StartupError
from trackerd.option_types import Arguments

log = logging.getLogger(__name__)

#: The epoch clock looks at the time at least this often, so that a changed
#: system clock or a suspended machine delays a boundary by this much at most.
EPOCH_CHECK_INTERVAL = 30.0


@dataclass(frozen=True)
class FleetSettings:
    """Fleet mode is on when a key file is given."""

    key_file: Path | None = None

    @classmethod
    def add_arguments(cls, arguments: Arguments) -> None:
        arguments.add_argument(
            "--fleet-key-file",
            metavar="PATH",
            type=Path,
            help=(
                "fleet mode: keep a Redis HyperLogLog of each category under this fleet "
                "key, for `trackerctl fleet push` (docs/fleet.md). Off by default"
            ),
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> FleetSettings:
        return cls(args.fleet_key_file)


def load_fleet_sketch(path: Path, now: float) -> FleetSketch:
    """The fleet sketch of the epoch of ``now``, from the key file; StartupError if
    the file cannot be used (the text never contains the key)."""
    try:
        with open(path, "rb") as file:
            info = os.fstat(file.fileno())
            data = file.read(MAX_KEY_FILE_SIZE + 1)
    except OSError as exc:
        raise StartupError(f"cannot read the fleet key file {path}: {exc.strerror}") from None
    if info.st_mode & stat.S_IROTH:
        log.warning("the fleet key file %s is readable by everyone; chmod o-r it", path)
    try:
        key = FleetKey.from_text(data.decode("ascii"))
    except UnicodeDecodeError:
        raise StartupError(f"{path} is not a fleet key file") from None
    except FleetKeyError as exc:
        raise StartupError(f"fleet key file {path}: {exc}") from None
    del data
    current = epoch_at(now, key.epoch_seconds)
    if key.epoch > current:
        raise StartupError(
            f"fleet key file {path} is for epoch {key.epoch}, later than the current one "
            f"({current}): is this host's clock behind?"
        )
    try:
        sketch = FleetSketch(key.advanced(current))
    except FleetKeyError as exc:
        raise StartupError(f"fleet key file {path}: {exc}") from None
    log.info(
        "fleet mode: epoch %d (%d s each; key file for epoch %d)",
        current,
        key.epoch_seconds,
        key.epoch,
    )
    return sketch


async def epoch_clock(tracker: Tracker, sketch: FleetSketch) -> None:
    """Move the tracker's fleet sketch to the next epoch at each boundary."""
    while True:
        now = time.time()
        boundary = (sketch.epoch_at(now) + 1) * sketch.epoch_seconds
        await anyio.sleep(min(max(boundary - now, 0.001), EPOCH_CHECK_INTERVAL))
        before = sketch.epoch
        tracker.roll_fleet_epoch()
        if sketch.epoch != before:
            log.info("fleet: epoch %d began; the key of epoch %d is gone", sketch.epoch, before)
