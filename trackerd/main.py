"""trackerd's entry point: start-up, signals, shutdown. Wiring only.

Start-up order: runtime directory and its lock, leftover temp files, listening
sockets, the first (zero) status file; only then is the daemon ready. SIGHUP
reloads (reload.py) and never ends the daemon. SIGTERM or SIGINT stops
accepting, drains what clients already sent, writes the final status and exits
0; a second one while draining cuts the drain short (the final status is still
written).
"""

from __future__ import annotations

import gc
import logging
import resource
import signal
import sys
import time
from collections.abc import Sequence

import anyio

from servertracker import accel
from trackerd import __version__
from trackerd.core.tracker import Tracker
from trackerd.edges.access import unseeable_message
from trackerd.edges.endpoint import Endpoint
from trackerd.edges.fleet import epoch_clock, load_fleet_sketch
from trackerd.edges.logs import setup_logging
from trackerd.edges.metrics_textfile import MetricsTextfile
from trackerd.edges.msgpack_server import TrackerServer
from trackerd.edges.policy_server import PolicyServer
from trackerd.edges.socket_files import RuntimeDirLock, prepare_runtime_dir
from trackerd.edges.statistics import StatisticsLog, collect_health, statistics_line, summarise
from trackerd.edges.status_writer import StatusWriter, remove_leftover_temp_files
from trackerd.edges.stream_server import StreamServer
from trackerd.edges.systemd import Notifier, listen_fds, make_non_dumpable, pick_fd
from trackerd.edges.upkeep import Upkeep
from trackerd.errors import StartupError
from trackerd.options import Config, parse_config
from trackerd.reload import Reloader

log = logging.getLogger("trackerd")

#: Least time between two STATUS= notifications to systemd, in seconds.
STATUS_NOTIFY_INTERVAL = 1.0
#: Descriptors the daemon needs besides its connections: listeners, the lock,
#: status file writes, the event loop's own, spares for refusing at the limit.
FILES_BESIDES = 64


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
        log.warning(
            "open file limit %d allows fewer than --max-connections connections on each "
            "listener; connections past it are refused",
            soft,
        )


def _tune_garbage_collector() -> None:
    """Each record message makes hundreds of small lists; collecting the young
    generation every 700 of them cost about a tenth of the daemon's time. What
    start-up made is frozen out of later collections."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def run(config: Config, argv: Sequence[str] = ()) -> None:
    """Run the daemon until SIGTERM or SIGINT. Raises StartupError before it is ready.

    argv is what SIGHUP parses again.
    """
    if not make_non_dumpable():
        log.warning("could not make the process non-dumpable; the salt could reach a core dump")
    notifier = Notifier()
    unseeable = config.allow.unseeable()
    if unseeable:
        raise StartupError(unseeable_message(unseeable))
    try:
        prepare_runtime_dir(config.runtime_dir)
        lock = RuntimeDirLock(config.runtime_dir)
    except StartupError as exc:
        if not config.runtime_dir_why:
            raise
        # Say how the directory was chosen: a user sent to root's /run/trackerd
        # because it exists would not guess it.
        raise StartupError(f"{exc} {config.runtime_dir_why}") from None
    try:
        await _run_locked(config, argv, notifier, lock)
    finally:
        lock.release()


async def _run_locked(
    config: Config, argv: Sequence[str], notifier: Notifier, lock: RuntimeDirLock
) -> None:
    removed = remove_leftover_temp_files(config.runtime_dir)
    if removed:
        log.info("removed %d temp files left by an earlier run", removed)
    fleet = None
    if config.fleet.key_file is not None:
        fleet = load_fleet_sketch(config.fleet.key_file, time.time())
    tracker = Tracker(max_exact=config.max_exact, windows=config.windows, fleet=fleet)
    writer = StatusWriter(tracker, config.runtime_dir, min_interval=config.status_interval)
    if config.metrics_textfile is not None:
        writer.textfile = MetricsTextfile(config.metrics_textfile)
    passed = listen_fds()
    endpoints: list[Endpoint] = []
    try:
        endpoints.append(
            Endpoint(
                config.listener.name,
                TrackerServer(
                    tracker,
                    writer,
                    allow=config.allow,
                    limits=config.limits,
                    max_interned=config.max_interned,
                ),
                config.listener.open(passed),
            )
        )
        postfix = config.postfix_listener
        if postfix.path is not None or pick_fd(passed, postfix.name) is not None:
            endpoints.append(
                Endpoint(
                    postfix.name,
                    PolicyServer(tracker, writer, allow=config.allow, limits=config.limits),
                    postfix.open(passed),
                )
            )
        # Every listener may serve --max-connections; accept() copes with running out anyway.
        _raise_open_file_limit(config.limits.max_connections * len(endpoints) + FILES_BESIDES)
        listeners = [await anyio.abc.SocketListener.from_socket(e.socket.sock) for e in endpoints]
        servers = [endpoint.server for endpoint in endpoints]
        writer.health = lambda: collect_health(servers, writer)
        if not await writer.write_now():
            raise StartupError(f"cannot write the status file in {config.runtime_dir}")
        for endpoint in endpoints[1:]:
            log.info("Postfix policy requests on %s", endpoint.socket.where)
        log.info(
            "trackerd %s listening on %s; status file in %s; hot path: %s",
            __version__,
            endpoints[0].socket.where,
            config.runtime_dir,
            accel.describe(accel.DAEMON_MODULES),
        )
        notifier.ready(f"Ready: {summarise(tracker.status())}")
        _tune_garbage_collector()
        statistics = StatisticsLog(
            lambda: statistics_line(tracker.status(), servers, writer),
            config.logging.stats_interval,
        )
        reloader = Reloader(
            argv, config, endpoints, statistics, notifier, lambda: summarise(tracker.status())
        )
        async with anyio.create_task_group() as tasks:
            serving = anyio.CancelScope()
            tasks.start_soon(writer.run)
            tasks.start_soon(_handle_signals, servers, notifier, reloader, serving)
            tasks.start_soon(statistics.run)
            if notifier.enabled:
                tasks.start_soon(_report_status_to_systemd, tracker, notifier)
            if fleet is not None:
                tasks.start_soon(epoch_clock, tracker, fleet)
            if notifier.watchdog_interval is not None:
                tasks.start_soon(_keep_watchdog_fed, notifier, notifier.watchdog_interval)
            upkeep = Upkeep(config.runtime_dir, lock, writer, endpoints)
            with serving:
                async with anyio.create_task_group() as serving_tasks:
                    for endpoint, listener in zip(endpoints, listeners, strict=True):
                        serving_tasks.start_soon(endpoint.server.serve, listener)
                    tasks.start_soon(upkeep.run, serving_tasks)
            # Still inside the task group, so a SIGHUP now is still handled, not fatal.
            writer.stopping = True
            await writer.write_now()
            statistics.log_now()
            log.info("stopped: %s", summarise(tracker.status()))
            tasks.cancel_scope.cancel()
    finally:
        for endpoint in endpoints:
            endpoint.close()


async def _handle_signals(
    servers: list[StreamServer],
    notifier: Notifier,
    reloader: Reloader,
    serving: anyio.CancelScope,
) -> None:
    """One receiver for the daemon's whole life: SIGHUP reloads; SIGTERM or SIGINT
    stops; a second one while draining ends the drain at once."""
    stopping = False
    try:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGHUP:
                    if stopping:
                        log.info("SIGHUP received while stopping: nothing to reload")
                    else:
                        reloader.reload()
                elif not stopping:
                    stopping = True
                    log.info("%s received: finishing what clients sent, then exiting", name)
                    notifier.stopping()
                    for server in servers:
                        server.stop()
                else:
                    log.warning("%s received again: closing connections without draining", name)
                    serving.cancel()
    finally:
        # Leaving the receiver puts back the default action, which for SIGHUP is to
        # die: the last moments of shutdown ignore it instead.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)


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
    # The loop is never away for long (msgpack_server.py counts large messages in
    # slices of about 2 ms), so a ping is late by a few milliseconds at most: each
    # gap is half the timeout and that, far from the whole timeout.
    while True:
        notifier.watchdog()
        await anyio.sleep(interval)


def main(argv: Sequence[str] | None = None) -> int:
    # SIGHUP's default action ends the process: ignore it until the daemon's own
    # handler is up. trackerd/__main__.py, the entry point, did so already before
    # importing this module; this covers main() called from elsewhere.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    command_line = list(argv) if argv is not None else sys.argv[1:]
    config = parse_config(command_line)
    setup_logging(config.logging)
    try:
        anyio.run(run, config, command_line)
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        return 130
    return 0
