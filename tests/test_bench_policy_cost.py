"""bench.policy_cost checks which code its daemons ran, and prints what it promises:
CPU read per thread in nanoseconds, the ratio to the thread floor, never "-0.0".

A few requests a run: these check which code ran and what is printed, never how fast.
"""

from __future__ import annotations

import dataclasses

import pytest

from bench.policy_cost import (
    Competitor,
    Round,
    one_decimal,
    one_run,
    table_rows,
    trackerd_competitor,
)
from bench.trees import describe, this_tree

BUILT = bool(describe(this_tree()).extensions)


@pytest.mark.skipif(not BUILT, reason="the C extension is not built here")
def test_a_row_whose_daemon_mapped_other_extensions_than_its_path_is_refused() -> None:
    pure = trackerd_competitor("this tree (pure Python)", this_tree(pure=True))
    assert pure.about is not None and pure.about.extensions == ()
    one_run(pure, 1, 20)  # the truth: it ran Python and mapped nothing
    # A row that says pure Python, whose daemon runs the C path.
    lying = dataclasses.replace(pure, command=this_tree().trackerd_command())
    with pytest.raises(RuntimeError, match=r"but the row is .*'s pure Python path"):
        one_run(lying, 1, 20)
    # A row that says C, whose daemon runs pure Python: it mapped none of them.
    c_row = trackerd_competitor("this tree", this_tree())
    one_run(c_row, 1, 20)
    with pytest.raises(RuntimeError, match="and not trackerd"):
        one_run(dataclasses.replace(c_row, command=this_tree(pure=True).trackerd_command()), 1, 20)


def test_a_run_reads_every_threads_cpu_in_nanoseconds() -> None:
    got = one_run(trackerd_competitor("this tree", this_tree()), 1, 20)
    # Ticks would give a multiple of 10 ms over 20 requests (500 µs a request) or 0.
    assert got.cpu_us > 0 and got.cpu_us % 500 != 0
    assert 0 < got.main_us <= got.cpu_us


def test_the_table_gives_the_ratio_to_the_thread_floor_and_never_minus_zero() -> None:
    floor = Competitor("floor: a thread's own epoll answering DUNNO", [], floor=True)
    this = Competitor("this tree", [])
    results = {
        floor.name: [Round(10.0, 5.0, 1.0, 0.01, 15.0)],
        # The first thread's CPU a hair above the total's median: "other threads" < 0.
        this.name: [Round(20.0, 10.0, 1.0, 30.04, 30.0)],
    }
    rows = {row[0]: row for row in table_rows([floor, this], results, floor.name)}
    assert rows["this tree"][1:3] == ["30.0", "2.00x"]
    assert rows["this tree"][6] == "0.0"
    assert rows[floor.name][2] == "1.00x"
    assert table_rows([this], {this.name: results[this.name]}, None)[0][2] == "-"
    assert one_decimal(-0.04) == "0.0" and one_decimal(-0.06) == "-0.1"
