"""Boot the guest test's QEMU against an mdev siovd serves over vfio-user (used by
tests/guest/test_guest.py and bench/guest_figures.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import siov
from tests.daemonproc import logged_siovd
from tests.helpers import settle

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("SIOV_GUEST_CACHE", "/var/cache/siov-guest"))
RESULT_FILE = CACHE / "last-result.json"
RESULT_RE = re.compile(
    r"siov_dmacheck: RESULT copies=(\d+) verified=(\d+) failed=(\d+) size=(\d+) ns=(\d+)"
)


def cached() -> bool:
    return any(CACHE.glob("boot-*/initrd.img"))


def build() -> Path:
    """Run the recipe (cached): the directory with root, vmlinuz and initrd.img."""
    done = subprocess.run(
        ["bash", str(HERE / "build.sh")], capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0:
        raise RuntimeError(f"guest build failed:\n{done.stderr[-4000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def qemu_argv(boot: Path, socket_path: str, *, viommu: bool, copies: int) -> list[str]:
    """QEMU from the chroot, run through the chroot's own dynamic loader (no chroot, no
    mounts): TCG, a memfd for guest RAM (QEMU passes it with DMA_MAP), the mdev as
    vfio-user-pci, and optionally intel-iommu (strict) in front of it."""
    root = boot / "root"
    libs = f"{root}/usr/lib/x86_64-linux-gnu:{root}/lib/x86_64-linux-gnu"
    append = f"console=ttyS0 panic=-1 loglevel=7 siov.copies={copies}"
    argv = [f"{root}/lib64/ld-linux-x86-64.so.2", "--library-path", libs]
    argv += [f"{root}/usr/bin/qemu-system-x86_64", "-L", f"{root}/usr/share/qemu"]
    argv += ["-L", f"{root}/usr/share/seabios", "-accel", "tcg"]
    # TCG lacks MOVDIR64B: advertise it anyway; siov_movdir64b handles the #UD in the guest
    argv += ["-cpu", "max,+movdir64b,x-force-features=on", "-smp", "2"]
    argv += ["-machine", "q35,memory-backend=mem", "-m", "512M"]
    argv += ["-object", "memory-backend-memfd,id=mem,size=512M,share=on"]
    argv += ["-nographic", "-nodefaults", "-serial", "stdio", "-no-reboot"]
    argv += ["-kernel", str(boot / "vmlinuz"), "-initrd", str(boot / "initrd.img")]
    if viommu:
        argv += ["-device", "intel-iommu,intremap=off,caching-mode=on"]
        append += " intel_iommu=on iommu.strict=1"
    argv += ["-append", append]
    device = {"driver": "vfio-user-pci", "socket": {"path": socket_path, "type": "unix"}}
    argv += ["-device", json.dumps(device)]
    return argv


@dataclass
class GuestRun:
    console: str
    stderr: str
    stats: dict[str, Any]  # the endpoint's counters after the client left
    wall_s: float
    daemon_healthy: bool

    def result(self) -> tuple[int, int, int, int, int] | None:
        """(copies, verified, failed, size, ns) from siov_dmacheck's verdict line."""
        found = RESULT_RE.search(self.console)
        if found is None:
            return None
        copies, verified, failed, size, ns = map(int, found.groups())
        return copies, verified, failed, size, ns

    def tail(self) -> str:
        return self.console[-3000:] + self.stderr[-2000:]


def run_guest(boot: Path, *, viommu: bool, copies: int) -> GuestRun:
    """siovd, a dsa-1dwq mdev exposed over vfio-user, and one guest boot against it."""
    with logged_siovd() as daemon, siov.BlockingClient(daemon.path) as client:
        mdev = client.create_mdev("dsa0", "dsa-1dwq", str(uuidlib.uuid4()))
        sock = os.path.join(daemon.dir, "dsa.sock")
        client.vfio_user_expose(mdev, sock)
        started = time.monotonic()
        run = subprocess.run(
            qemu_argv(boot, sock, viommu=viommu, copies=copies),
            capture_output=True,
            text=True,
            errors="replace",
            timeout=600,
        )
        wall = time.monotonic() - started

        def endpoint() -> dict[str, Any]:
            return dict((client.stats().vfio_user or {})[mdev.uuid])

        # QEMU is gone: the endpoint unmaps all its DMA once it sees the hang-up
        settle(lambda: endpoint()["maps"] == 0, "the client's DMA unmapped after it left")
        stats = endpoint()
        healthy = daemon.alive() and not daemon.failures_logged()
    return GuestRun(run.stdout, run.stderr, stats, wall, healthy)
