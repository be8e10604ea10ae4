"""Where trackerd's runtime directory and socket are: the one place that decides it.

The daemon, the client library and trackerctl all call these functions, so
they agree on the defaults without anyone configuring anything.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

SOCKET_NAME = "trackerd.sock"
#: Where a system install keeps its runtime directory (systemd's RuntimeDirectory=).
SYSTEM_RUNTIME_DIR = Path("/run/trackerd")
RUNTIME_DIR_ENV = "TRACKERD_RUNTIME_DIR"
SOCKET_ENV = "TRACKERD_SOCKET"

#: The resolution order below, for --help texts.
RUNTIME_DIR_HELP = (
    f"--runtime-dir, else ${RUNTIME_DIR_ENV}, else $RUNTIME_DIRECTORY (systemd), else "
    f"{SYSTEM_RUNTIME_DIR} if it exists, else $XDG_RUNTIME_DIR/trackerd, else /tmp/trackerd-<uid>"
)
SOCKET_HELP = f"--socket, else ${SOCKET_ENV}, else <runtime dir>/{SOCKET_NAME}"


def default_private_dir(uid: int | None = None) -> Path:
    """The last-resort runtime directory: private to this user, under /tmp."""
    return Path("/tmp") / f"trackerd-{os.getuid() if uid is None else uid}"


def resolve_runtime_dir(
    explicit: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Path:
    """The runtime directory, by precedence.

    ``--runtime-dir``, then $TRACKERD_RUNTIME_DIR, then $RUNTIME_DIRECTORY
    (set by systemd's RuntimeDirectory=; the first entry if it lists several),
    then /run/trackerd if it exists (a system install, so that admins and
    workers find it with no configuration), then $XDG_RUNTIME_DIR/trackerd,
    then /tmp/trackerd-<uid>.
    """
    env = os.environ if environ is None else environ
    if explicit:
        return Path(explicit)
    if env.get(RUNTIME_DIR_ENV):
        return Path(env[RUNTIME_DIR_ENV])
    if env.get("RUNTIME_DIRECTORY"):
        return Path(env["RUNTIME_DIRECTORY"].split(":")[0])
    if SYSTEM_RUNTIME_DIR.is_dir():
        return SYSTEM_RUNTIME_DIR
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "trackerd"
    return default_private_dir()


def resolve_socket_path(
    explicit: str | os.PathLike[str] | None = None,
    runtime_dir: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Path:
    """The daemon's socket.

    ``--socket``, then $TRACKERD_SOCKET, then <runtime dir>/trackerd.sock.
    """
    env = os.environ if environ is None else environ
    if explicit:
        return Path(explicit)
    if env.get(SOCKET_ENV):
        return Path(env[SOCKET_ENV])
    return resolve_runtime_dir(runtime_dir, env) / SOCKET_NAME
