"""The hostile world, part A: what a client hands over (fds, memory) cannot stall, crash or
exhaust the daemon for the others.

Each test runs one attack of :mod:`tests.attacks` for real against a daemon subprocess with a
bystander PINGing every 50 ms beside it, asserts the bystander was served throughout (a
generous liveness bound, not a performance target), asserts what the attacker got, and prints
the bystander's worst PING in the summary (``siov hostile world``).
"""

from __future__ import annotations

import errno
import os

from tests.attacks import (
    ATTACKS,
    FIRE_TIMES,
    LINGER_S,
    OTHER_UID,
    RCI_TIMES,
    UID_REGIONS,
    Outcome,
    require,
    run_attack,
)
from tests.daemonproc import logged_siovd
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
    assert out.result["rci"] == RCI_TIMES  # completions that asked for the interrupt
    # The attack repeats; the daemon's counters add up.
    fired = (FIRE_TIMES + RCI_TIMES) * out.result["runs"]
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


def test_lingering_socket_on_a_refused_connection_cannot_block_the_loop() -> None:
    out = run_attack("linger_refused")
    survived(out)
    err, message = out.result["refused"]
    assert err == errno.EAGAIN and "limits.uid_connections = 2" in message
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


def test_regions_hold_no_fd_and_one_uid_cannot_take_them_all() -> None:
    out = run_attack("region_fds")
    survived(out)
    r = out.result
    assert r["regions"] == UID_REGIONS and r["memfd_maps"] == UID_REGIONS
    assert r["fds_held"] < 16, r  # regions hold no fd: only the connections' own (and noise)
    uid = os.getuid()
    assert r["refused"] == [
        (errno.ENOSPC, "limit reached: limits.memory_regions = 256"),
        (errno.ENOSPC, f"limit reached: limits.uid_memory_regions = 1024 (uid {uid})"),
    ]
    assert r["session"]["memory_regions"] == 256 and r["uid"]["memory_regions"] == UID_REGIONS
    assert r["daemon"]["fd_need"] == 35405 and r["daemon"]["fd_limit"] > 0
    if os.geteuid() == 0:
        assert r["other_uid"] == f"{OTHER_UID} True", r["other_uid"]


def test_the_daemon_checks_its_fd_limit_at_start() -> None:
    """siovd raises its soft RLIMIT_NOFILE to what the limits need (35405 fds by default)
    and logs it; with a hard limit below that it says how many clients fit at their worst."""
    with logged_siovd("") as d:
        with open(f"/proc/{d.pid}/limits") as fh:
            line = next(x for x in fh if x.startswith("Max open files"))
        soft, hard = (int(v) if v.isdigit() else -1 for v in line.split()[3:5])
        entries = [e for e in d.log_entries() if e.get("event", "").startswith("fd limit")]
    assert len(entries) == 1, entries
    entry = entries[0]
    assert "the limits need up to 35405 fds" in entry["detail"]
    if hard == -1 or hard >= 35405:
        assert entry["event"] == "fd limit" and soft >= 35405
    else:
        assert entry["event"] == "fd limit too low" and soft == hard
        allowed = (hard - 589) // 34
        assert f"the limit allows {allowed} clients at their worst" in entry["detail"]


def test_one_uid_cannot_take_every_connection() -> None:
    out = run_attack("connection_flood")
    survived(out)
    uid = os.getuid()
    # The bystander is of the same uid and holds one of its 64 connections.
    assert out.result["held"] == 63
    assert out.result["refused"] == [
        (
            errno.EAGAIN,
            f"limit reached: limits.uid_connections = 64 connections of uid {uid} are open; "
            "try again later",
        )
    ]
    if os.geteuid() == 0:
        assert out.result["other_uid"] == f"{OTHER_UID} True", out.result["other_uid"]
