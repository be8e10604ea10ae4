"""``trackerctl fleet``: the fleet key file, and fleet counts in Redis (docs/fleet.md).

keygen and advance write the key file; push asks trackerd for its registers and
merges them into Redis; status reads the fleet's counts back. redis-py (the
``servertracker[fleet]`` extra) is imported only inside push and status.
Registered by cli.py with one line; the shared options and exit codes come from
cli_common.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from types import ModuleType
from typing import Annotated, NoReturn

import typer

from servertracker import protocol
from servertracker.cli_common import (
    EXIT_FLEET_KEY,
    EXIT_NO_FLEET,
    EXIT_REDIS,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    JsonOption,
    RuntimeDirOption,
    SocketOption,
    Target,
    TimeoutOption,
    echo,
    target,
    wants_json,
)
from servertracker.connection import DaemonConnection
from servertracker.errors import DaemonUnavailable, ProtocolError
from servertracker.fleet_key import (
    DEFAULT_EPOCH_SECONDS,
    MAX_EPOCH_SECONDS,
    MAX_KEY_FILE_SIZE,
    FleetKey,
    FleetKeyError,
    epoch_at,
)

REDIS_URL_ENV = "TRACKERCTL_FLEET_REDIS"

app = typer.Typer(
    help="Fleet-wide distinct counts, merged in Redis without cleartext or digests "
    "(docs/fleet.md).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

KeyFileArgument = Annotated[
    Path,
    # readable=False: a key file trackerctl cannot read is exit 5 (cli_common), not a usage error.
    typer.Argument(help="The fleet key file.", show_default=False, readable=False),
]
RedisOption = Annotated[
    str,
    typer.Option(
        "--redis",
        metavar="URL",
        envvar=REDIS_URL_ENV,
        help="Redis URL: redis://[user:password@]host:6379/0, rediss://... or "
        f"unix:///path/redis.sock (or ${REDIS_URL_ENV}, which keeps a password out of ps).",
        show_default=False,
    ),
]
ClusterOption = Annotated[
    bool,
    typer.Option(
        "--cluster", help="--redis names a node of a Redis Cluster (one hash slot per epoch)."
    ),
]
RedisTimeoutOption = Annotated[
    float,
    typer.Option(
        "--redis-timeout",
        metavar="SECONDS",
        min=0.01,
        max=300,
        help="Seconds to wait for each Redis command [default: 5].",
        show_default=False,
    ),
]


def _fail(text: str, reason: str, as_json: bool, code: int) -> NoReturn:
    """One line on stderr, then exit."""
    if as_json:
        echo(json.dumps({"error": text, "reason": reason, "message": text}, sort_keys=True), True)
    else:
        echo(f"error: {text}", True)
    raise typer.Exit(code)


def _fleet_store(as_json: bool) -> ModuleType:
    """servertracker.fleet_store, or one line saying how to install redis-py (exit 6)."""
    try:
        from servertracker import fleet_store
    except ModuleNotFoundError as exc:
        if not (exc.name or "").split(".")[0] == "redis":
            raise
        text = "trackerctl fleet push/status need redis-py: pip install 'servertracker[fleet]'"
        _fail(text, "no-redis-py", as_json, EXIT_REDIS)
    return fleet_store


def _read_key(path: Path, as_json: bool) -> FleetKey:
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_KEY_FILE_SIZE + 1)
        return FleetKey.from_text(data.decode("ascii"))
    except OSError as exc:
        _fail(f"cannot read {path}: {exc.strerror}", "key-file", as_json, EXIT_FLEET_KEY)
    except (UnicodeDecodeError, FleetKeyError) as exc:
        problem = exc if isinstance(exc, FleetKeyError) else "not a fleet key file"
        _fail(f"{path}: {problem}", "key-file", as_json, EXIT_FLEET_KEY)


def _write_key(path: Path, key: FleetKey, replace: bool) -> None:
    """Write atomically: a temp file in the same directory, fsync, rename, fsync the
    directory. Replacing keeps the old file's mode and owner."""
    import tempfile  # here, not at the top: trackerctl's start-up stays short

    directory = path.parent
    mode, owner = 0o600, None
    if replace:
        info = os.stat(path)
        mode, owner = info.st_mode & 0o7777, (info.st_uid, info.st_gid)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        os.fchmod(fd, mode)
        if owner is not None and owner != (os.getuid(), os.getgid()):
            os.fchown(fd, *owner)
        os.write(fd, key.to_text().encode("ascii"))
        os.fsync(fd)
        os.close(fd)
        fd = -1
        if replace:
            os.replace(temp, path)
        else:
            os.link(temp, path)  # fails if the file exists meanwhile: never overwrite
            os.unlink(temp)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        if os.path.exists(temp):
            os.unlink(temp)
        raise


@app.command()
def keygen(
    ctx: typer.Context,
    path: KeyFileArgument,
    epoch_seconds: Annotated[
        int,
        typer.Option(
            "--epoch-seconds",
            min=1,
            max=MAX_EPOCH_SECONDS,
            hidden=True,
            help="Epoch length (for tests; every host reads it from the file).",
        ),
    ] = DEFAULT_EPOCH_SECONDS,
    as_json: JsonOption = False,
) -> None:
    """Write a new fleet key file (mode 0600) for the current epoch; never overwrites."""
    as_json = wants_json(ctx, as_json)
    key = FleetKey.generate(time.time(), epoch_seconds)
    try:
        _write_key(path, key, replace=False)
    except FileExistsError:
        text = f"{path} exists; remove it first to make a new key"
        _fail(text, "exists", as_json, EXIT_FLEET_KEY)
    except OSError as exc:
        _fail(f"cannot write {path}: {exc.strerror}", "key-file", as_json, EXIT_FLEET_KEY)
    if as_json:
        echo(json.dumps({"ok": True, "epoch": key.epoch, "path": str(path)}, sort_keys=True))
        return
    echo(
        f"wrote a fleet key for epoch {key.epoch} to {path}; copy it to every host "
        "of the fleet, and to nowhere else (docs/fleet.md)"
    )


@app.command()
def advance(ctx: typer.Context, path: KeyFileArgument, as_json: JsonOption = False) -> None:
    """Move a key file to the current epoch in place, so that no older key stays on disk."""
    as_json = wants_json(ctx, as_json)
    _check_single_name(path, as_json)
    key = _read_key(path, as_json)
    current = epoch_at(time.time(), key.epoch_seconds)
    if key.epoch > current:  # trackerd refuses such a file with the same words
        _fail(
            f"{path} is for epoch {key.epoch}, later than the current one ({current}): "
            "is this host's clock behind?",
            "key-file",
            as_json,
            EXIT_FLEET_KEY,
        )
    if key.epoch < current:
        try:
            newer = key.advanced(current)
            _write_key(path, newer, replace=True)
        except FleetKeyError as exc:
            _fail(f"{path}: {exc}", "key-file", as_json, EXIT_FLEET_KEY)
        except OSError as exc:
            _fail(f"cannot write {path}: {exc.strerror}", "key-file", as_json, EXIT_FLEET_KEY)
    if as_json:
        data = {"ok": True, "from_epoch": key.epoch, "epoch": max(key.epoch, current)}
        echo(json.dumps({**data, "path": str(path)}, sort_keys=True))
    elif key.epoch >= current:
        echo(f"{path} is for epoch {key.epoch} already")
    else:
        echo(f"{path}: epoch {key.epoch} -> {current}")


def _redis_exit(reason: str) -> int:
    """A malformed --redis URL is a usage error; anything else Redis did is exit 6."""
    return EXIT_USAGE if reason == "usage" else EXIT_REDIS


def _check_single_name(path: Path, as_json: bool) -> None:
    """Refuse a key file that has another name: replacing it by rename would leave
    the old key under the other name (a symlink's target, a hard link)."""
    try:
        info = os.lstat(path)
    except OSError:
        return  # _read_key says why
    if stat.S_ISLNK(info.st_mode):
        _fail(
            f"{path} is a symbolic link; advance the file it points to, so that no "
            "old key stays behind",
            "key-file",
            as_json,
            EXIT_FLEET_KEY,
        )
    if info.st_nlink > 1:
        _fail(
            f"{path} has {info.st_nlink} hard links; the other names would keep the old "
            "key: remove them first",
            "key-file",
            as_json,
            EXIT_FLEET_KEY,
        )


def _default_host() -> str:
    return os.uname().nodename.split(".")[0]


def _registers(where: Target) -> protocol.FleetReply:
    """trackerd's fleet registers, asked for only once its features list "fleet":
    a daemon without fleet mode, or older than the features request, is told apart
    from one that is down (exit 7, not 4), and is never sent a request it refuses."""
    try:
        with DaemonConnection(where.socket_path, timeout=where.timeout) as conn:
            try:
                features = conn.features()
            except ProtocolError as exc:
                if exc.code != protocol.ERR_UNKNOWN_TYPE:
                    raise
                _no_fleet(
                    where, "too-old", "is too old for fleet counts (it has no features request)"
                )
            if protocol.FEATURE_FLEET not in features:
                _no_fleet(
                    where, "fleet-off", "is not in fleet mode (started without --fleet-key-file)"
                )
            return conn.fleet()
    except ProtocolError as exc:
        if exc.code == protocol.ERR_FLEET_OFF:  # fleet mode ended since the features reply
            _no_fleet(where, "fleet-off", "is not in fleet mode (started without --fleet-key-file)")
        _fail(str(where.explain(exc)), exc.code, where.as_json, EXIT_UNAVAILABLE)
    except DaemonUnavailable as exc:
        _fail(str(where.explain(exc)), exc.reason, where.as_json, EXIT_UNAVAILABLE)


def _no_fleet(where: Target, reason: str, why: str) -> NoReturn:
    text = f"trackerd at {where.socket_path} {why}; nothing pushed (docs/fleet.md)"
    _fail(text, reason, where.as_json, EXIT_NO_FLEET)


@app.command()
def push(
    ctx: typer.Context,
    redis_url: RedisOption,
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            metavar="NAME",
            help="This host's name in Redis (default: the short hostname).",
            show_default=False,
        ),
    ] = None,
    socket: SocketOption = None,
    runtime_dir: RuntimeDirOption = None,
    as_json: JsonOption = False,
    timeout: TimeoutOption = None,
    redis_timeout: RedisTimeoutOption = 5.0,
    cluster: ClusterOption = False,
) -> None:
    """Fetch trackerd's fleet registers and merge them into Redis (run by a timer).
    Exit 7 if trackerd answers but its features do not list "fleet"."""
    where = target(ctx, socket, runtime_dir, as_json, timeout)
    as_json = where.as_json
    fleet_store = _fleet_store(as_json)
    name = host or _default_host()
    try:
        fleet_store.check_host_name(name)
    except ValueError as exc:
        _fail(f"--host: {exc}", "usage", as_json, EXIT_USAGE)
    try:
        fleet_store.check_url(redis_url)
    except fleet_store.FleetStoreError as exc:
        _fail(str(exc), exc.reason, as_json, EXIT_USAGE)  # as status says it
    reply = _registers(where)
    try:
        with fleet_store.connect(redis_url, redis_timeout, cluster) as client:
            epochs = fleet_store.push(client, name, reply, time.time())
    except fleet_store.FleetStoreError as exc:
        _fail(f"push failed: {exc}", exc.reason, as_json, _redis_exit(exc.reason))
    if as_json:
        echo(json.dumps({"ok": True, "host": name, "epochs": epochs}, sort_keys=True))
    else:
        echo(f"pushed {name}'s registers for epoch {', '.join(map(str, epochs))}")


@app.command()
def status(
    ctx: typer.Context,
    redis_url: RedisOption,
    as_json: JsonOption = False,
    redis_timeout: RedisTimeoutOption = 5.0,
    cluster: ClusterOption = False,
) -> None:
    """Per category, the fleet's distinct count for this epoch and the one before,
    and each host's own count and last push."""
    as_json = wants_json(ctx, as_json)
    fleet_store = _fleet_store(as_json)
    try:
        with fleet_store.connect(redis_url, redis_timeout, cluster) as client:
            length, epochs = fleet_store.status(client, time.time())
    except fleet_store.FleetStoreError as exc:
        _fail(str(exc), exc.reason, as_json, _redis_exit(exc.reason))
    if as_json:
        data = {"epoch_seconds": length, "current": epochs[0].to_json()}
        data["previous"] = epochs[1].to_json()
        echo(json.dumps(data, sort_keys=True))
        return
    from servertracker._format import COUNTS

    names = {field: label for label, field in COUNTS}  # status's labels; JSON keeps fields
    for label, counts in zip(("current", "previous"), epochs, strict=True):
        echo(f"{label} epoch {counts.epoch} (from {_utc(counts.start)}, {length} s):")
        for category, value in counts.fleet.items():
            echo(f"  fleet {names.get(category, category) + ':':<18} {value:>12,}  (estimate)")
        for host, info in counts.hosts.items():
            if info.get("invalid"):
                echo(f"  {host}: its registers in Redis are not a HyperLogLog; left out")
                continue
            pushed = info.get("pushed")
            when = _utc(pushed) if pushed is not None else "never"
            values = ", ".join(f"{names.get(c, c)} {n:,}" for c, n in info["counts"].items())
            echo(f"  {host}: {values}; last push {when}")
        if not counts.hosts:
            echo("  no host has pushed")


def _utc(when: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
