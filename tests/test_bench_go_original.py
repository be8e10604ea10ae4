"""bench.go_original: the Go original's design builds, counts bench.workload's records
of every form as their true counts, leaves a valid status file, classifies senders
as trackerd counts them, and a wrong count fails the run.

Tiny workloads: these check counts and files, never how fast (benchmarks are not
tests). Skipped only where there is no go (.ci/run installs golang-go).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.compare import GO_DESIGN, HEADERS, Entrant, results
from bench.go_original import (
    STATUS_FIELDS,
    build,
    counts,
    run_go_original,
    run_records,
    write_records,
)
from bench.trees import THIS_ROOT, Tree
from bench.workload import FORMS, WORKERS, Run, Workload, distinct_counts, true_counts

pytestmark = [
    pytest.mark.skipif(
        shutil.which("go") is None,
        reason="go not found: the Go original's design needs Go to build "
        "(apt-get install golang-go)",
    ),
    # Under pytest-xdist every test here runs in one worker, on the one `program` build.
    pytest.mark.xdist_group("go_original"),
]


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("go-cache"))


@pytest.mark.parametrize("form", FORMS)
def test_every_forms_records_count_as_their_true_counts(form: str, program: Path) -> None:
    load = Workload(form, 700)  # 5,600 records: every branch of workload.sender()
    run = run_go_original(load, program)  # asserts the counts and the status file
    assert load.distinct == true_counts(form, 700)
    assert run.server_cpu is None  # one process: its CPU is the goroutines' (workers')
    assert run.seconds > 0 and run.worker_cpu >= 0


def test_a_wrong_count_fails_the_run(program: Path) -> None:
    load = Workload("mix", 100)
    ips, domains, literals = load.distinct
    load.distinct = (ips, domains + 1, literals)
    with pytest.raises(AssertionError, match="go original counted"):
        run_go_original(load, program)


def test_senders_are_classified_as_trackerd_counts_them(program: Path, tmp_path: Path) -> None:
    # What the workload's forms leave apart: one domain in two cases and with a
    # trailing dot, the null sender and empty values (ignored), a bare IP and an
    # IPv6 literal (IP servers), the same literal in three forms.
    senders = ["MAIL.Example.com", "user@mail.example.COM.", "<>", "", "user@192.0.2.1",
               "[192.0.2.1]", "<postmaster@[192.0.2.1]>", "x@[IPv6:2001:db8::1]",
               "<a@b.example>"]  # fmt: skip
    ips = ["10.0.0.1", "10.0.0.2", "", "10.0.0.1", "2001:db8::7", "10.0.0.3", "", "", ""]
    share = list(zip(ips, senders, strict=True))
    shares = [share] * WORKERS
    write_records(shares, tmp_path / "records")
    result, status = run_records(program, tmp_path / "records")
    assert counts(result) == distinct_counts(shares) == (4, 2, 2)
    assert counts(status) == (4, 2, 2)
    assert result["records"] == len(share) * WORKERS


@pytest.mark.parametrize("per_record", [True, False])
def test_it_leaves_a_valid_status_file(program: Path, tmp_path: Path, per_record: bool) -> None:
    # per_record=False (the standalone run's --without-file: the file once, at the end).
    load = Workload("domain", 50)
    write_records(load.shares, tmp_path / "records")
    before = int(time.time())
    result, status = run_records(program, tmp_path / "records", per_record=per_record)
    assert sorted(status) == sorted(STATUS_FIELDS)
    assert before - 1 <= status["boot_time"] <= time.time()
    assert counts(status) == counts(result) == load.distinct


def test_records_that_do_not_split_into_equal_shares_are_refused(
    program: Path, tmp_path: Path
) -> None:
    (tmp_path / "records").write_text("10.0.0.1\texample.com\n" * (WORKERS + 1))
    with pytest.raises(RuntimeError, match="do not split into 8 equal shares"):
        run_records(program, tmp_path / "records")


def test_a_value_holding_a_tab_or_unequal_shares_are_not_written() -> None:
    with pytest.raises(ValueError, match="tab or a line break"):
        write_records([[("10.0.0.1", "a\tb")]], Path("/nonexistent"))
    with pytest.raises(ValueError, match="not of equal lengths"):
        write_records([[("10.0.0.1", "a")], []], Path("/nonexistent"))


def test_the_in_run_row_gives_trackerds_ratio_and_a_missing_go_says_so() -> None:
    this = Tree("", THIS_ROOT)
    ours = Entrant("trackerd", "trackerd", this, "this, C")
    go = Entrant(GO_DESIGN, "go", this, "-")
    runs = {"mix": {ours.name: [Run(1.0, 1.0, 3.0)], go.name: [Run(8.0, None, 9.0)]}}
    rows, out = results(["mix"], [ours, go], runs, [], 100, 0)
    by_name = {row[1]: dict(zip(HEADERS, row, strict=True)) for row in rows}
    assert by_name[GO_DESIGN]["trackerd faster by"] == "8.00x"
    assert out["mix"][GO_DESIGN]["records_per_second"] == WORKERS * 100 / 8.0
    rows, _ = results(["mix"], [ours], {"mix": runs["mix"]}, [], 100, 0, "go not found")
    missing = [row for row in rows if row[1] == GO_DESIGN]
    assert missing and missing[0][2] == "not run: go not found"
    assert any("cross-run" in row[1] for row in rows)  # the figure stays
    json.dumps(out)  # the JSON output takes the row as it is


def test_bench_compare_runs_it_as_a_competitor(short_tmp: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.compare", "--rounds", "1", "--seed-records", "0",
         "--per-worker", "300", "--results", str(short_tmp), "--competitors", "go",
         "--forms", "user@domain"],
        cwd=THIS_ROOT, capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads((short_tmp / "compare.json").read_text())["forms"]["user@domain"][GO_DESIGN]
    assert row["key"] == "go" and row["records_per_second"] > 0
    assert f"| `user@domain` | {GO_DESIGN} | - |" in (short_tmp / "compare.md").read_text()
