"""SIGHUP: read the options again (command line and --config file) and apply what can change.

What a reload applies at once: the log level, the statistics interval and the
allow-lists (AllowLists, checked at each new connection; connections already
admitted stay). Everything else (paths, sockets, limits, the exact-count bound)
is built into the running daemon: a change is logged as needing a restart, and
the running value stays. A config that does not parse changes nothing. Either
way the daemon goes on, and logs one line saying what it did, with counts only.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

from trackerd.core.wording import plural
from trackerd.edges.access import unseeable_message
from trackerd.edges.endpoint import Endpoint
from trackerd.edges.logs import apply_level
from trackerd.edges.statistics import StatisticsLog
from trackerd.edges.systemd import Notifier
from trackerd.errors import ConfigError
from trackerd.options import RELOADABLE, RESTART_ONLY, Config, parse_config

log = logging.getLogger("trackerd")


class Reloader:
    def __init__(
        self,
        argv: Sequence[str],
        config: Config,
        endpoints: Sequence[Endpoint],
        statistics: StatisticsLog,
        notifier: Notifier,
        status: Callable[[], str],
    ) -> None:
        self._argv = list(argv)
        self.config = config
        self._endpoints = endpoints
        self._statistics = statistics
        self._notifier = notifier
        self._status = status

    def reload(self) -> None:
        self._notifier.reloading()
        try:
            self._apply(parse_config(self._argv, raise_errors=True))
        except ConfigError as exc:
            log.error("SIGHUP: cannot reload, the running settings stay: %s", exc)
        self._statistics.log_now()
        self._notifier.reloaded(self._status())

    def _apply(self, new: Config) -> None:
        unseeable = new.allow.unseeable()
        if unseeable:
            raise ConfigError(unseeable_message(unseeable))
        old = self.config
        kept = dataclasses.replace(new, **{name: getattr(old, name) for name in RELOADABLE})
        needs_restart = [
            RESTART_ONLY.get(f.name, f.name)
            for f in dataclasses.fields(Config)
            if getattr(kept, f.name) != getattr(old, f.name)
        ]
        apply_level(new.logging)
        self._statistics.set_interval(new.logging.stats_interval)
        for endpoint in self._endpoints:
            endpoint.server.allow = new.allow
        # Only what cannot change now stays as it was, so the next reload compares right.
        self.config = dataclasses.replace(old, **{name: getattr(new, name) for name in RELOADABLE})
        allow = new.allow
        log.info(
            "SIGHUP: reloaded: log level %s, statistics every %gs, allow-lists %s",
            new.logging.level,
            new.logging.stats_interval,
            f"of {plural(len(allow.uids or ()), 'user')} and "
            f"{plural(len(allow.gids or ()), 'group')}"
            if allow.restricted
            else "off",
        )
        if new.overridden:
            log.info(
                "SIGHUP: the command line overrides (or adds to) the config file's %s",
                ", ".join(new.overridden),
            )
        if needs_restart:
            log.warning(
                "SIGHUP: changed, but applied only at a restart: %s", ", ".join(needs_restart)
            )
