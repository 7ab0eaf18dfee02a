"""The hostile world, long work: each attack runs against its own daemon with a bystander
PINGing every 50 ms; the bystander must stay served (a liveness bound, tests.bystander), the
attack must get what SPEC says, and the worst PING goes in the summary as
``bystander_ping_worst_ms_<attack>`` (the same figures as bench/hostile_figures.py)."""

from __future__ import annotations

from collections.abc import Callable

from siov_protocol.dsa import DSA_COMP_SUCCESS
from tests import attacks_work
from tests.attacks import Outcome, run_attack


def check(out: Outcome, report_figure: Callable[[str], None]) -> None:
    report_figure(out.line())
    assert out.alive, f"the daemon died (exit {out.returncode})"
    assert not out.failures, out.failures
    out.baseline.assert_served()
    out.under.assert_served()


def test_a_batch_of_eight_1g_compares_is_preempted(report_figure: Callable[[str], None]) -> None:
    out = run_attack("batch_compare")
    check(out, report_figure)
    got = out.result
    assert got["accepted"] == 1
    assert got["status"] == DSA_COMP_SUCCESS
    assert got["entries_completed"] == attacks_work.BATCH_ENTRIES
    # The batch ran in many turns: 8 GiB in 1 MiB slices with the loop given back between.
    assert got["preemptions"] >= 8


def test_map_and_unmap_of_64g_in_small_pages_run_in_turns(
    report_figure: Callable[[str], None],
) -> None:
    out = run_attack("map_unmap_64g")
    check(out, report_figure)
    got = out.result
    assert got["map"] == attacks_work.HUGE_MAP
    assert got["unmap"] == attacks_work.HUGE_MAP
    assert got["turns"] > 100


def test_dirty_bitmaps_over_31g_run_in_turns(report_figure: Callable[[str], None]) -> None:
    out = run_attack("dirty_bitmap_31g")
    check(out, report_figure)
    assert out.result["pages"] == [attacks_work.DIRTY_SIZE // 4096] * attacks_work.DIRTY_CALLS


def test_pipelined_2g_compares_leave_the_loop_to_others(
    report_figure: Callable[[str], None],
) -> None:
    out = run_attack("submit_compare_64")
    check(out, report_figure)
    got = out.result
    assert got["accepted"] >= 1
    assert got["accepted"] + got["retry"] == attacks_work.PIPELINED_SUBMITS
    assert got["first_status"] == DSA_COMP_SUCCESS
