"""trackerd's own exceptions: one small hierarchy under servertracker's TrackerError.

    TrackerError (servertracker.errors)
    └── DaemonError            anything trackerd raises on purpose
        ├── StartupError       cannot start (or go on); the text tells the operator what to do
        │   └── ConfigError    a bad command line or config file; never echoes a secret
        ├── PolicyProtocolError  a Postfix policy peer sent garbage; the text holds no input
        └── ConnectionClosed   a connection is done: unwinds its task to its cleanup

Pure, no I/O: the core may raise these too.
"""

from __future__ import annotations

from servertracker.errors import TrackerError


class DaemonError(TrackerError):
    """Base class of every error trackerd raises on purpose."""


class StartupError(DaemonError):
    """The daemon cannot start; the message tells the operator what to do."""


class ConfigError(StartupError):
    """The command line or the config file is wrong; the message says where and how."""


class PolicyProtocolError(DaemonError):
    """The peer sent something that is not a policy request. The text holds no input."""


class ConnectionClosed(DaemonError):
    """The connection is done; unwinds the connection's task to its cleanup."""
