"""The repository's own text files: what no file on main may contain."""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Directories that are not the project's own text (tools' caches, the venv, and the
#: build's output: copies of the sources that a wheel build, such as test_real_systemd's
#: in another pytest-xdist worker, writes and removes while this walks).
SKIPPED = {
    ".git", ".venv", ".mypy_cache", ".ruff_cache", ".pytest_cache", "__pycache__",
    "build", "servertracker.egg-info",
}  # fmt: skip
TEXT_SUFFIXES = {".md", ".py", ".toml", ".cfg", ".ini", ".service", ".socket", ".conf", ".txt"}
#: A merge that was committed unresolved leaves these lines behind.
CONFLICT_MARKER = re.compile(r"^(<{7} |={7}$|>{7} )", re.MULTILINE)


def _text_files() -> list[Path]:
    found = []
    for directory, subdirs, names in os.walk(ROOT):
        subdirs[:] = [name for name in subdirs if name not in SKIPPED]  # not walked at all
        for name in names:
            path = Path(directory, name)
            if path.suffix in TEXT_SUFFIXES or name == "Makefile":
                found.append(path)
    return found


def test_no_file_holds_merge_conflict_markers() -> None:
    files = _text_files()
    assert any(path.name == "README.md" for path in files)  # the walk found the docs
    marked = [
        str(path.relative_to(ROOT))
        for path in files
        if CONFLICT_MARKER.search(path.read_text(encoding="utf-8", errors="replace"))
    ]
    assert marked == [], f"unresolved merge conflict markers in {marked}"
