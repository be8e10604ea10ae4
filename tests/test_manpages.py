"""The man pages: generated from the option definitions, committed, installed, rendered."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer.main

from servertracker import accel
from servertracker.cli import app
from trackerd.options import build_parser

ROOT = Path(__file__).resolve().parent.parent
PAGES = ("man8/trackerd.8", "man1/trackerctl.1")


def test_the_committed_pages_are_what_the_options_generate(tmp_path: Path) -> None:
    # Another environment and terminal width must not change a byte.
    env = dict(os.environ, COLUMNS="33", TRACKERD_LOG_LEVEL="debug", LANG="C")
    env["TRACKERD_POSTFIX_POLICY_SOCKET"] = "/elsewhere"
    subprocess.run(
        [sys.executable, "-m", "tools.manpages", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=60,
    )
    for name in PAGES:
        committed = (ROOT / "man" / name).read_text()
        assert (tmp_path / name).read_text() == committed, (
            f"man/{name} is stale: run `python -m tools.manpages` and commit it"
        )


def test_every_option_is_in_its_page() -> None:
    trackerd = (ROOT / "man" / "man8" / "trackerd.8").read_text()
    for action in build_parser()._actions:
        for flag in action.option_strings:
            assert "\\fB" + flag.replace("-", "\\-") + "\\fR" in trackerd, flag
    trackerctl = (ROOT / "man" / "man1" / "trackerctl.1").read_text()
    group = typer.main.get_command(app)
    commands: dict[str, Any] = {}
    pending = list(getattr(group, "commands", {}).items())
    while pending:  # a group's commands ("fleet push") each have their own section
        name, command = pending.pop()
        subcommands = getattr(command, "commands", {})
        pending += [(f"{name} {sub}", each) for sub, each in subcommands.items()]
        if not subcommands:
            commands[name] = command
    for command in [group, *commands.values()]:
        for param in command.params:
            if getattr(param, "hidden", False):
                continue
            for flag in param.opts if param.param_type_name == "option" else []:
                assert "\\fB" + flag.replace("-", "\\-") + "\\fR" in trackerctl, flag
    for name in commands:
        assert f'.SS "trackerctl {name} [OPTIONS]' in trackerctl


def test_both_pages_say_what_forces_pure_python() -> None:
    """Read by the daemon and the library whatever the options: in both ENVIRONMENT
    sections, with accel's own words."""
    for name in PAGES:
        page = (ROOT / "man" / name).read_text()
        environment = page.split(".SH ENVIRONMENT", 1)[1].split(".SH ", 1)[0]
        entry = f"\\fB{accel.PURE_PYTHON_VARIABLE}\\fR\n"
        assert entry in environment, name
        assert "it makes the daemon and the servertracker library run" in environment, name


@pytest.mark.skipif(shutil.which("groff") is None, reason="needs groff")
@pytest.mark.parametrize("name", PAGES)
def test_pages_render_without_warnings(name: str) -> None:
    result = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z", str(ROOT / "man" / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_the_wheel_installs_the_pages_and_the_units_point_to_them() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data_files = project["tool"]["setuptools"]["data-files"]
    installed = {f"{folder}/{Path(source).name}": source
                 for folder, sources in data_files.items() for source in sources}  # fmt: skip
    assert installed == {f"share/man/{page}": f"man/{page}" for page in PAGES}
    for unit in ("trackerd.service", "trackerd.socket", "trackerd-postfix.socket"):
        text = (ROOT / "systemd" / unit).read_text()
        documentation = [line for line in text.splitlines() if line.startswith("Documentation=")]
        assert documentation and "man:trackerd(8)" in documentation[0], unit
        assert "file://" not in documentation[0], unit  # nothing installs such a file
