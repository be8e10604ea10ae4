"""The optional C extension and its pure-Python fallback: which one runs, and that
they count alike (the same records, the same counts, tallies and digests).

raw_cache.py's two caches are compared value by value in test_raw_cache.py; here
the tracker built on each is compared on the same records, hostile ones among them.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servertracker import accel
from servertracker.sender_split import split_sender
from tests.conftest import Daemon
from trackerd.core import raw_cache
from trackerd.core.raw_cache import CRawCache, RawCache
from trackerd.core.tracker import Tracker
from trackerd.core.windows import parse_windows

TRACKERD = Path(sys.executable).parent / "trackerd"
ROOT = Path(__file__).resolve().parent.parent
SALT = b"s" * 32
needs_c = pytest.mark.skipif(
    raw_cache._ccolumns is None, reason="the C extension is not built, or turned off"
)


def compiler_and_headers() -> bool:
    """Whether this machine could build the extension (as pip would)."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    return shutil.which(compiler) is not None and headers.exists()


def test_the_extension_is_built_where_a_compiler_is() -> None:
    """CI has gcc and the headers: there the C path must be built, or every test
    of it would be skipped and prove nothing."""
    if not compiler_and_headers():
        pytest.skip("no C compiler or Python headers here: the pure-Python path runs")
    importlib.import_module(raw_cache.EXTENSION)


def built(modules: Iterable[str]) -> bool:
    """Whether every one of ``modules`` is built in this tree: found, not imported,
    so whatever this test process's own SERVERTRACKER_PURE_PYTHON says."""
    return all(importlib.util.find_spec(name) is not None for name in modules)


def trackerd_version(env: dict[str, str]) -> str:
    result = subprocess.run(
        [str(TRACKERD), "--version"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("trackerd ")
    return result.stdout


@pytest.mark.parametrize(
    ("value", "path"),
    [
        (None, "C extension"),
        ("1", "pure Python: SERVERTRACKER_PURE_PYTHON=1 is set"),
        ("false", "pure Python: SERVERTRACKER_PURE_PYTHON=false is set"),
    ],
)
def test_trackerd_version_says_which_path_runs(value: str | None, path: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != accel.PURE_PYTHON_VARIABLE}
    if value is not None:
        env[accel.PURE_PYTHON_VARIABLE] = value
    elif not built(accel.DAEMON_MODULES):
        path = "pure Python: the C extension is not built; " + accel.BUILD_HINT
    assert f"hot path: {path}" in trackerd_version(env)


#: sitecustomize.py for a process whose import of one module fails as if it were
#: not built (a PYTHONPATH shadow: the real trackerd, one module hidden).
_HIDE = """
import importlib.abc, sys

class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == {name!r}:
            raise ImportError(name)
        return None

sys.meta_path.insert(0, Hide())
"""


@pytest.mark.skipif(not built(accel.DAEMON_MODULES), reason="the C extension is not built")
def test_trackerd_version_names_a_missing_module(tmp_path: Path) -> None:
    """The policy loop's module missing and the rest built: not "C extension"."""
    (tmp_path / "sitecustomize.py").write_text(_HIDE.format(name="trackerd.edges._cpolicy_loop"))
    env = {k: v for k, v in os.environ.items() if k != accel.PURE_PYTHON_VARIABLE}
    env["PYTHONPATH"] = str(tmp_path)
    out = trackerd_version(env)
    assert "hot path: partly pure Python: policy loop (not built); " + accel.BUILD_HINT in out
    assert "columns scan" not in out and "C extension;" not in out
    # A compiler and headers may be there and the build fail all the same (make's
    # install is quiet): the hint says how to see why.
    assert "if they are installed, `.venv/bin/pip install -v -e .` shows why" in out


def setup_py_lists() -> dict[str, dict[str, list[str]]]:
    """setup.py's module-level dict literals (C_EXTENSIONS, DEPENDS), read, not run."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    return {
        node.target.id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value
    }


def test_the_module_lists_are_setup_pys() -> None:
    """accel's lists of the daemon's and the library's modules are setup.py's."""
    listed = set(setup_py_lists()["C_EXTENSIONS"])
    assert listed == set(accel.DAEMON_MODULES) | set(accel.LIBRARY_MODULES)


def test_every_included_header_is_a_dependency() -> None:
    """So that pip rebuilds a module after a header edit (pip wheel, pip install .)."""
    lists = setup_py_lists()
    for name, sources in lists["C_EXTENSIONS"].items():
        included = set()
        for source in sources:
            text = (ROOT / source).read_text()
            for header in re.findall(r'^#include "([^"]+)"', text, re.MULTILINE):
                path = (ROOT / source).parent / header
                included.add(os.path.relpath(path.resolve(), ROOT))
        assert included == set(lists.get("DEPENDS", {}).get(name, [])), name


def test_trackerctl_version_says_the_librarys_path() -> None:
    env = dict(os.environ, **{accel.PURE_PYTHON_VARIABLE: "yes"})
    result = subprocess.run(
        [str(TRACKERD.parent / "trackerctl"), "--version"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "servertracker library: pure Python: SERVERTRACKER_PURE_PYTHON=yes is set" in (
        result.stdout
    )


@pytest.mark.parametrize(("value", "pure"), [("", False), ("0", False), ("1", True), ("yes", True)])
def test_the_variable_forces_the_pure_python_path(value: str, pure: bool) -> None:
    code = (
        "from trackerd.core import raw_cache\n"
        "print(raw_cache._ccolumns is None,"
        " type(raw_cache.new_raw_cache(64)).__name__)\n"
    )
    env = dict(os.environ, **{accel.PURE_PYTHON_VARIABLE: value})
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    built = raw_cache._ccolumns is not None or value not in ("", "0")
    if not built:
        pytest.skip("the C extension is not built")
    assert result.stdout.split() == (["True", "RawCache"] if pure else ["False", "CRawCache"])


def test_the_daemon_logs_which_path_runs(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon(env=dict(os.environ, **{accel.PURE_PYTHON_VARIABLE: "1"}))
    daemon.start()
    try:
        assert "hot path: pure Python: SERVERTRACKER_PURE_PYTHON=1 is set" in daemon.log()
    finally:
        daemon.stop()


def both_trackers(**options: Any) -> tuple[Tracker, Tracker]:
    """(C, Python): two trackers of one salt, the second on the pure-Python caches
    and first sightings (what SERVERTRACKER_PURE_PYTHON=1 gives a process)."""
    # Small raw-value caches: a tracker is made per example (forgetting changes no count).
    options.setdefault("raw_cache_slots", 1 << 12)
    c_tracker = Tracker(salt=SALT, **options)
    module = raw_cache._ccolumns
    raw_cache._ccolumns = None
    try:
        python_tracker = Tracker(salt=SALT, c_first_sightings=False, **options)
    finally:
        raw_cache._ccolumns = module
    assert isinstance(c_tracker._sender_cache, CRawCache)
    assert isinstance(python_tracker._sender_cache, RawCache)
    return c_tracker, python_tracker


def counted(tracker: Tracker) -> tuple[object, ...]:
    """Everything a status reports, and each category's digests as its table holds
    them (a cache miss may queue a digest again, and the counter keeps it once; C
    decides a sender the domain-part cache would have known, and queues it again)."""
    status = tracker.status()
    digests = tuple(
        frozenset(counter._table.values().tolist()) if counter._table is not None else None
        for counter in tracker.counters
    )
    return (
        status.records,
        status.rejected_conn_ips,
        status.rejected_senders,
        status.unique_conn_ips,
        status.unique_domains,
        status.unique_ip_servers,
        digests,
    )


# Values as workers send them, and as a hostile peer could: the usual sender forms
# over few domains (so that repeats hit the caches), IP forms, space, brackets,
# several "@", non-ASCII (Latin-1, BMP, astral), lone surrogates, over-long ones.
_DOMAINS = [
    "example.com",
    "Example.COM",
    "b\u00fccher.de",
    "xn--bcher-kva.de",
    "a_b.example",
    "1.2.3.4",
    "[1.2.3.4]",
    "[IPv6:2001:db8::1]",
    "exa mple.com",
    "",
    "x" * 300,
]
_LOCALS = ["u", "user", "a.b", "\u00e9", "\ud800", "@r:u", "", "q@q"]
_ODD = [
    "<>",
    "<",
    ">",
    "@",
    "u@",
    "@d",
    "  ",
    " <u@example.com> ",
    "<u@example.com",
    "u@example.com>",
    "\t",
    "\x1c",
    "\u3000example.com",
    "\U0001f600.example",
    "\ud800@example.com",
    "a" * 600,
    "<" + "a" * 511 + ">",
    "a" * 512,
]


@st.composite
def senders(draw: st.DrawFn) -> str | None:
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return None
    if kind == 1:
        return draw(st.sampled_from(_ODD))
    if kind == 2:
        return draw(st.text(max_size=8))
    local, domain = draw(st.sampled_from(_LOCALS)), draw(st.sampled_from(_DOMAINS))
    form = draw(st.sampled_from(["{d}", "{l}@{d}", "<{l}@{d}>", "<{d}>"]))
    return form.format(l=local, d=domain)


conn_ips = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "192.0.2.1",
            "192.0.2.2",
            "[192.0.2.1]",
            "::ffff:192.0.2.1",
            "2001:db8::1",
            "fe80::1%eth0",
            "bogus",
            "",
            " ",
            "\ud800",
            "1" * 600,
        ]
    ),
    st.text(max_size=6),
)
pairs = st.lists(st.tuples(conn_ips, senders()), min_size=1, max_size=40)


@needs_c
@settings(max_examples=80, derandomize=True, deadline=None)
@given(st.lists(pairs, min_size=1, max_size=6))
def test_c_and_python_count_alike(batches: list[list[tuple[str | None, str | None]]]) -> None:
    """The same batches (a few pairs a pair at a time, more as arrays): the same
    records, rejected tallies, distinct counts and digests."""
    c_tracker, python_tracker = both_trackers()
    for batch in batches:
        for tracker in (c_tracker, python_tracker):
            tracker.record_pairs(batch)
        assert counted(c_tracker) == counted(python_tracker)


@needs_c
def test_repeats_count_alike_with_windows_and_in_slices() -> None:
    """A realistic stream, counted under deadlines in slices (as the server does)."""
    trackers = both_trackers(windows=parse_windows("1h,24h"))
    pairs = [(f"10.0.{i % 7}.{i % 251}", f"<u{i}@d{i % 97}.example>") for i in range(5000)]
    pairs += [("bogus", "u@"), (None, "<>"), ("192.0.2.1", "x@[1.2.3.4]")] * 50
    for tracker in trackers:
        ips, senders_ = [p[0] for p in pairs], [p[1] for p in pairs]
        start = 0
        while start < len(ips):
            start += tracker.record_columns(
                ips[start : start + 700], senders_[start : start + 700], deadline=0.0
            )
    c_counts, python_counts = (counted(tracker) for tracker in trackers)
    assert c_counts == python_counts
    assert trackers[0].window_counts() == trackers[1].window_counts()
    assert c_counts[:6] == (5150, 50, 50, 7 * 251 + 1, 97, 1)


@needs_c
def test_a_usual_sender_is_keyed_by_its_domain_part() -> None:
    """So every address of a domain is one entry; and only where split_sender()
    gives that part (any other value keys by its whole text)."""
    cache = CRawCache(64, split=True)
    same = ["example.com", "u@example.com", "<u@example.com>", "<v@example.com>", "<example.com>"]
    assert {cache.key(value) for value in same} == {cache.key("example.com")}
    assert all(split_sender(value) == "example.com" for value in same)
    for other in [
        " u@example.com",
        "<u@example.com",
        "u@example.com>",
        "@u@example.com",
        "\u00e9@example.com",
        "u@@example.com",
        "EXAMPLE.com",
        "a" * 600 + "@example.com",
    ]:
        assert cache.key(other) != cache.key("example.com"), other
    plain = CRawCache(64)  # the connection IPs': whole texts only
    assert plain.key("u@example.com") != plain.key("example.com")


@needs_c
@settings(max_examples=150, derandomize=True, deadline=None)
@given(st.lists(senders(), min_size=2, max_size=30))
def test_values_of_one_key_split_alike(values: list[str | None]) -> None:
    """The C keys never join two senders that split_sender() tells apart."""
    cache = CRawCache(64, split=True)
    by_key: dict[int, object] = {}
    for value in values:
        assert by_key.setdefault(cache.key(value), split_sender(value)) == split_sender(value)


@needs_c
def test_hostile_values_and_types() -> None:
    """Huge, empty, surrogates, every kind of str; anything else is a TypeError and
    nothing is entered."""
    cache = CRawCache(64, split=True)
    huge = "x" * (1 << 20)
    values: list[str | None] = [huge, "", None, "\ud800", "\U0001f600", "\u00e9", "\u0100"]
    keys, codes = cache.look_up(values)
    assert len(keys) == len(values) and set(codes.tolist()) == {0}
    assert len(set(keys.tolist())) == len(values)
    # Equal bytes in different kinds are different values.
    assert cache.key("\u6261") != cache.key("ab")
    for bad in ([1], [b"x"], ["a", 2.0], [("a",)]):
        with pytest.raises(TypeError):
            cache.look_up(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        cache.look_up(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        cache.remember([1, 2], [1])
    with pytest.raises(ValueError):
        cache.remember([1], [0])  # MISS is no code to remember
    assert len(cache) == 0
