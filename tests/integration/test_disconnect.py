"""A client that goes away leaves nothing behind: objects freed, fds closed, memory unmapped."""

from __future__ import annotations

import os

import siov
from tests.conftest import DaemonProcess
from tests.helpers import settle

MiB = 1 << 20


def daemon_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def daemon_memfd_maps(pid: int) -> int:
    with open(f"/proc/{pid}/maps") as fh:
        return sum("memfd:siov" in line for line in fh)


def test_disconnect_frees_everything(siovd_proc: DaemonProcess) -> None:
    pid = siovd_proc.proc.pid
    with siov.BlockingClient(siovd_proc.path) as observer:
        baseline_counts = observer.info().counts
        baseline_fds = daemon_fds(pid)
        baseline_maps = daemon_memfd_maps(pid)
        for _ in range(3):
            with siov.BlockingClient(siovd_proc.path) as client:
                bufs = [client.alloc(2 * MiB) for _ in range(4)]
                mdev = client.create_mdev("siov_test", "siov_test-1")
                dev = client.register_device("emu")
                dom = client.alloc_domain().domain_id
                lazy = client.alloc_domain(lazy=True).domain_id
                client.attach_device(dom, mdev.uuid)
                client.attach_device(lazy, dev.uuid)
                for i, buf in enumerate(bufs):
                    client.map(dom, buf.phys, 2 * MiB, iova=i * 2 * MiB)
                client.map(lazy, bufs[0].phys, MiB, iova=0)
                client.unmap(lazy, 0, MiB)  # queued in the lazy flush, still pinning bufs[0]
                assert daemon_memfd_maps(pid) == baseline_maps + 4
                counts = observer.info().counts
                assert counts["devices"] == baseline_counts["devices"] + 2
                assert counts["memory_regions"] == baseline_counts["memory_regions"] + 4
            settle(lambda: observer.info().counts == baseline_counts, "counts back to baseline")
            settle(lambda: daemon_fds(pid) == baseline_fds, "daemon fds back to baseline")
            assert daemon_memfd_maps(pid) == baseline_maps
