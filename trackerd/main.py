"""trackerd's entry point: options, logging, start-up, the signal-driven shutdown.

Start-up order: runtime directory, leftover temp files, listening socket, the
first (zero) status file; only then is the daemon ready. SIGTERM or SIGINT
stops accepting, drains what clients already sent, writes the final status and
exits 0.
"""

from __future__ import annotations

import gc
import logging
import resource
import signal
from collections.abc import Sequence

import anyio

from servertracker.status import Status
from trackerd import __version__
from trackerd.core.tracker import Tracker
from trackerd.edges.endpoint import Endpoint
from trackerd.edges.logs import setup_logging
from trackerd.edges.msgpack_server import TrackerServer
from trackerd.edges.policy_server import PolicyServer
from trackerd.edges.socket_files import RuntimeDirLock, prepare_runtime_dir
from trackerd.edges.status_writer import StatusWriter, remove_leftover_temp_files
from trackerd.edges.systemd import Notifier, listen_fds, make_non_dumpable, pick_fd
from trackerd.edges.upkeep import Upkeep
from trackerd.errors import StartupError
from trackerd.options import Config, parse_config

log = logging.getLogger("trackerd")

#: Least time between two STATUS= notifications to systemd, in seconds.
STATUS_NOTIFY_INTERVAL = 1.0


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


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"  # no digit grouping: commas separate


def summarise(status: Status) -> str:
    """One line of counts, for logs and systemd's STATUS=: "1 connection IP, 2 domains"."""
    return (
        f"{_plural(status.unique_conn_ips, 'connection IP')}, "
        f"{_plural(status.unique_domains, 'domain')}, "
        f"{_plural(status.unique_ip_servers, 'IP server')}; {_plural(status.records, 'record')}"
    )


async def run(config: Config) -> None:
    """Run the daemon until SIGTERM or SIGINT. Raises StartupError before it is ready."""
    if not make_non_dumpable():
        log.warning("could not make the process non-dumpable; the salt could reach a core dump")
    notifier = Notifier()
    _raise_open_file_limit(config.limits.max_connections + 64)
    prepare_runtime_dir(config.runtime_dir)
    lock = RuntimeDirLock(config.runtime_dir)
    try:
        await _run_locked(config, notifier, lock)
    finally:
        lock.release()


async def _run_locked(config: Config, notifier: Notifier, lock: RuntimeDirLock) -> None:
    removed = remove_leftover_temp_files(config.runtime_dir)
    if removed:
        log.info("removed %d temp files left by an earlier run", removed)
    tracker = Tracker(max_exact=config.max_exact)
    writer = StatusWriter(tracker, config.runtime_dir, min_interval=config.status_interval)
    passed = listen_fds()
    endpoints: list[Endpoint] = []
    try:
        endpoints.append(
            Endpoint(
                config.listener.name,
                TrackerServer(tracker, writer, allow=config.allow, limits=config.limits),
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
        listeners = [await anyio.abc.SocketListener.from_socket(e.socket.sock) for e in endpoints]
        if not await writer.write_now():
            raise StartupError(f"cannot write the status file in {config.runtime_dir}")
        for endpoint in endpoints[1:]:
            log.info("Postfix policy requests on %s", endpoint.socket.where)
        log.info(
            "trackerd %s listening on %s; status file in %s",
            __version__,
            endpoints[0].socket.where,
            config.runtime_dir,
        )
        notifier.ready(f"Ready: {summarise(tracker.status())}")
        _tune_garbage_collector()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(writer.run)
            tasks.start_soon(_stop_on_signal, endpoints, notifier)
            if notifier.enabled:
                tasks.start_soon(_report_status_to_systemd, tracker, notifier)
            if notifier.watchdog_interval is not None:
                tasks.start_soon(_keep_watchdog_fed, notifier, notifier.watchdog_interval)
            upkeep = Upkeep(config.runtime_dir, lock, writer, endpoints)
            async with anyio.create_task_group() as serving:
                for endpoint, listener in zip(endpoints, listeners, strict=True):
                    serving.start_soon(endpoint.server.serve, listener)
                tasks.start_soon(upkeep.run, serving)
            tasks.cancel_scope.cancel()
        await writer.write_now()
        log.info("stopped: %s", summarise(tracker.status()))
    finally:
        for endpoint in endpoints:
            endpoint.close()


async def _stop_on_signal(endpoints: list[Endpoint], notifier: Notifier) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info(
                "%s received: finishing what clients sent, then exiting",
                signal.Signals(signum).name,
            )
            notifier.stopping()
            for endpoint in endpoints:
                endpoint.server.stop()
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
    config = parse_config(argv)
    setup_logging(config.logging)
    try:
        anyio.run(run, config)
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        return 130
    return 0
