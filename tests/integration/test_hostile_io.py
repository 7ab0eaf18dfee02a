"""The hostile world, part A: what a client hands over (fds, memory) cannot stall, crash or
exhaust the daemon for the others.

Each test runs one attack of :mod:`tests.attacks` for real against a daemon subprocess with a
bystander PINGing every 50 ms beside it, asserts the bystander was served throughout (a
generous liveness bound, not a performance target), asserts what the attacker got, and prints
the bystander's worst PING in the summary (``siov hostile world``).
"""

from __future__ import annotations

import errno

from tests.attacks import ATTACKS, FIRE_TIMES, LINGER_S, Outcome, require, run_attack
from tests.integration.conftest import REPORT

SUMMARY = REPORT.setdefault("siov hostile world", [])


def survived(out: Outcome) -> None:
    SUMMARY.append(out.line())
    assert out.alive, f"the daemon died during {out.name} (exit {out.returncode})"
    assert not out.failures, out.failures
    out.under.assert_served()


def test_blocking_eventfd_cannot_block_the_loop() -> None:
    out = run_attack("blocking_eventfd")
    survived(out)
    assert out.result["fired"] == FIRE_TIMES
    # The daemon made the eventfd non-blocking; each write to the full counter was EAGAIN,
    # counted, and the interrupt went as EVENT_IRQ instead (SPEC 8.12).
    assert out.result["made_nonblocking"] is True
    accel = out.result["accel"]
    fired = FIRE_TIMES * out.result["runs"]  # the attack repeats; the daemon's counters add up
    assert accel["irq_write_failures"] == fired and accel["irqs_event"] == fired


def test_lingering_socket_close_cannot_block_the_loop() -> None:
    out = run_attack("linger_close")
    survived(out)
    assert out.result.pop("runs") >= 1
    assert out.result == {
        "before_version": errno.EPROTO,
        "bad_body": errno.EINVAL,
        "ping_with_fd": errno.EINVAL,
        "mem_register": errno.EINVAL,
    }
    # Each close would have lingered LINGER_S; the bystander saw none of it.
    assert out.under.worst_s < LINGER_S / 4


def test_hugetlb_memfd_is_refused_before_it_can_sigbus() -> None:
    require(ATTACKS["hugetlb_sigbus"])
    out = run_attack("hugetlb_sigbus")
    survived(out)
    assert out.result["pool"] >= 1, "no huge pages could be reserved for the test"
    err, message = out.result["register"]
    assert err == errno.EINVAL and "hugetlb" in message


def test_punched_shmem_refaults_as_zeroes() -> None:
    out = run_attack("shmem_punch")
    survived(out)
    assert (out.result["before"], out.result["after"]) == (b"secret!!", bytes(8))


def test_fd_drip_is_capped() -> None:
    out = run_attack("fd_drip")
    survived(out)
    assert out.result["other_register"] is True, out.result
    assert out.result["reply"] is not None and out.result["reply"][0] == errno.ENOSPC
    assert "limits.pending_fds" in out.result["reply"][1]


def test_regions_hold_no_fd() -> None:
    out = run_attack("region_fds")
    survived(out)
    assert out.result["memfd_maps"] == out.result["regions"]
    assert out.result["fds_held"] < 50, out.result
    assert out.result["refused"] == (errno.ENOSPC, "limit reached: limits.memory_regions = 64")
