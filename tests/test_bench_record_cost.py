"""bench.record_cost's rounds in a tree's child process check which code ran: a row
that names C ran its tree's extension modules, a pure row mapped none.

A few hundred calls a round: these check which code ran, never how fast.
"""

from __future__ import annotations

import pytest

from bench.record_cost import run_in_child
from bench.trees import describe, this_tree

C_ROW = describe(this_tree())


@pytest.mark.skipif(not C_ROW.extensions, reason="the C extension is not built here")
def test_a_round_whose_processes_ran_other_code_than_its_row_says_is_refused() -> None:
    pure = this_tree(pure=True)
    pure_row = describe(pure)
    assert "daemon up" in run_in_child(this_tree(), C_ROW, 0, 300, 1e9, "mix", "this tree")
    assert "daemon up" in run_in_child(pure, pure_row, 0, 300, 1e9, "mix", "pure")
    # Said C, ran pure Python: its daemon and library mapped none of the tree's modules.
    with pytest.raises(RuntimeError, match="and not "):
        run_in_child(pure, C_ROW, 0, 300, 1e9, "mix", "said C")
    # Said pure Python, ran C.
    with pytest.raises(RuntimeError, match="pure Python path"):
        run_in_child(this_tree(), pure_row, 0, 300, 1e9, "mix", "said pure")
