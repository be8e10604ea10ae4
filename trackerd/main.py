"""trackerd's entry point: options, logging, start-up, the signal-driven shutdown.

Start-up order: runtime directory, leftover temp files, listening socket, the
first (zero) status file; only then is the daemon ready. SIGTERM or SIGINT
stops accepting, drains what clients already sent, writes the final status and
exits 0.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import resource
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import anyio

from servertracker.paths import (
    RUNTIME_DIR_HELP,
    SOCKET_HELP,
    resolve_runtime_dir,
    resolve_socket_path,
)
from servertracker.status import Status
from trackerd import __version__
from trackerd.core.distinct_counter import DEFAULT_MAX_EXACT
from trackerd.core.tracker import Tracker
from trackerd.core.windows import DEFAULT_WINDOWS, Window, parse_windows
from trackerd.edges.access import AccessPolicy, ConnectionLimits, parse_gid, parse_uid
from trackerd.edges.msgpack_server import TrackerServer
from trackerd.edges.policy_server import PolicyServer
from trackerd.edges.socket_files import (
    OpenSocket,
    StartupError,
    adopt_listening_socket,
    prepare_runtime_dir,
)
from trackerd.edges.status_writer import StatusWriter, remove_leftover_temp_files
from trackerd.edges.stream_server import StreamServer
from trackerd.edges.systemd import Notifier, listen_fds, make_non_dumpable, pick_fd
from trackerd.edges.upkeep import Served, Upkeep

log = logging.getLogger("trackerd")

POSTFIX_POLICY_SOCKET_ENV = "TRACKERD_POSTFIX_POLICY_SOCKET"
#: FileDescriptorName= of the policy socket in systemd/trackerd-postfix.socket.
POSTFIX_POLICY_FD_NAME = "postfix-policy"

#: Least time between two STATUS= notifications to systemd, in seconds.
STATUS_NOTIFY_INTERVAL = 1.0


@dataclass(frozen=True)
class Config:
    runtime_dir: Path
    socket_path: Path
    status_interval: float = 0.25
    max_exact: int = DEFAULT_MAX_EXACT
    policy: AccessPolicy = field(default_factory=AccessPolicy)
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    postfix_policy_socket: Path | None = None
    windows: tuple[Window, ...] = ()


def parse_args(argv: Sequence[str] | None) -> tuple[Config, str]:
    parser = argparse.ArgumentParser(
        prog="trackerd",
        description=(
            "Count the distinct mail servers that talk to this SMTP endpoint, keeping only "
            "salted hashes in memory. Workers send records over a Unix socket; the counts "
            "are written to server_tracker.json in the runtime directory."
        ),
        epilog=f"Runtime directory: {RUNTIME_DIR_HELP}. Socket: {SOCKET_HELP}.",
    )
    parser.add_argument(
        "--runtime-dir",
        metavar="DIR",
        help="where the status file (and by default the socket) lives",
    )
    parser.add_argument("--socket", metavar="PATH", help="the Unix socket to listen on")
    parser.add_argument(
        "--status-interval",
        type=float,
        default=0.25,
        metavar="SECONDS",
        help="least time between two status file writes (default: %(default)s)",
    )
    parser.add_argument(
        "--max-exact-entries",
        type=int,
        default=DEFAULT_MAX_EXACT,
        metavar="N",
        help=(
            "distinct values counted exactly per category; past this a category is "
            "estimated (HyperLogLog, ~0.4%% error) so that floods cannot grow memory "
            "(default: %(default)s, a 32 MiB table each)"
        ),
    )
    parser.add_argument(
        "--windows",
        default=DEFAULT_WINDOWS,
        metavar="LIST",
        help=(
            "sliding windows to count over besides since boot: durations with a unit "
            "(s, m, h, d), comma-separated, or 'none' (default: %(default)s). Each category "
            "then keeps a last-seen time per value (+50%% of its table; 12.5 MiB once estimated)"
        ),
    )
    parser.add_argument(
        "--postfix-policy-socket",
        metavar="PATH",
        default=os.environ.get(POSTFIX_POLICY_SOCKET_ENV) or None,
        help=(
            "also listen here for Postfix policy delegation requests (check_policy_service; "
            f"see docs/postfix.md). Off by default; also ${POSTFIX_POLICY_SOCKET_ENV}"
        ),
    )
    access = parser.add_argument_group(
        "access and limits",
        "The socket's mode (0660) is the first gate; allow-lists are checked on every "
        "connection with SO_PEERCRED and SO_PEERGROUPS (the peer's uid, its primary gid "
        "and its supplementary groups). The daemon's own user is always let in.",
    )
    access.add_argument(
        "--allow-uid",
        action="append",
        metavar="USER",
        help="a user (name or number) that may connect; repeat for more",
    )
    access.add_argument(
        "--allow-gid",
        action="append",
        metavar="GROUP",
        help="a group (name or number) whose members may connect; repeat for more",
    )
    defaults = ConnectionLimits()
    access.add_argument(
        "--max-connections",
        type=int,
        default=defaults.max_connections,
        metavar="N",
        help="connections served at once (default: %(default)s)",
    )
    access.add_argument(
        "--idle-timeout",
        type=float,
        default=defaults.idle_timeout,
        metavar="SECONDS",
        help="close connections silent this long; 0 never (default: %(default)s)",
    )
    access.add_argument(
        "--frame-timeout",
        type=float,
        default=defaults.frame_timeout,
        metavar="SECONDS",
        help="close connections that take longer to send one message (default: %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("TRACKERD_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        help="default: info, or $TRACKERD_LOG_LEVEL",
    )
    parser.add_argument("--version", action="version", version=f"trackerd {__version__}")
    args = parser.parse_args(argv)
    if not 0.01 <= args.status_interval <= 3600:
        parser.error("--status-interval must be between 0.01 and 3600 seconds")
    if not 0 <= args.max_exact_entries <= 1 << 32:
        parser.error("--max-exact-entries must be between 0 and 2**32")
    try:
        windows = parse_windows(args.windows)
    except ValueError as exc:
        parser.error(f"--windows: {exc}")
    runtime_dir = resolve_runtime_dir(args.runtime_dir)
    socket_path = resolve_socket_path(args.socket, runtime_dir)
    if args.max_connections < 1 or args.idle_timeout < 0 or args.frame_timeout < 0:
        parser.error("--max-connections must be at least 1, the timeouts at least 0")
    try:
        uids = frozenset(parse_uid(u) for u in args.allow_uid) if args.allow_uid else None
        gids = frozenset(parse_gid(g) for g in args.allow_gid) if args.allow_gid else None
    except ValueError as exc:
        parser.error(str(exc))
    config = Config(
        runtime_dir,
        socket_path,
        args.status_interval,
        args.max_exact_entries,
        AccessPolicy(uids, gids),
        replace(
            defaults,
            max_connections=args.max_connections,
            idle_timeout=args.idle_timeout,
            frame_timeout=args.frame_timeout,
        ),
        Path(args.postfix_policy_socket) if args.postfix_policy_socket else None,
        windows,
    )
    return config, args.log_level


def setup_logging(level: str) -> None:
    # Under systemd the journal stamps each line itself.
    fmt = (
        "%(levelname)s %(message)s"
        if os.environ.get("JOURNAL_STREAM")
        else ("%(asctime)s trackerd[%(process)d] %(levelname)s %(message)s")
    )
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr)


def _open_socket(passed: dict[str, int], name: str, path: Path | None) -> OpenSocket:
    """The socket systemd passed under this name, else our own at path."""
    fd = pick_fd(passed, name)
    if fd is not None:
        sock = adopt_listening_socket(fd)
        return OpenSocket(sock, f"a socket passed by systemd ({sock.getsockname() or name})")
    assert path is not None
    return OpenSocket.bind(path)


def _raise_open_file_limit(wanted: int) -> None:
    """Each connection is a file descriptor: lift the soft limit as far as needed and allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as exc:  # a seccomp filter, say: not fatal
            log.warning("cannot raise the open file limit: %s", exc)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning("open file limit %d allows fewer than --max-connections connections", soft)


def _tune_garbage_collector() -> None:
    """Each record message makes hundreds of small lists; collecting the young
    generation every 700 of them cost about a tenth of the daemon's time. What
    start-up made is frozen out of later collections."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def summarise(status: Status) -> str:
    """One line of counts, for logs and systemd's STATUS=."""
    return (
        f"{status.unique_conn_ips} connection IPs, {status.unique_domains} domains, "
        f"{status.unique_ip_servers} IP servers; {status.records} records"
    )


async def run(config: Config) -> None:
    """Run the daemon until SIGTERM or SIGINT. Raises StartupError before it is ready."""
    if not make_non_dumpable():
        log.warning("could not make the process non-dumpable; the salt could reach a core dump")
    notifier = Notifier()
    _raise_open_file_limit(config.limits.max_connections + 64)
    prepare_runtime_dir(config.runtime_dir)
    removed = remove_leftover_temp_files(config.runtime_dir)
    if removed:
        log.info("removed %d temp files left by an earlier run", removed)
    tracker = Tracker(max_exact=config.max_exact, windows=config.windows)
    writer = StatusWriter(tracker, config.runtime_dir, min_interval=config.status_interval)
    passed = listen_fds()
    sockets: list[OpenSocket] = []
    try:
        sockets.append(_open_socket(passed, "trackerd", config.socket_path))
        if config.postfix_policy_socket or pick_fd(passed, POSTFIX_POLICY_FD_NAME) is not None:
            policy_path = config.postfix_policy_socket
            sockets.append(_open_socket(passed, POSTFIX_POLICY_FD_NAME, policy_path))
        listeners = [await anyio.abc.SocketListener.from_socket(s.sock) for s in sockets]
        if not await writer.write_now():
            raise StartupError(f"cannot write the status file in {config.runtime_dir}")
        server = TrackerServer(tracker, writer, policy=config.policy, limits=config.limits)
        servers: list[StreamServer] = [server]
        if len(sockets) > 1:
            servers.append(
                PolicyServer(tracker, writer, policy=config.policy, limits=config.limits)
            )
            log.info("Postfix policy requests on %s", sockets[1].where)
        log.info(
            "trackerd %s listening on %s; status file in %s",
            __version__,
            sockets[0].where,
            config.runtime_dir,
        )
        notifier.ready(f"Ready: {summarise(tracker.status())}")
        _tune_garbage_collector()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(writer.run)
            tasks.start_soon(_stop_on_signal, servers, notifier)
            if notifier.enabled:
                tasks.start_soon(_report_status_to_systemd, tracker, notifier)
            if notifier.watchdog_interval is not None:
                tasks.start_soon(_keep_watchdog_fed, notifier, notifier.watchdog_interval)
            served = [Served(*pair) for pair in zip(servers, sockets, strict=True)]
            upkeep = Upkeep(config.runtime_dir, writer, served, sockets)
            async with anyio.create_task_group() as serving:
                for each_server, listener in zip(servers, listeners, strict=True):
                    serving.start_soon(each_server.serve, listener)
                tasks.start_soon(upkeep.run, serving)
            tasks.cancel_scope.cancel()
        await writer.write_now()
        log.info("stopped: %s", summarise(tracker.status()))
    finally:
        for opened in sockets:
            opened.close()


async def _stop_on_signal(servers: list[StreamServer], notifier: Notifier) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info(
                "%s received: finishing what clients sent, then exiting",
                signal.Signals(signum).name,
            )
            notifier.stopping()
            for server in servers:
                server.stop()
            return


async def _report_status_to_systemd(tracker: Tracker, notifier: Notifier) -> None:
    """STATUS= with the counts, once a second at most, and only when they changed."""
    last = ""
    while True:
        await anyio.sleep(STATUS_NOTIFY_INTERVAL)
        summary = summarise(tracker.status())
        if summary != last:
            notifier.status(summary)
            last = summary


async def _keep_watchdog_fed(notifier: Notifier, interval: float) -> None:
    # Runs in the event loop: if the loop hangs, the pings stop and systemd restarts us.
    while True:
        notifier.watchdog()
        await anyio.sleep(interval)


def main(argv: Sequence[str] | None = None) -> int:
    config, level = parse_args(argv)
    setup_logging(level)
    try:
        anyio.run(run, config)
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        return 130
    return 0
