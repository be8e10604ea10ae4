"""Runtime directory and socket resolution: one function, one precedence order."""

from __future__ import annotations

from pathlib import Path

from servertracker.paths import default_private_dir, resolve_runtime_dir, resolve_socket_path


def test_precedence_of_runtime_dir() -> None:
    env = {
        "TRACKERD_RUNTIME_DIR": "/a",
        "RUNTIME_DIRECTORY": "/b:/c",
        "XDG_RUNTIME_DIR": "/run/user/1000",
    }
    assert resolve_runtime_dir("/x", env) == Path("/x")
    assert resolve_runtime_dir(None, env) == Path("/a")
    del env["TRACKERD_RUNTIME_DIR"]
    assert resolve_runtime_dir(None, env) == Path("/b")
    del env["RUNTIME_DIRECTORY"]
    assert resolve_runtime_dir(None, env) == Path("/run/user/1000/trackerd")
    assert resolve_runtime_dir(None, {}) == default_private_dir()
    assert str(default_private_dir()).startswith("/tmp/trackerd-")


def test_socket_path() -> None:
    assert resolve_socket_path("/s.sock", "/rt", {"TRACKERD_SOCKET": "/e.sock"}) == Path("/s.sock")
    assert resolve_socket_path(None, "/rt", {"TRACKERD_SOCKET": "/e.sock"}) == Path("/e.sock")
    assert resolve_socket_path(None, "/rt", {}) == Path("/rt/trackerd.sock")
    assert resolve_socket_path(None, None, {"TRACKERD_RUNTIME_DIR": "/q"}) == Path(
        "/q/trackerd.sock"
    )
