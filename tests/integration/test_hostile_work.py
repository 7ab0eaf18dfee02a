"""The hostile world, long work: each attack runs against its own daemon with a bystander
PINGing every 50 ms; the bystander must stay served (a liveness bound, tests.bystander), the
attack must get what SPEC says, and the worst PING goes in the summary as
``bystander_ping_worst_ms_<attack>`` (the same figures as bench/hostile_figures.py)."""

from __future__ import annotations

import errno
from collections.abc import Callable

from siov_protocol.dsa import DSA_COMP_DR_ERANGE, DSA_COMP_DR_OFFSET_NOINC, DSA_COMP_SUCCESS
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


def test_an_apply_delta_record_is_bounded_and_read_once(
    report_figure: Callable[[str], None],
) -> None:
    out = run_attack("ap_delta_record")
    check(out, report_figure)
    got = out.result
    # 4 GiB: more than max_transfer_size, refused before any of it is read.
    assert got["over_max"] == (DSA_COMP_DR_ERANGE, 0)
    # 2 GiB of aliased record: stops at the 65537th entry (its index does not increase),
    # having applied the 65536 before it; the record is never gathered whole.
    assert got["aliased_2g"] == (DSA_COMP_DR_OFFSET_NOINC, 65536 * attacks_work.DELTA_ENTRY)
    assert got["applied"]
    assert got["rss_growth_kib"] < 64 * 1024


def test_another_clients_pasid_number_orders_nothing(report_figure: Callable[[str], None]) -> None:
    out = run_attack("pasid_alias_drain")
    check(out, report_figure)
    got = out.result
    # The attacker could attach the number (PASIDs are per device) ...
    assert got["pending_before"] == attacks_work.ATTACKER_BLOCKED
    # ... but the victim's DRAIN completed while the attacker's work of that number still
    # waited for page responses, and the attacker's page requests never reached the victim.
    assert got["drain_status"] == DSA_COMP_SUCCESS
    assert got["pending_after_drain"] == attacks_work.ATTACKER_BLOCKED
    assert got["attacker_records"] == [0] * attacks_work.ATTACKER_BLOCKED
    assert got["victim_events"] == []


def test_blocked_descriptors_and_page_tables_are_capped_per_client(
    report_figure: Callable[[str], None],
) -> None:
    out = run_attack("client_caps")
    check(out, report_figure)
    got = out.result
    cap = attacks_work.CAPS_BLOCKED
    assert got["accepted"] == 96
    assert got["still_blocked"] == cap and got["completed_ir"] == 96 - cap
    assert got["over_limit"] == (96 - cap) * got["runs"]  # the attack repeats for a second
    err, message = got["submit_refused"]
    assert err == errno.ENOSPC and "limits.blocked_descriptors = 64" in message
    err, message = got["map_refused"]
    assert err == errno.ENOSPC and "limits.page_table_pages = 1024" in message
    assert got["map_ok"] == 1 << 30
    costs = got["costs"]
    assert costs["blocked_descriptors"] == cap
    assert 0 < costs["page_table_pages"] <= 16
    assert costs["mappings"] == 2  # the 2 MiB window and the 1 GiB map
