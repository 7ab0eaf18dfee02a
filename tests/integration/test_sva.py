"""SVA and the user-WQ char device, with real processes on a real socket (SPEC §8.13).

Each scenario runs in a child process (``sva_proc.py``) that passes its own /proc/self/mem
and maps, builds descriptors with its own virtual addresses (ctypes buffers, anonymous
mappings) and polls the completion records in its own memory.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import siov
from siov import dsa
from siov_protocol import Command
from tests.daemonproc import LoggedDaemon, logged_siovd
from tests.helpers import settle

CHILD = os.path.join(os.path.dirname(__file__), "sva_proc.py")
SUCCESS = dsa.DSA_COMP_SUCCESS
PF_NOBOF = 0x03
WRITE_BIT = 0x80


@pytest.fixture(scope="module")
def daemon() -> Iterator[LoggedDaemon]:
    with logged_siovd() as running:
        yield running


def run_child(path: str, *args: str) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, CHILD, path, *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def merged(lines: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for line in lines:
        out.update(line)
    return out


def sva_stats(path: str) -> dict[str, Any]:
    with siov.BlockingClient(path) as client:
        stats = client.stats()
    return {"sva": stats.sva, "pasids": stats.iommu["pasids_allocated"]}


@pytest.mark.parametrize("wq", [0, 1], ids=["dedicated", "shared"])
def test_a_process_works_on_its_own_memory(daemon: LoggedDaemon, wq: int) -> None:
    got = merged(run_child(daemon.path, "ops", str(wq)))
    assert got["opened"]["mode"] == ("dedicated", "shared")[wq]
    assert got["opened"]["wq"] == f"wq0.{wq}"
    assert got["results"] == [0, 0, 0, 0]
    memmove, fill, compare, crc = got["records"]
    assert [r["status"] for r in got["records"]] == [SUCCESS] * 4
    assert got["copied"] and got["filled"]  # the fill reached pages never touched before
    assert compare["result"] == 0
    assert crc["crc"] == 0xE3069283  # CRC-32C("123456789")
    assert got["differ"]["result"] == 1 and got["differ"]["bytes_completed"] == 1000
    assert got["closed"]
    assert memmove["fault_addr"] == 0 and fill["bytes_completed"] == 0


@pytest.mark.parametrize("wq", [0, 1], ids=["dedicated", "shared"])
def test_a_device_write_to_a_read_only_page_faults(daemon: LoggedDaemon, wq: int) -> None:
    got = merged(run_child(daemon.path, "readonly", str(wq)))
    record = got["record"]
    assert record["status"] == PF_NOBOF | WRITE_BIT
    assert record["fault_addr"] == got["page"] and record["bytes_completed"] == 0
    assert got["unchanged"]  # FOLL_FORCE would have written it: the maps said read-only
    assert got["event"]["reason"] == 0x85 and got["event"]["write"] is True
    assert got["read"]["status"] == SUCCESS and got["copied"]


@pytest.mark.parametrize("wq", [0, 1], ids=["dedicated", "shared"])
def test_an_unmapped_address_is_a_page_fault(daemon: LoggedDaemon, wq: int) -> None:
    got = merged(run_child(daemon.path, "unmapped", str(wq)))
    nobof = got["nobof"]
    assert nobof["status"] == PF_NOBOF
    assert nobof["bytes_completed"] == 4096 and nobof["fault_addr"] == got["hole"]
    request = got["request"]
    assert request["iova"] == got["hole"] and request["write"] is False
    assert got["pending_before"] == 0  # blocked, not completed, while the request waits
    assert got["bof"]["status"] == SUCCESS and got["copied"]


def test_two_processes_on_one_shared_wq_cannot_reach_each_other(daemon: LoggedDaemon) -> None:
    holder = subprocess.Popen(
        [sys.executable, CHILD, daemon.path, "secret"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdin is not None
    try:
        first = json.loads(holder.stdout.readline())
        got = merged(run_child(daemon.path, "snoop", str(first["pasid"]), str(first["addr"])))
        assert got["pasid"] != first["pasid"]
        # The descriptors named the other PASID; ENQCMD semantics replaced it with the
        # snooper's own, where that address is not mapped.
        assert got["read"]["status"] == PF_NOBOF
        assert got["read"]["fault_addr"] == first["addr"]
        assert got["write"]["status"] == PF_NOBOF | WRITE_BIT
        assert got["mine_intact"]
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert json.loads(holder.stdout.readline())["intact"]
    finally:
        holder.kill()
        holder.wait()


def test_sva_bind_on_an_mdev(daemon: LoggedDaemon) -> None:
    got = merged(run_child(daemon.path, "bind"))
    assert got["bound"]["pasid"] > 0 and got["accepted"]
    assert got["record"]["status"] == SUCCESS and got["copied"] and got["unbound"]


def test_sigkill_of_a_bound_process_leaves_nothing(daemon: LoggedDaemon) -> None:
    before = sva_stats(daemon.path)
    fds_before = daemon.fds()
    victim = subprocess.Popen(
        [sys.executable, CHILD, daemon.path, "hold"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert victim.stdout is not None
    try:
        ready = json.loads(victim.stdout.readline())
        assert ready["ready"]
        during = sva_stats(daemon.path)
        assert during["sva"]["opens"] == 2 and during["sva"]["bindings"] == 1
        assert during["pasids"] >= before["pasids"] + 3
        assert daemon.fds() >= fds_before + 6  # mem + maps of three bindings
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()

    def clean() -> bool:
        now = sva_stats(daemon.path)
        return (
            now["sva"]["opens"] == 0
            and now["sva"]["bindings"] == 0
            and now["sva"]["domains"] == 0
            and now["pasids"] == before["pasids"]
            and daemon.fds() == fds_before
        )

    settle(clean, "the killed process's bindings, PASIDs and fds are gone")
    with siov.BlockingClient(daemon.path) as client:
        accel = client.stats().accel
        assert accel["page_requests_pending"] == 0 and accel["outstanding"] == 0
        opened = client.wq_open("dsa0", 0)  # the dedicated WQ is free again
        client.wq_close(opened.handle)
    assert daemon.failures_logged() == []


# ---- the char device's rules, from the test process itself -------------------------------


def test_a_dedicated_wq_has_one_opener(daemon: LoggedDaemon) -> None:
    with siov.BlockingClient(daemon.path) as first, siov.BlockingClient(daemon.path) as second:
        opened = first.wq_open("dsa0", 0)
        with pytest.raises(siov.SiovError) as exc:
            second.wq_open("dsa0", 0)
        assert exc.value.errno == errno.EBUSY
        with pytest.raises(siov.SiovError) as exc:
            first.wq_open("dsa0", 0)
        assert exc.value.errno == errno.EBUSY
        with pytest.raises(siov.SiovError) as exc:  # and no mdev can take it meanwhile
            second.create_dsa_mdev("dsa-1dwq")
        assert exc.value.errno == errno.ENOSPC
        shared = [second.wq_open("dsa0", 1) for _ in range(3)]  # a shared WQ has many
        assert len({s.pasid for s in shared}) == 3
        first.wq_close(opened.handle)
        again = second.wq_open("dsa0", 0)
        assert again.pasid != opened.pasid or again.handle != opened.handle
        # An mdev holding the dedicated WQ counts as its opener.
        second.wq_close(again.handle)
        mdev = first.create_dsa_mdev("dsa-1dwq")
        with pytest.raises(siov.SiovError) as exc:
            second.wq_open("dsa0", 0)
        assert exc.value.errno == errno.EBUSY
        mdev.remove()


def test_open_refusals(daemon: LoggedDaemon) -> None:
    with siov.BlockingClient(daemon.path) as client:
        for device, wq, code in (("dsa9", 0, errno.ENODEV), ("dsa0", 200, errno.ENODEV)):
            with pytest.raises(siov.SiovError) as exc:
                client.wq_open(device, wq)
            assert exc.value.errno == code, exc.value
        with pytest.raises(siov.SiovError) as exc:  # wq0.2 exists but is not enabled
            client.wq_open("dsa0", 2)
        assert exc.value.errno == errno.ENXIO
        for bad in (0, 5):
            with pytest.raises(siov.SiovError) as exc:
                client.wq_submit(bad, dsa.noop())
            assert exc.value.errno == errno.ENOENT
        with pytest.raises(siov.SiovError) as exc:
            client.wq_close(12345)
        assert exc.value.errno == errno.ENOENT
        opened = client.wq_open("dsa0", 1)
        with pytest.raises(siov.SiovError) as exc:
            client.wq_submit(opened.handle, b"x" * 65)
        assert exc.value.errno == errno.EINVAL
        with pytest.raises(siov.SiovError) as exc:  # an open WQ cannot be disabled
            client.accel_disable_wq("wq0.1")
        assert exc.value.errno == errno.EBUSY
        with siov.BlockingClient(daemon.path) as other:  # a handle is its connection's
            with pytest.raises(siov.SiovError) as exc:
                other.wq_submit(opened.handle, dsa.noop())
            assert exc.value.errno == errno.ENOENT
            with pytest.raises(siov.SiovError) as exc:  # nor reachable as an mdev
                other.call(Command.SUBMIT, {"device": opened.wq + "#1", "descriptors": dsa.noop()})
            assert exc.value.errno == errno.ENOENT
        with pytest.raises(siov.SiovError) as exc:
            client.call(
                Command.SUBMIT,
                {"device": f"{opened.wq}#{opened.handle}", "descriptors": dsa.noop()},
            )
        assert exc.value.errno == errno.ENOENT
        client.wq_close(opened.handle)
        with pytest.raises(siov.SiovError) as exc:
            client.wq_close(opened.handle)
        assert exc.value.errno == errno.ENOENT


def wq_stats(client: siov.BlockingClient, wq: str) -> dict[str, int]:
    return dict(client.stats().accel["devices"]["dsa0"]["wqs"][wq])


def test_full_shared_wq_answers_retry_and_full_dedicated_wq_drops(daemon: LoggedDaemon) -> None:
    with siov.BlockingClient(daemon.path) as client:
        for index, refused in ((1, 1), (0, 2)):
            opened = client.wq_open("dsa0", index)
            size = opened.size
            before = wq_stats(client, opened.wq)
            results = client.wq_submit(opened.handle, dsa.noop() * (size + 3))
            assert list(results) == [0] * size + [refused] * 3
            after = wq_stats(client, opened.wq)
            if refused == 2:
                assert after["dropped"] == before["dropped"] + 3
            else:
                assert after["retried"] == before["retried"] + 3
            assert after["submitted"] == before["submitted"] + size
            client.wq_close(opened.handle)


def test_posted_submissions_keep_their_order_and_close_drains(daemon: LoggedDaemon) -> None:
    """Posted WQ_SUBMITs (no reply), then WQ_CLOSE at once: every copy was done by the time
    the close answers (the engines had far more than one time slice of work queued)."""
    import ctypes

    size = 1 << 20
    count = 48
    with siov.BlockingClient(daemon.path) as client:
        opened = client.wq_open("dsa0", 0)
        src = ctypes.create_string_buffer(os.urandom(size), size)
        dsts = [ctypes.create_string_buffer(size) for _ in range(count)]
        records = (ctypes.c_char * (32 * count + 32))()
        base = (ctypes.addressof(records) + 31) & ~31
        for i in range(count):
            desc = dsa.memmove(
                ctypes.addressof(dsts[i]), ctypes.addressof(src), size, completion=base + 32 * i
            )
            client.wq_submit(opened.handle, desc, posted=True)
        client.wq_close(opened.handle)
        statuses = [ctypes.c_uint8.from_address(base + 32 * i).value for i in range(count)]
        assert statuses == [SUCCESS] * count
        assert all(d.raw == src.raw for d in dsts)
        assert client.stats().sva["opens"] == 0


def test_close_aborts_work_that_waits_on_a_page_request(daemon: LoggedDaemon) -> None:
    import ctypes
    import mmap

    with siov.BlockingClient(daemon.path) as client:
        opened = client.wq_open("dsa0", 1)
        hole = mmap.mmap(-1, 4096)
        holder = ctypes.c_char.from_buffer(hole)
        addr = ctypes.addressof(holder)
        del holder
        hole.close()  # unmapped now
        records = (ctypes.c_char * 96)()
        base = (ctypes.addressof(records) + 31) & ~31
        blocked = dsa.fill(addr, 0, 4096, completion=base, flags=dsa.IDXD_OP_FLAG_BOF)
        fine = dsa.noop(completion=base + 32)
        assert list(client.wq_submit(opened.handle, blocked + fine)) == [0, 0]
        fault = client.next_event(timeout=10)  # the fault record comes first
        assert fault.command == Command.EVENT_FAULT and fault.body["reason"] == 0x71
        event = client.next_event(timeout=10)
        assert event.command == Command.EVENT_PAGE_REQUEST
        assert event.body["pasid"] == opened.pasid and event.body["iova"] == addr
        client.wq_close(opened.handle)
        assert ctypes.c_uint8.from_address(base + 32).value == SUCCESS
        assert ctypes.c_uint8.from_address(base).value == 0  # aborted, never completed
        accel = client.stats().accel
        assert accel["page_requests_pending"] == 0
        with pytest.raises(siov.SiovError) as exc:  # the request is forgotten
            client.page_response(event.body["request"], 0)
        assert exc.value.errno == errno.ENOENT


# ---- hostile fds ---------------------------------------------------------------------------


def bind_with(client: siov.BlockingClient, dev: str, fds: list[int]) -> siov.SiovError:
    with pytest.raises(siov.SiovError) as exc:
        client.call(Command.SVA_BIND, {"dev": dev}, fds=fds)
    return exc.value


def test_bad_fds_get_precise_errors(daemon: LoggedDaemon) -> None:
    with siov.BlockingClient(daemon.path) as client:
        mdev = client.create_dsa_mdev("dsa-1swq")
        dev = mdev.uuid
        mem = os.open("/proc/self/mem", os.O_RDWR)
        mem_ro = os.open("/proc/self/mem", os.O_RDONLY)
        maps = os.open("/proc/self/maps", os.O_RDONLY)
        status = os.open("/proc/self/status", os.O_RDONLY)
        memfd = os.memfd_create("not-mem")
        r, w = os.pipe()
        a, b = socket.socketpair()
        # the maps of another (living) process, and the mem of one that exited
        other = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
        )
        other_maps = os.open(f"/proc/{other.pid}/maps", os.O_RDONLY)
        gone = subprocess.Popen(  # alive until its files are open, then it exits
            [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
        )
        gone_mem = os.open(f"/proc/{gone.pid}/mem", os.O_RDWR)
        gone_maps = os.open(f"/proc/{gone.pid}/maps", os.O_RDONLY)
        assert gone.stdin is not None
        gone.stdin.close()
        gone.wait()
        try:
            cases = [
                ([], errno.EINVAL, "needs 2 fds"),
                ([mem], errno.EINVAL, "needs 2 fds"),
                ([maps, mem], errno.EINVAL, "expected /proc/<pid>/mem"),
                ([memfd, maps], errno.EINVAL, "expected /proc/<pid>/mem"),
                ([r, maps], errno.EINVAL, "expected /proc/<pid>/mem"),
                ([a.fileno(), maps], errno.EINVAL, "expected /proc/<pid>/mem"),
                ([mem, status], errno.EINVAL, "expected /proc/<pid>/maps"),
                ([mem, w], errno.EINVAL, "expected /proc/<pid>/maps"),
                ([mem_ro, maps], errno.EACCES, "O_RDWR"),
                ([mem, other_maps], errno.EINVAL, "but maps of process"),
                ([gone_mem, gone_maps], errno.ESRCH, "has exited"),
            ]
            for fds, code, text in cases:
                error = bind_with(client, dev, fds)
                assert (error.errno, text in str(error)) == (code, True), (fds, str(error))
            error = bind_with(client, "00000000-0000-0000-0000-000000000000", [mem, maps])
            assert error.errno == errno.ENOENT
            assert client.stats().sva["bindings"] == 0
            bound = client.call(Command.SVA_BIND, {"dev": dev}, fds=[mem, maps])
            with pytest.raises(siov.SiovError) as exc:
                client.sva_unbind(dev, bound["pasid"] + 1)
            assert exc.value.errno == errno.ENOENT
            client.sva_unbind(dev, bound["pasid"])
            with pytest.raises(siov.SiovError) as exc:
                client.sva_unbind(dev, bound["pasid"])
            assert exc.value.errno == errno.ENOENT
            with pytest.raises(siov.SiovError) as exc:  # an SVA domain only comes from a bind
                client.alloc_domain(type="sva")
            assert exc.value.errno == errno.EINVAL
            assert client.ping(b"still here") == b"still here"
        finally:
            for fd in (mem, mem_ro, maps, status, memfd, r, w, other_maps, gone_mem, gone_maps):
                os.close(fd)
            a.close()
            b.close()
            other.kill()
            other.wait()
            mdev.remove()
    assert daemon.failures_logged() == []


BROKERED = """
import ctypes, os, socket, sys
sock = socket.socket(fileno=int(sys.argv[1]))
mem = os.open("/proc/self/mem", os.O_RDWR)
maps = os.open("/proc/self/maps", os.O_RDONLY)
buf = ctypes.create_string_buffer(b"brokered" * 512, 4096)
socket.send_fds(sock, [str(ctypes.addressof(buf)).encode()], [mem, maps])
sys.stdin.readline()
"""


def test_the_bound_process_exiting_unbinds_even_when_a_broker_holds_the_connection(
    daemon: LoggedDaemon,
) -> None:
    """A broker (this test) binds and opens on behalf of a child that passed it its own fds;
    when the child is killed the bindings go, though the broker's connection stays."""
    ours, theirs = socket.socketpair()
    child = subprocess.Popen(
        [sys.executable, "-c", BROKERED, str(theirs.fileno())],
        stdin=subprocess.PIPE,
        pass_fds=[theirs.fileno()],
    )
    theirs.close()
    try:
        _, fds, _, _ = socket.recv_fds(ours, 64, 2)
        with siov.BlockingClient(daemon.path) as broker:
            mdev = broker.create_dsa_mdev("dsa-1swq")
            assert broker.call(Command.SVA_BIND, {"dev": mdev.uuid}, fds=fds)["pasid"] > 0
            opened = broker.call(Command.WQ_OPEN, {"device": "dsa0", "wq": 0}, fds=fds)
            during = broker.stats().sva
            assert during["bindings"] == 1 and during["opens"] == 1 and during["watched"] == 2
            child.kill()
            child.wait()

            def gone() -> bool:
                now = broker.stats().sva
                return now["bindings"] == 0 and now["opens"] == 0 and now["watched"] == 0

            settle(gone, "the exited process's binding and open are gone")
            assert broker.stats().sva["process_exits"] >= during["process_exits"] + 2
            with pytest.raises(siov.SiovError) as exc:
                broker.wq_close(opened["handle"])
            assert exc.value.errno == errno.ENOENT
            assert broker.ping(b"x") == b"x"  # the broker's connection is untouched
            mdev.remove()
        for fd in fds:
            os.close(fd)
    finally:
        child.kill()
        child.wait()
        ours.close()


def test_a_connection_holds_at_most_64_opens(daemon: LoggedDaemon) -> None:
    with siov.BlockingClient(daemon.path) as client:
        handles = [client.wq_open("dsa0", 1).handle for _ in range(64)]
        with pytest.raises(siov.SiovError) as exc:
            client.wq_open("dsa0", 1)
        assert exc.value.errno == errno.ENOSPC and "64 SVA opens" in str(exc.value)
        client.wq_close(handles.pop())
        handles.append(client.wq_open("dsa0", 1).handle)
        for handle in handles:
            client.wq_close(handle)
        assert client.stats().sva["opens"] == 0
