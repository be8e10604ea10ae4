"""Where trackerd's runtime directory and socket are: the one place that decides it.

The daemon, the client library and trackerctl all call these functions, so
they agree on the defaults without anyone configuring anything. The
``--runtime-dir`` and ``--socket`` options are defined here too (name,
environment variable, help), for trackerd's argparse and trackerctl's typer alike.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # argparse is only needed by trackerd, not by a worker's import
    import argparse

SOCKET_NAME = "trackerd.sock"
#: Where a system install keeps its runtime directory (systemd's RuntimeDirectory=).
SYSTEM_RUNTIME_DIR = Path("/run/trackerd")
RUNTIME_DIR_ENV = "TRACKERD_RUNTIME_DIR"
SOCKET_ENV = "TRACKERD_SOCKET"

#: The resolution order below, for --help texts.
RUNTIME_DIR_HELP = (
    f"--runtime-dir, else ${RUNTIME_DIR_ENV}, else $RUNTIME_DIRECTORY (systemd), else "
    f"{SYSTEM_RUNTIME_DIR} for root or if it exists, else $XDG_RUNTIME_DIR/trackerd, "
    "else /tmp/trackerd-<uid>"
)
SOCKET_HELP = f"--socket, else ${SOCKET_ENV}, else <runtime dir>/{SOCKET_NAME}"


@dataclass(frozen=True)
class PathOption:
    """One command-line option naming a path, as both trackerd and trackerctl offer it."""

    flag: str
    env: str
    metavar: str
    #: What the path is, for the first half of the help text.
    what: str
    #: Where it comes from when the option is not given.
    resolution: str

    @property
    def help(self) -> str:
        return f"{self.what}: {self.resolution}"

    @property
    def dest(self) -> str:
        """The attribute argparse stores it under (``--runtime-dir`` -> ``runtime_dir``)."""
        return self.flag.removeprefix("--").replace("-", "_")


RUNTIME_DIR_OPTION = PathOption(
    "--runtime-dir",
    RUNTIME_DIR_ENV,
    "DIR",
    "trackerd's runtime directory, where server_tracker.json is",
    RUNTIME_DIR_HELP,
)
SOCKET_OPTION = PathOption("--socket", SOCKET_ENV, "PATH", "trackerd's socket", SOCKET_HELP)
PATH_OPTIONS = (RUNTIME_DIR_OPTION, SOCKET_OPTION)


@dataclass(frozen=True)
class RuntimePaths:
    runtime_dir: Path
    socket: Path
    #: Why this runtime directory, for error messages ("" when given explicitly or
    #: unsurprising); see runtime_dir_why().
    why: str = ""


def default_private_dir(uid: int | None = None) -> Path:
    """The last-resort runtime directory: private to this user, under /tmp."""
    return Path("/tmp") / f"trackerd-{os.getuid() if uid is None else uid}"


def resolve_runtime_dir(
    explicit: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    euid: int | None = None,
) -> Path:
    """The runtime directory, by precedence.

    ``--runtime-dir``, then $TRACKERD_RUNTIME_DIR, then $RUNTIME_DIRECTORY
    (set by systemd's RuntimeDirectory=; the first entry if it lists several),
    then /run/trackerd for root or if it exists (a system install, so that
    admins and workers find it with no configuration; root's daemon is one),
    then $XDG_RUNTIME_DIR/trackerd, then /tmp/trackerd-<uid>.
    """
    env = os.environ if environ is None else environ
    is_root = (os.geteuid() if euid is None else euid) == 0
    if explicit:
        return Path(explicit)
    if env.get(RUNTIME_DIR_ENV):
        return Path(env[RUNTIME_DIR_ENV])
    if env.get("RUNTIME_DIRECTORY"):
        return Path(env["RUNTIME_DIRECTORY"].split(":")[0])
    if is_root or SYSTEM_RUNTIME_DIR.is_dir():
        return SYSTEM_RUNTIME_DIR
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "trackerd"
    return default_private_dir()


def runtime_dir_why(
    explicit: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    euid: int | None = None,
) -> str:
    """Why resolve_runtime_dir() chose what it chose, as a parenthesis to follow the
    directory's name in an error message; "" when the choice needs no explaining
    (given, or this user's own).

    A non-root user who finds /run/trackerd (left by root's daemon) is sent
    there and fails: the message must say how it came to be chosen.
    """
    env = os.environ if environ is None else environ
    is_root = (os.geteuid() if euid is None else euid) == 0
    change = f"give --runtime-dir or set ${RUNTIME_DIR_ENV} to pick another"
    if explicit:
        return ""
    if env.get(RUNTIME_DIR_ENV):
        return f"(from ${RUNTIME_DIR_ENV})"
    if env.get("RUNTIME_DIRECTORY"):
        return "(from $RUNTIME_DIRECTORY, set by systemd's RuntimeDirectory=)"
    if is_root:
        return f"(the default for root; {change})"
    if SYSTEM_RUNTIME_DIR.is_dir():
        return f"(chosen because it exists: the system install's directory; {change})"
    return ""


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


def resolve_paths(
    socket: str | os.PathLike[str] | None = None,
    runtime_dir: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> RuntimePaths:
    """Both paths from the two options' values (None when not given)."""
    directory = resolve_runtime_dir(runtime_dir, environ)
    return RuntimePaths(
        directory,
        resolve_socket_path(socket, directory, environ),
        runtime_dir_why(runtime_dir, environ),
    )


def add_path_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --runtime-dir and --socket to an argparse parser (trackerd's)."""
    for option in PATH_OPTIONS:
        parser.add_argument(option.flag, metavar=option.metavar, help=option.help)


def paths_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> RuntimePaths:
    """The paths from what add_path_arguments() parsed."""
    return resolve_paths(
        getattr(args, SOCKET_OPTION.dest), getattr(args, RUNTIME_DIR_OPTION.dest), environ
    )


def not_a_socket(path: str | os.PathLike[str]) -> str | None:
    """What path is when it is there but is no socket ("a directory", "a file"), else None.

    connect() to such a path fails as "refused", or "permission denied" without
    write access to it, which would send an operator after trackerd: the one
    check trackerctl and a worker's warning share.
    """
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISSOCK(mode):
        return None
    return "a directory" if stat.S_ISDIR(mode) else "a file"


def closed_directory(path: str | os.PathLike[str]) -> str | None:
    """The first directory on the way to path that this user may not enter, named
    with its owner, group and mode ("the directory /tmp/trackerd-65534 (owner
    nobody, group nogroup, mode 0700)"), else None.

    connect() fails as "permission denied" both when the socket's own mode
    refuses this user (joining trackerd's group helps) and when a directory
    above it does, such as another user's private runtime directory (it does
    not): the one check trackerctl and a worker's warning share.
    """
    try:
        parent = Path(os.path.abspath(path)).parent
    except (OSError, ValueError):
        return None
    effective = os.access in os.supports_effective_ids
    for directory in [*reversed(parent.parents), parent]:
        try:
            info = os.stat(directory)
        except (OSError, ValueError):
            return None
        if not stat.S_ISDIR(info.st_mode):
            return None
        if os.access(directory, os.X_OK, effective_ids=effective):
            continue
        try:
            owner = pwd.getpwuid(info.st_uid).pw_name
        except KeyError:
            owner = str(info.st_uid)
        try:
            group = grp.getgrgid(info.st_gid).gr_name
        except KeyError:
            group = str(info.st_gid)
        mode = stat.S_IMODE(info.st_mode)
        return f"the directory {directory} (owner {owner}, group {group}, mode {mode:04o})"
    return None
