"""bench.compare's options do what they promise: --baseline runs the other tree's daemon
and library, --forms and --competitors run a slice, a typo is a clear error.

Tiny record counts, one or two rounds: these check which code ran and which rows
came out, never how fast (benchmarks are not tests).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import bench.compare
from bench.compare import (
    FOOTNOTE,
    GO_ORIGINAL,
    HEADERS,
    SEED_DESIGN,
    WORKERS_ALONE,
    Entrant,
    check_path,
    results,
)
from bench.trees import PURE_PYTHON_VARIABLE, Description, Tree, describe, unbuilt
from bench.workload import (
    CONN_IPS,
    FORMS,
    PER_WORKER,
    SENDER_PERIOD,
    WORKERS,
    Run,
    conn_ip,
    distinct_counts,
    make_shares,
    sender,
    true_counts,
)
from servertracker import accel

ROOT = Path(__file__).parent.parent
THIS = Tree("", ROOT.resolve())


def compare(*args: str, results: Path, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    # Run from the checkout's root: where `python -m trackerd` without -P would import
    # this tree's trackerd, whatever PYTHONPATH says (the A/B trap --baseline avoids).
    return subprocess.run(
        [sys.executable, "-m", "bench.compare", "--rounds", "1", "--seed-records", "0",
         "--per-worker", "300", "--results", str(results), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def marked_copy(into: Path, marks: Path) -> Path:
    """A copy of this checkout's trackerd and servertracker whose imports note, in
    ``marks``, their file and the importing process's arguments: proof of which tree
    the daemon (``--runtime-dir ...``) and the bench process the workers are forked
    from (``bench.compare serve``) ran."""
    tree = into / "baseline"
    for package in ("trackerd", "client/servertracker"):
        shutil.copytree(ROOT / package, tree / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.so"))  # fmt: skip
        init = tree / package / "__init__.py"
        init.write_text(
            init.read_text()
            + f"\nwith open({str(marks)!r}, 'a') as _mark:\n"
            + "    import sys as _sys\n"
            + "    _mark.write(__file__ + ' ' + ' '.join(_sys.argv[1:]) + '\\n')\n"
        )
    return tree


def test_baseline_runs_the_other_trees_daemon_and_library(short_tmp: Path) -> None:
    marks = short_tmp / "marks"
    baseline = marked_copy(short_tmp, marks)
    result = compare("--competitors", "trackerd", "--forms", "domain", "--no-pure-python",
                     "--baseline", str(baseline), results=short_tmp / "out")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((short_tmp / "out" / "compare.json").read_text())["forms"]["domain"]
    ours, theirs = rows["trackerd"], rows["trackerd (baseline)"]
    assert ours["tree"] == str(ROOT.resolve())
    assert theirs["tree"] == str(baseline.resolve())
    assert theirs["tree_path"].startswith("baseline, ")
    assert len(ours["seconds"]) == len(theirs["seconds"]) == 1
    daemon = str(baseline / "trackerd" / "__init__.py")
    library = str(baseline / "client" / "servertracker" / "__init__.py")
    imports = marks.read_text().splitlines()
    # The baseline's daemon (one a round) was the baseline's trackerd, and the
    # process its workers were forked from imported the baseline's servertracker.
    daemons = [line for line in imports if line.startswith(daemon) and "--runtime-dir" in line]
    assert len(daemons) == 1, imports
    assert any(line.startswith(library) and "bench.compare serve" in line for line in imports)
    assert "trackerd (baseline)" in (short_tmp / "out" / "compare.md").read_text()


def test_forms_and_competitors_run_only_that_slice(short_tmp: Path) -> None:
    tmp = short_tmp
    result = compare("--competitors", "alone,interned", "--forms", "[ip]",
                     "--no-pure-python", results=tmp)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads((tmp / "compare.json").read_text())
    assert list(got["forms"]) == ["[ip]"]
    assert list(got["forms"]["[ip]"]) == ["trackerd interned", "workers alone (no recording)"]
    markdown = (tmp / "compare.md").read_text()
    assert "load average before" in markdown
    assert "| `[ip]` | trackerd interned | this, " in markdown
    # Both ratios, and the note saying which is the issue's metric, in both outputs.
    assert "| trackerd faster by | by total CPU |" in markdown
    assert FOOTNOTE in markdown
    assert "by total CPU" in result.stdout and FOOTNOTE in result.stdout


@pytest.mark.parametrize(
    ("option", "value"), [("--competitors", "trackerd,redsi"), ("--forms", "domain,ipv6")]
)
def test_an_unknown_name_is_a_clear_error(option: str, value: str, short_tmp: Path) -> None:
    tmp = short_tmp
    result = compare(option, value, results=tmp, timeout=60)
    assert result.returncode != 0
    assert f"{option}: unknown {value.split(',')[1]}; choose from" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp / "compare.json").exists()


def test_a_baseline_that_is_no_checkout_is_a_clear_error(short_tmp: Path) -> None:
    tmp = short_tmp
    result = compare("--baseline", str(tmp), results=tmp, timeout=60)
    assert result.returncode != 0
    assert "not a checkout of this project" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_baseline_with_c_sources_not_built_is_named_in_a_warning(short_tmp: Path) -> None:
    """Else its rows would quietly compare against its pure-Python path."""
    tree = short_tmp / "unbuilt"
    for name in ("trackerd/__init__.py", "client/servertracker/__init__.py"):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text("")
    (tree / "trackerd" / "core").mkdir()
    (tree / "trackerd" / "core" / "_cthing.c").write_text("")
    (tree / "client" / "servertracker" / "_cother.c").write_text("")
    (tree / "client" / "servertracker" / "_cother.cpython-311-x86_64-linux-gnu.so").write_text("")
    assert unbuilt(tree) == ["trackerd/core/_cthing.c"]
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from pathlib import Path; from bench.trees import "
         "baseline_tree; baseline_tree(Path(sys.argv[1]))", str(tree)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert f"--baseline {tree.resolve()} has C sources with no extension module" in result.stderr
    assert "trackerd/core/_cthing.c" in result.stderr and "_cother" not in result.stderr
    assert f"make -C {tree.resolve()}" in result.stderr
    (tree / "trackerd" / "core" / "_cthing.so").write_text("")
    assert unbuilt(tree) == []
    assert unbuilt(ROOT) == [] or not describe(THIS).extensions


def test_a_daemon_that_ran_other_code_than_its_row_says_stops_the_run() -> None:
    tree = Tree("", ROOT.resolve())
    mine = str(ROOT.resolve() / "trackerd" / "core" / "_c.so")
    c_path = Description("t", "s", ("trackerd.core._c",), "rev")
    pure = Description("t", "s", (), "rev")
    row = Entrant("trackerd", "trackerd", tree, "this, C")
    check_path(row, Run(1.0, 1.0, 1.0, [mine]), c_path)  # its own tree's, on the C path
    check_path(row, Run(1.0, 1.0, 1.0, []), pure)
    with pytest.raises(RuntimeError, match="but the row is"):
        check_path(row, Run(1.0, 1.0, 1.0, ["/elsewhere/trackerd/core/_c.so"]), c_path)
    with pytest.raises(RuntimeError, match="pure Python path"):
        check_path(row, Run(1.0, 1.0, 1.0, [mine]), pure)
    # A C row whose processes mapped none of its tree's extension modules ran Python.
    with pytest.raises(RuntimeError, match=r"and not trackerd\.core\._c, but the row is"):
        check_path(row, Run(1.0, 1.0, 1.0, []), c_path)
    # Redis's row requires no trackerd module (its workers' parent may map the library's).
    check_path(Entrant("redis (b) best use", "redis", tree, "-"), Run(1.0, 1.0, 1.0, []), c_path)


def test_the_pure_python_switch_is_the_librarys() -> None:
    assert PURE_PYTHON_VARIABLE == accel.PURE_PYTHON_VARIABLE


@pytest.mark.skipif(not describe(THIS).extensions, reason="the C extension is not built here")
def test_where_c_is_built_its_rows_run_c_and_the_fallback_rows_pure_python(
    short_tmp: Path,
) -> None:
    result = compare("--competitors", "trackerd", "--forms", "domain", results=short_tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((short_tmp / "compare.json").read_text())["forms"]["domain"]
    c_row, pure_row = rows["trackerd"], rows["trackerd (pure Python)"]
    assert c_row["tree_path"] == "this, C"
    assert pure_row["tree_path"] == "this, pure Python"
    # What the daemons really mapped: this tree's extension, and nothing on the fallback.
    assert c_row["daemon_extensions"]
    assert all(Path(f).is_relative_to(ROOT.resolve()) for f in c_row["daemon_extensions"])
    assert pure_row["daemon_extensions"] == []
    # And the library the workers ran: the same.
    if any(name.startswith("servertracker.") for name in describe(THIS).extensions):
        assert any("/servertracker/" in f for f in c_row["worker_extensions"])
    assert pure_row["worker_extensions"] == []


@pytest.mark.parametrize("form", FORMS)
def test_senders_repeat_with_the_period_true_counts_reads(form: str) -> None:
    # true_counts() reads one SENDER_PERIOD of senders and CONN_IPS addresses only.
    for r in range(0, 2 * SENDER_PERIOD, 997):
        assert sender(form, r + SENDER_PERIOD) == sender(form, r)
        assert sender(form, r + 5 * SENDER_PERIOD) == sender(form, r)
        assert conn_ip(r + CONN_IPS) == conn_ip(r)


def test_true_counts_are_those_of_every_record() -> None:
    per_worker = SENDER_PERIOD // WORKERS + 2_000  # past both periods
    assert true_counts("mix", per_worker) == distinct_counts(make_shares("mix", per_worker))


def test_the_cpu_ratio_column_is_the_rows_total_cpu_over_trackerds() -> None:
    # Time and CPU disagree on purpose: the CPU column must follow CPU, not time.
    ours = Entrant("trackerd", "trackerd", THIS, "this, C")
    redis = Entrant("redis (b) best use", "redis", THIS, "-")
    alone = Entrant(WORKERS_ALONE, "alone", THIS, "-")
    runs = {"domain": {
        ours.name: [Run(1.0, 1.0, 3.0)],  # 4 s of CPU
        redis.name: [Run(4.0, 2.0, 4.0)],  # 6 s of CPU, 4x the time
        alone.name: [Run(0.5, None, 1.0)],
    }}  # fmt: skip
    rows, out = results(["domain"], [ours, redis, alone], runs, [], 100, 0)
    by_name = {row[1]: dict(zip(HEADERS, row, strict=True)) for row in rows}
    assert by_name["redis (b) best use"]["trackerd faster by"] == "4.00x"
    assert by_name["redis (b) best use"]["by total CPU"] == "1.50x"
    assert by_name["trackerd"]["by total CPU"] == "1.00x"
    assert by_name[WORKERS_ALONE]["by total CPU"] == "-"
    assert out["domain"]["redis (b) best use"]["total_cpu_over_trackerds"] == 1.5
    assert "records/s" in FOOTNOTE and "CPU" in FOOTNOTE


def test_results_that_cannot_be_written_stop_the_run_before_it_starts(short_tmp: Path) -> None:
    """Not a traceback after the whole run, with nothing written."""
    not_a_directory = short_tmp / "a-file"
    not_a_directory.write_text("")
    result = compare("--competitors", "alone", "--forms", "domain", "--rounds", "3",
                     results=not_a_directory, timeout=60)  # fmt: skip
    assert result.returncode != 0
    assert result.stderr.strip() == f"--results {not_a_directory}: not a directory"
    assert "round 1" not in result.stdout


@pytest.mark.parametrize("per_worker", [PER_WORKER, 2_000])
def test_the_issues_go_rate_is_a_ratio_only_at_the_issues_run_size(per_worker: int) -> None:
    """Issue 13's Go figure is of 200,000 records a worker: another size is no ratio."""
    ours = Entrant("trackerd", "trackerd", THIS, "this, C")
    runs = {"domain": {ours.name: [Run(1.0, 1.0, 3.0)]}}
    rows, _ = results(["domain"], [ours], runs, [], per_worker, 0)
    go = next(dict(zip(HEADERS, row, strict=True)) for row in rows if row[1] == GO_ORIGINAL)
    ratio = go["trackerd faster by"]
    if per_worker == PER_WORKER:
        assert ratio.startswith(f"{WORKERS * PER_WORKER / 193_000:.1f}x cross-run")
    else:
        assert ratio.startswith(f"n/a: --per-worker != {PER_WORKER:,}")


def test_the_help_says_what_the_naive_daemon_is() -> None:
    """Its framework and its size, as bench/naive_daemon.py has them."""
    doc = " ".join((bench.compare.__doc__ or "").split())
    source = (ROOT / "bench" / "naive_daemon.py").read_text()
    claim = doc.split("naive_daemon.py, a batched ", 1)[1].split(" speaking", 1)[0]
    framework, _, size = claim.partition(" daemon in about ")
    assert f"import {framework}" in source
    lines = int(size.removesuffix(" lines"))
    assert abs(lines - len(source.splitlines())) <= 10


@pytest.mark.parametrize("forms", [["domain", "mix"], ["domain"]])
def test_the_seed_design_row_is_under_mix_only_its_ratio_against_trackerds_mix(
    forms: list[str],
) -> None:
    """The seed design runs on `mix` only (at --seed-records a worker): one row, under
    `mix`, its ratios against trackerd's `mix` row; none to compare with: none given."""
    ours = Entrant("trackerd", "trackerd", THIS, "this, C")
    runs = {
        "domain": {ours.name: [Run(1.0, 1.0, 1.0)]},  # 200 records/s, 10 us a record
        "mix": {ours.name: [Run(4.0, 1.0, 1.0)]},  # 50 records/s, 10 us a record
    }
    seed = [Run(2.0, None, 2.0)]  # 20 records in 2 s: 10 records/s, 100 us a record
    rows, _ = results(forms, [ours], runs, seed, 100, 10)
    seeds = [dict(zip(HEADERS, row, strict=True)) for row in rows if row[1].startswith(SEED_DESIGN)]
    assert len(seeds) == 1
    assert seeds[0]["form"] == "mix"
    assert "10 a worker" in seeds[0]["competitor"]
    if "mix" in forms:
        assert (seeds[0]["trackerd faster by"], seeds[0]["by total CPU"]) == ("5.0x", "10.0x")
    else:
        assert seeds[0]["trackerd faster by"].startswith("n/a")
