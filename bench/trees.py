"""Another checkout of the project run beside this one, and either one's C or pure-Python
path: the one place that says how a benchmark's process runs a given tree's code.

A tree is a directory holding trackerd/ and client/servertracker/: a git checkout,
or ``git archive REV | tar -x -C DIR``, with or without its own C extension built
in place (``make -C DIR``: making DIR's own .venv, pip builds the extension in
DIR, as README's ``make`` does; that .venv is not used here, and the extension
fits this Python if DIR's make used the same python3). A process runs that tree's
code when PYTHONPATH is ``DIR:DIR/client`` (those entries come before the
editable install's) and Python runs with -P. Without -P, ``python -m trackerd`` or
``python -c`` puts the current directory first on sys.path, and a checkout there
(this one, say) would be imported instead: an A/B run that measures one tree twice.
Forked workers import nothing anew, so a tree's workers are forked from a process
started this way (TreeProcess), never from the benchmark's own process.

The path: a tree's extension modules run where built and imported, unless the
environment forces the pure-Python fallback (PURE_PYTHON_VARIABLE; the daemon
and the library both read it). Which path a process really ran is not assumed:
describe() imports the daemon's and the library's modules in a process started
as the benchmark's are, and lists the extension modules they loaded from the tree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from servertracker.c_build import stale_modules

#: This checkout: the one whose bench/ runs, and whose code runs unless told otherwise.
THIS_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = THIS_ROOT / "bench"
#: The environment variable that forces the pure-Python path (servertracker/accel.py);
#: a tree without a C extension ignores it.
PURE_PYTHON_VARIABLE = "SERVERTRACKER_PURE_PYTHON"
#: The path column's words.
C_PATH = "C"
PURE_PATH = "pure Python"


@dataclass(frozen=True)
class Tree:
    """A checkout's code on one path: its own C extension (where built) or forced pure."""

    #: Who it is in a row's name: "" for this tree, "baseline" for --baseline's.
    label: str
    root: Path
    pure: bool = False

    def python_path(self) -> str:
        return f"{self.root}:{self.root / 'client'}"

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a process that runs this tree's code on this path."""
        env = dict(os.environ if base is None else base)
        env["PYTHONPATH"] = self.python_path()
        if self.pure:
            env[PURE_PYTHON_VARIABLE] = "1"
        else:
            env.pop(PURE_PYTHON_VARIABLE, None)
        return env

    def command(self, *args: str) -> list[str]:
        """A command line running ``python -P ARGS`` with this tree's code, for a
        Popen that takes no env (BenchDaemon's command): through env(1)."""
        unset = [] if self.pure else ["-u", PURE_PYTHON_VARIABLE]
        pure = [f"{PURE_PYTHON_VARIABLE}=1"] if self.pure else []
        return [
            "env",
            *unset,
            f"PYTHONPATH={self.python_path()}",
            *pure,
            sys.executable,
            "-P",
            *args,
        ]

    def trackerd_command(self) -> list[str]:
        return self.command("-m", "trackerd")

    def name(self) -> str:
        """The suffix a row's name carries: "", " (baseline)", " (pure Python)"..."""
        words = [w for w in (self.label, PURE_PATH if self.pure else "") if w]
        return f" ({', '.join(words)})" if words else ""


def this_tree(pure: bool = False) -> Tree:
    return Tree("", THIS_ROOT, pure)


def baseline_tree(root: Path, pure: bool = False) -> Tree:
    """--baseline DIR's tree; a clear error if DIR does not hold one."""
    root = root.resolve()
    missing = [
        p
        for p in ("trackerd/__init__.py", "client/servertracker/__init__.py")
        if not (root / p).is_file()
    ]
    if missing:
        raise SystemExit(
            f"--baseline {root}: not a checkout of this project (no {', '.join(missing)}); "
            "make one with: git -C REPO archive REV | tar -x -C DIR"
        )
    refuse_stale(root)
    missing = unbuilt(root)
    if missing:
        print(
            f"warning: --baseline {root} has C sources with no extension module built "
            f"({', '.join(missing)}): its rows run that code in pure Python, not C. "
            f"Build it first: make -C {root}",
            file=sys.stderr,
            flush=True,
        )
    return Tree("baseline", root, pure)


def refuse_stale(root: Path) -> None:
    """SystemExit, saying which and how to rebuild, where one of root's extension
    modules is older than its C sources or headers (setup.py's lists; c_build):
    its figures would be the old C code's. The one check every benchmark makes."""
    stale = stale_modules(root)
    if stale:
        older = ", ".join(f"{name} (older than {source})" for name, source in stale.items())
        raise SystemExit(
            f"bench: {root}'s C extension is stale: {older}; its figures would be those of "
            f"the C code of its last build. Rebuild it first: make -C {root} (or, in its "
            "checkout, .venv/bin/pip install -e . --no-deps)"
        )


def unbuilt(root: Path) -> list[str]:
    """The tree's C sources (the daemon's and the library's) with no extension module
    built beside them (``NAME.c`` -> ``NAME.*.so`` or ``NAME.so``): a checkout or
    ``git archive`` not yet made. A tree without C sources has nothing to build."""
    sources = sorted([*root.glob("trackerd/**/*.c"), *root.glob("client/servertracker/**/*.c")])
    return [
        str(source.relative_to(root))
        for source in sources
        if not any(source.parent.glob(f"{source.stem}.*so"))
        and not source.with_suffix(".so").exists()
    ]


@dataclass(frozen=True)
class Description:
    """What a tree's processes really import: for the output's header and its rows."""

    trackerd: str
    servertracker: str
    #: The extension modules the daemon's and the library's imports loaded from the tree.
    extensions: tuple[str, ...]
    #: The git commit (short, "+ changes" if the work tree differs) or "not a git checkout".
    revision: str

    @property
    def path(self) -> str:
        return C_PATH if self.extensions else PURE_PATH


_PROBE = """
import importlib, json, sys
for name in ("trackerd.main", "servertracker", "servertracker.recorder",
             "servertracker.batch_encoder"):
    try:
        importlib.import_module(name)
    except ImportError:
        pass
import servertracker, trackerd
# The tree's own packages only (its .venv may sit inside it too).
roots = (sys.argv[1] + "/trackerd/", sys.argv[1] + "/client/")
loaded = sorted(name for name, module in list(sys.modules.items())
                if (getattr(module, "__file__", None) or "").startswith(roots)
                and (module.__file__ or "").endswith(".so"))
print(json.dumps([trackerd.__file__, servertracker.__file__, loaded]))
"""


def describe(tree: Tree) -> Description:
    """Which files and which path a process started with tree.environment() runs."""
    out = subprocess.run(
        [sys.executable, "-P", "-c", _PROBE, str(tree.root)],
        env=tree.environment(),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    trackerd, servertracker, loaded = json.loads(out)
    for file in (trackerd, servertracker):
        if not Path(file).resolve().is_relative_to(tree.root):
            raise RuntimeError(f"a process meant to run {tree.root} imported {file}")
    return Description(trackerd, servertracker, tuple(loaded), revision(tree.root))


def extensions_mapped(pid: int) -> list[str]:
    """The project's extension modules (files under a trackerd/ or servertracker/
    directory) that process pid has mapped: what it really loaded, whatever its
    imports were meant to find."""
    files = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)  # address perms offset dev inode [path]
        file = fields[5].strip() if len(fields) == 6 else ""
        if file.endswith(".so") and ("/trackerd/" in file or "/servertracker/" in file):
            files.add(file)
    return sorted(files)


def check_ran(
    what: str,
    tree: Tree,
    about: Description,
    loaded: Sequence[str],
    packages: tuple[str, ...] = (),
) -> None:
    """Fail at once if processes ran other code than their row says: ``loaded``
    (their extensions_mapped()) holds a file from another tree, or any on the
    pure-Python path, or (on the C path) lacks one of the tree's extension modules
    (``about.extensions``) of ``packages`` ("trackerd.": a daemon's), which they
    were meant to run. The one check bench.compare, policy_cost and record_cost share."""
    alien = [file for file in loaded if not Path(file).is_relative_to(tree.root)]
    missing = []
    if about.path == C_PATH:
        # A module's file: its dotted name as a path under the tree (servertracker
        # under client/), then the interpreter's suffix (".cpython-311-...so").
        names = {
            Path(file).relative_to(tree.root).as_posix().removeprefix("client/")
            for file in loaded
            if file not in alien
        }
        missing = [
            module
            for module in about.extensions
            if module.startswith(packages)
            and not any(name.startswith(module.replace(".", "/") + ".") for name in names)
        ]
    if alien or (loaded and about.path != C_PATH) or missing:
        lacking = f" and not {', '.join(missing)}" if missing else ""
        raise RuntimeError(
            f"{what}: its processes loaded {', '.join(loaded) or 'no extension module'}"
            f"{lacking}, but the row is {tree.root}'s {about.path} path"
        )


def revision(root: Path) -> str:
    if not (root / ".git").exists():
        return "not a git checkout"
    git = ["git", "-C", str(root)]
    rev = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    changed = subprocess.run(
        [*git, "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return f"{rev or '?'}{' + uncommitted changes' if changed else ''}"


#: The start of a child's ``python -c`` code (argv[1]: this tree's bench/): this tree's
#: bench/ is the "bench" package, whatever PYTHONPATH says (a baseline's bench/ may lack
#: what the caller needs), while servertracker and trackerd come from PYTHONPATH.
BENCH_PACKAGE = """
import sys, types
bench = types.ModuleType("bench")
bench.__path__ = [sys.argv[1]]
sys.modules["bench"] = bench
"""

# A TreeProcess's code: module.function answers each JSON line on stdin with a JSON
# line on the fd given (stdout is left to the daemons and workers the child starts,
# whose output goes to the terminal).
_SERVE = (
    BENCH_PACKAGE
    + """
import importlib, json, os, traceback
function = getattr(importlib.import_module(sys.argv[2]), sys.argv[3])
out = os.fdopen(int(sys.argv[4]), "w")
for line in sys.stdin:
    try:
        reply = {"ok": function(json.loads(line))}
    except Exception:
        reply = {"error": traceback.format_exc()}
    out.write(json.dumps(reply) + "\\n")
    out.flush()
"""
)


class TreeProcess:
    """A long-lived child running a tree's code, answering requests with this tree's
    bench function ``module.function(request) -> reply`` (both JSON)."""

    def __init__(self, tree: Tree, module: str, function: str) -> None:
        self.tree = tree
        read, write = os.pipe()
        self.process = subprocess.Popen(
            [sys.executable, "-P", "-c", _SERVE, str(BENCH_DIR), module, function, str(write)],
            env=tree.environment(),
            stdin=subprocess.PIPE,
            pass_fds=(write,),
            text=True,
        )
        os.close(write)
        self.replies: IO[str] = os.fdopen(read)

    def call(self, request: dict[str, Any]) -> Any:
        self.send(request)
        return self.receive()

    def send(self, request: dict[str, Any]) -> None:
        """A request, its reply to be read by receive() (meanwhile the child works)."""
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write(json.dumps(request) + "\n")
        stdin.flush()

    def receive(self) -> Any:
        """The reply to the oldest request sent."""
        line = self.replies.readline()
        if not line:
            code = self.process.wait(30)
            raise RuntimeError(f"the bench process of {self.tree.root} exited ({code})")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"in the bench process of {self.tree.root}:\n{reply['error']}")
        return reply["ok"]

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.replies.close()
