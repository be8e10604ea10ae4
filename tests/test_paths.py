"""Runtime directory and socket resolution: one function, one precedence order."""

from __future__ import annotations

from pathlib import Path

import pytest

from servertracker import paths
from servertracker.paths import default_private_dir, resolve_runtime_dir, resolve_socket_path


@pytest.fixture(autouse=True)
def no_system_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(paths, "SYSTEM_RUNTIME_DIR", tmp_path / "not-installed")


def test_a_system_install_is_found_before_per_user_defaults(tmp_path: Path) -> None:
    paths.SYSTEM_RUNTIME_DIR = tmp_path  # exists; the fixture restores it
    env = {"XDG_RUNTIME_DIR": "/run/user/1000"}
    assert resolve_runtime_dir(None, env) == tmp_path
    assert resolve_runtime_dir(None, {"RUNTIME_DIRECTORY": "/b", **env}) == Path("/b")
    assert resolve_socket_path(None, None, env) == tmp_path / "trackerd.sock"


def test_precedence_of_runtime_dir() -> None:
    env = {
        "TRACKERD_RUNTIME_DIR": "/a",
        "RUNTIME_DIRECTORY": "/b:/c",
        "XDG_RUNTIME_DIR": "/run/user/1000",
    }
    assert resolve_runtime_dir("/x", env, euid=1000) == Path("/x")
    assert resolve_runtime_dir(None, env, euid=1000) == Path("/a")
    del env["TRACKERD_RUNTIME_DIR"]
    assert resolve_runtime_dir(None, env, euid=1000) == Path("/b")
    del env["RUNTIME_DIRECTORY"]
    assert resolve_runtime_dir(None, env, euid=1000) == Path("/run/user/1000/trackerd")
    assert resolve_runtime_dir(None, {}, euid=1000) == default_private_dir()
    assert str(default_private_dir()).startswith("/tmp/trackerd-")


def test_root_gets_the_system_runtime_dir_even_before_it_exists() -> None:
    assert not paths.SYSTEM_RUNTIME_DIR.exists()
    env = {"XDG_RUNTIME_DIR": "/run/user/0"}
    assert resolve_runtime_dir(None, env, euid=0) == paths.SYSTEM_RUNTIME_DIR
    assert resolve_runtime_dir(None, {"RUNTIME_DIRECTORY": "/b"}, euid=0) == Path("/b")
    assert resolve_runtime_dir("/x", env, euid=0) == Path("/x")


def test_socket_path() -> None:
    assert resolve_socket_path("/s.sock", "/rt", {"TRACKERD_SOCKET": "/e.sock"}) == Path("/s.sock")
    assert resolve_socket_path(None, "/rt", {"TRACKERD_SOCKET": "/e.sock"}) == Path("/e.sock")
    assert resolve_socket_path(None, "/rt", {}) == Path("/rt/trackerd.sock")
    assert resolve_socket_path(None, None, {"TRACKERD_RUNTIME_DIR": "/q"}) == Path(
        "/q/trackerd.sock"
    )


def test_why_says_how_the_runtime_dir_was_chosen(tmp_path: Path) -> None:
    env = {"XDG_RUNTIME_DIR": "/run/user/1000"}
    assert paths.runtime_dir_why("/x", env, euid=1000) == ""
    assert paths.runtime_dir_why(None, env, euid=1000) == ""  # this user's own
    assert "$TRACKERD_RUNTIME_DIR" in paths.runtime_dir_why(
        None, {"TRACKERD_RUNTIME_DIR": "/a"}, euid=1000
    )
    assert "RuntimeDirectory=" in paths.runtime_dir_why(None, {"RUNTIME_DIRECTORY": "/b"}, euid=0)
    paths.SYSTEM_RUNTIME_DIR = tmp_path  # exists, as after root's daemon ran once
    why = paths.runtime_dir_why(None, env, euid=1000)
    assert why == (
        "(chosen because it exists: the system install's directory; give --runtime-dir or "
        "set $TRACKERD_RUNTIME_DIR to pick another)"
    )
    assert paths.resolve_paths(None, "/x", env).why == ""
