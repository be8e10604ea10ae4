"""The daemon's listening socket files and runtime directory: made safely, or refused clearly.

The runtime directory belongs to one daemon at a time: it holds an flock on
trackerd.lock in it, which names its pid, for as long as it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from servertracker.paths import default_private_dir
from trackerd.errors import StartupError
from trackerd.option_types import Arguments, file_mode, group_id, user_id

SOCKET_MODE = 0o660
LOCK_FILE_NAME = "trackerd.lock"
LOCK_FILE_MODE = 0o640
RUNTIME_DIR_MODE = 0o750
#: sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class SocketFileSettings:
    """Who owns a socket file trackerd binds itself, and its mode; applied at every bind.

    A socket that systemd passes has its unit's SocketUser=, SocketGroup= and
    SocketMode= instead.
    """

    owner: int | None = None
    group: int | None = None
    mode: int = SOCKET_MODE

    @classmethod
    def add_arguments(cls, arguments: Arguments, flag: str, what: str) -> None:
        """--FLAG-owner, --FLAG-group, --FLAG-mode for the socket that --FLAG names."""
        arguments.add_argument(
            f"{flag}-owner",
            type=user_id,
            metavar="USER",
            help=f"give {what} file to this user (root only; default: trackerd's own user)",
        )
        arguments.add_argument(
            f"{flag}-group",
            type=group_id,
            metavar="GROUP",
            help=f"give {what} file to this group (default: trackerd's own group)",
        )
        arguments.add_argument(
            f"{flag}-mode",
            type=file_mode,
            default=SOCKET_MODE,
            metavar="MODE",
            help=f"{what} file's mode, in octal (default: {SOCKET_MODE:04o})",
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace, flag: str) -> SocketFileSettings:
        dest = flag.removeprefix("--").replace("-", "_")
        return cls(
            getattr(args, f"{dest}_owner"),
            getattr(args, f"{dest}_group"),
            getattr(args, f"{dest}_mode"),
        )


def _runtime_dir_mode(path: Path) -> int:
    return 0o700 if path == default_private_dir() else RUNTIME_DIR_MODE


def prepare_runtime_dir(path: Path) -> None:
    """Create the runtime directory if needed; refuse an unsafe /tmp fallback."""
    try:
        path.mkdir(mode=_runtime_dir_mode(path), parents=True, exist_ok=True)
    except FileExistsError:
        # mkdir() says "File exists" for a file in the way: name the real fault.
        raise StartupError(f"runtime directory {path} is not a directory") from None
    except OSError as exc:
        raise StartupError(f"cannot create runtime directory {path}: {exc.strerror}") from None
    check_runtime_dir(path)


def not_private(path: Path, info: os.stat_result) -> str | None:
    """Why path, with this stat, is not the private /tmp directory it should be; or None.

    Under a shared /tmp another user could make it first, to read our files.
    """
    if path == default_private_dir() and (info.st_uid != os.getuid() or info.st_mode & 0o077):
        return (
            f"{path} is not private to this user (owner uid {info.st_uid}, mode "
            f"{stat.S_IMODE(info.st_mode):o}); remove it or pass --runtime-dir"
        )
    return None


def check_runtime_dir(path: Path) -> None:
    """Raise StartupError unless path is a directory we may use, and private if in /tmp."""
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise StartupError(f"cannot use runtime directory {path}: {exc.strerror}") from None
    if stat.S_ISLNK(info.st_mode):
        # Whoever can change the link could point trackerd's socket and files elsewhere.
        raise StartupError(
            f"runtime directory {path} is a symbolic link (to {os.path.realpath(path)}); "
            "trackerd does not follow one: give the directory itself"
        )
    if not stat.S_ISDIR(info.st_mode):
        raise StartupError(f"runtime directory {path} is not a directory")
    problem = not_private(path, info)
    if problem is not None:
        raise StartupError(problem)
    if not os.access(path, os.W_OK | os.X_OK):
        raise StartupError(f"runtime directory {path} is not writable by this user")


def remake_runtime_dir(path: Path) -> bool:
    """Make the runtime directory again if it was removed; True if it had to.

    Only the last component: a missing parent (say $XDG_RUNTIME_DIR, gone at
    logout) is not ours to create. Raises OSError when it cannot be made, and
    StartupError when what is there now is not fit to use (in a shared /tmp,
    another user may have made the directory in the meantime).
    """
    try:
        path.mkdir(mode=_runtime_dir_mode(path))
    except FileExistsError:
        check_runtime_dir(path)
        return False
    return True


class RuntimeDirLock:
    """An flock on <runtime dir>/trackerd.lock, held for the daemon's whole life.

    The kernel drops the lock when the process ends, however it ends, so a
    daemon killed with SIGKILL leaves nothing to clean up; the file stays.
    """

    def __init__(self, runtime_dir: Path) -> None:
        self.path = runtime_dir / LOCK_FILE_NAME
        self._fd: int | None = None
        self.acquire()

    def acquire(self) -> None:
        """Take the lock (again, if the file was removed); StartupError if another holds it."""
        try:
            fd = os.open(
                self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, LOCK_FILE_MODE
            )
        except OSError as exc:
            raise StartupError(f"cannot open the lock file {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StartupError(f"cannot lock {self.path}: {exc.strerror}") from None
            raise StartupError(
                f"runtime directory {self.path.parent} is in use by another trackerd "
                f"(pid {holder or 'unknown'}, holding {self.path}); stop it, or give this "
                "one its own --runtime-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.release()
        self._fd = fd

    def held(self) -> bool:
        """True while the file at the path is the one we locked (not removed or replaced)."""
        if self._fd is None:
            return False
        try:
            return socket_file_identity(self.path) == _fd_identity(self._fd)
        except OSError:
            return False

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None


def _fd_identity(fd: int) -> tuple[int, int]:
    info = os.fstat(fd)
    return (info.st_dev, info.st_ino)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _remove_stale_socket(path: Path) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        # EACCES on a directory we may not search, ENOTDIR under a regular file, ...
        raise StartupError(f"cannot listen on {path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(info.st_mode):
        raise StartupError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(os.fspath(path))
    except (ConnectionRefusedError, FileNotFoundError):
        try:
            path.unlink(missing_ok=True)  # left by a daemon that died: safe to replace
        except OSError as exc:
            raise StartupError(f"cannot listen on {path}: {exc.strerror}") from None
        return
    except OSError as exc:
        raise StartupError(f"cannot listen on {path}: {exc.strerror}") from None
    finally:
        probe.close()
    raise StartupError(f"another trackerd is already listening on {path}")


def bind_unix_socket(
    path: Path, settings: SocketFileSettings = SocketFileSettings()
) -> socket.socket:
    """A listening AF_UNIX stream socket at path, with its owner, group and mode.

    The file is made with no permissions at all (by the umask), given to its owner
    and group, and only then opened to its mode: at no moment can anyone connect
    whom the settings do not let in.
    """
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise StartupError(
            f"socket path {path} is {len(os.fsencode(path))} bytes; Unix sockets allow "
            f"{MAX_SOCKET_PATH}: pass a shorter --socket or --runtime-dir"
        )
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The daemon is still single-threaded whenever it binds: the umask is safe to touch.
    old_umask = os.umask(0o777)
    try:
        sock.bind(os.fspath(path))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"{path} is in use") from None
        raise StartupError(f"cannot listen on {path}: {exc.strerror}") from None
    finally:
        os.umask(old_umask)
    try:
        _set_owner_and_mode(path, settings)
        sock.listen(socket.SOMAXCONN)
    except BaseException:
        sock.close()
        path.unlink(missing_ok=True)
        raise
    sock.setblocking(False)
    return sock


def _set_owner_and_mode(path: Path, settings: SocketFileSettings) -> None:
    try:
        if settings.owner is not None or settings.group is not None:
            os.chown(
                path,
                -1 if settings.owner is None else settings.owner,
                -1 if settings.group is None else settings.group,
            )
    except OSError as exc:
        parts = [f"user {settings.owner}"] if settings.owner is not None else []
        parts += [f"group {settings.group}"] if settings.group is not None else []
        if exc.errno != errno.EPERM:
            hint = exc.strerror
        elif settings.owner is not None and os.geteuid() != 0:
            hint = "only root can give a socket to another user (drop the -owner option)"
        else:
            hint = "the group must be one of trackerd's own, unless trackerd runs as root"
        raise StartupError(f"cannot give socket {path} to {' and '.join(parts)}: {hint}") from None
    try:
        os.chmod(path, settings.mode)
    except OSError as exc:
        raise StartupError(f"cannot set the mode of socket {path}: {exc.strerror}") from None


def adopt_listening_socket(fd: int) -> socket.socket:
    """Wrap a listening socket passed by systemd; refuse anything else clearly."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise StartupError(f"passed fd {fd} is not a socket: {exc.strerror}") from None
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise StartupError(f"passed fd {fd} is not a Unix stream socket (use ListenStream=/path)")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise StartupError(f"passed fd {fd} is not listening (Accept=no is needed)")
    sock.setblocking(False)
    return sock


def socket_file_identity(path: Path) -> tuple[int, int]:
    info = os.stat(path)
    return (info.st_dev, info.st_ino)


def remove_socket_file(path: Path, identity: tuple[int, int]) -> None:
    """Unlink our socket file at exit, unless another process has replaced it since."""
    with contextlib.suppress(OSError):
        if socket_file_identity(path) == identity:
            path.unlink()


@dataclass
class OpenSocket:
    """A listening socket, and its file when the daemon bound it itself."""

    sock: socket.socket
    where: str
    #: Set when we bound the socket file ourselves: then it is ours to remove.
    path: Path | None = None
    identity: tuple[int, int] | None = None

    #: How to make the file again (see upkeep.py).
    settings: SocketFileSettings = SocketFileSettings()

    @classmethod
    def bind(cls, path: Path, settings: SocketFileSettings = SocketFileSettings()) -> OpenSocket:
        sock = bind_unix_socket(path, settings)
        return cls(sock, str(path), path, socket_file_identity(path), settings)

    def file_state(self) -> Literal["ours", "missing", "replaced"]:
        """ "ours" while our socket file is at its path, else "missing" or "replaced"."""
        assert self.path is not None and self.identity is not None
        try:
            return "ours" if socket_file_identity(self.path) == self.identity else "replaced"
        except FileNotFoundError:
            return "missing"
        except OSError:
            return "replaced"  # not ours to judge: leave it alone

    def close(self) -> None:
        if self.path is not None and self.identity is not None:
            remove_socket_file(self.path, self.identity)
        self.sock.close()
